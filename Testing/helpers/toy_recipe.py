"""A recipe that lives outside WeakSegLib and joins it through the registry alone (the worked example
of CONTRIBUTING.md; trained through the command line in Testing/cli/test_cli.py): soft Dice between
the foreground probabilities and the filled boxes, with one setting of its own."""

from dataclasses import dataclass

import torch

from WeakSegLib.engine.train.recipe import Recipe, Term
from WeakSegLib.errors import InputError
from WeakSegLib.options import option
from WeakSegLib.registry import RecipeSettings, RecipeSpec


@dataclass(frozen=True)
class BoxDiceSettings(RecipeSettings):
    """The toy recipe's settings: the command line offers ``--dice-weight`` under "settings of toy-box-dice"."""

    dice_weight: float = option(1.0, "weight of the soft box Dice")

    def validate(self) -> None:
        if not self.dice_weight > 0:
            raise InputError(f"dice_weight must be positive, got {self.dice_weight}")


#: the registry line (``registry.register(SPEC)``; a test registers it for its own run only)
SPEC = RecipeSpec("toy-box-dice", "soft Dice on the filled boxes", "toy_recipe:BoxDice", settings=BoxDiceSettings())


def soft_box_dice(probs: torch.Tensor, box_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice of ``probs`` ``(B, C, H, W)`` against the filled boxes, over the valid pixels."""
    inside = valid.unsqueeze(1).to(probs.dtype)
    target = box_mask.to(probs.dtype) * inside
    overlap = (probs * target).flatten(2).sum(-1)
    total = (probs * inside).flatten(2).sum(-1) + target.flatten(2).sum(-1)
    return (1 - 2 * overlap / total.clamp_min(1e-6)).mean()


class BoxDice(Recipe):
    """Soft Dice on the filled boxes, weighted by its setting."""

    def terms(self) -> list[Term]:
        return [Term("box-dice", soft_box_dice, ("probs", "box_mask", "valid"), weight=self.ctx.settings.dice_weight)]

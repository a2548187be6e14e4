"""A recipe that lives outside WeakSegLib and joins it through the registry alone (the worked example
of CONTRIBUTING.md; trained through the command line in Testing/cli/test_cli.py): soft Dice between
the foreground probabilities and the filled boxes."""

import torch

from WeakSegLib.engine.train.recipe import Recipe, Term


def soft_box_dice(probs: torch.Tensor, box_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice of ``probs`` ``(B, C, H, W)`` against the filled boxes, over the valid pixels."""
    inside = valid.unsqueeze(1).to(probs.dtype)
    target = box_mask.to(probs.dtype) * inside
    overlap = (probs * target).flatten(2).sum(-1)
    total = (probs * inside).flatten(2).sum(-1) + target.flatten(2).sum(-1)
    return (1 - 2 * overlap / total.clamp_min(1e-6)).mean()


class BoxDice(Recipe):
    """Soft Dice on the filled boxes."""

    def terms(self) -> list[Term]:
        return [Term("box-dice", soft_box_dice, ("probs", "box_mask", "valid"))]

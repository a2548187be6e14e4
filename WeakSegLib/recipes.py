"""Training recipes: which loss terms a training run combines (named as in Kervadec et al.'s table).

=============================  ==============================================================
``full``                       cross-entropy on the reference masks (upper bound)
``box-mask``                   cross-entropy on the filled boxes (baseline)
``tightness+emptiness``        tightness prior + background emptiness
``tightness+size+masked-ce``   tightness prior + box-size bounds + masked CE outside the boxes
``tightness+size+emptiness``   tightness prior + box-size bounds + emptiness (default)
``deepcut``                    cross-entropy on filled boxes revised by a dense CRF every k epochs
``boxsup``                     cross-entropy on region-proposal candidates chosen every epoch
=============================  ==============================================================

The last two revise their labels while training (:mod:`WeakSegLib.proposals`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from WeakSegLib.constraints import BoxSize, Emptiness, MaskedCrossEntropy, TightnessPrior
from WeakSegLib.options import DEFAULT_RECIPE, LABEL_RECIPES, MASK_RECIPES, PROPOSAL_RECIPES, RECIPES  # noqa: F401



@dataclass
class LossSettings:
    """Constraint parameters (METHODS.md §1).

    Attributes:
        band_width: tightness band width w in lines.
        tightness_weight: λ.
        size_bounds: (lower, upper) fractions of the box area |Ω_I|.
    """

    band_width: int = 5
    tightness_weight: float = 1e-4
    size_bounds: tuple[float, float] = (0.5, 0.9)


class RecipeLoss(nn.Module):
    """Loss of one recipe: ``forward(logits, batch, t) → (total, parts)``.

    ``logits`` ``(B, 1 + C, *S)``; ``batch`` as :meth:`WeakSegLib.data.SampleSet.batch` gives it;
    ``parts`` maps each term's name to its detached value (for logs).
    """

    def __init__(self, recipe: str, settings: LossSettings | None = None) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        s = settings or LossSettings()
        self.recipe = recipe
        self.terms = nn.ModuleDict()
        if recipe in LABEL_RECIPES:
            self.terms["ce"] = nn.CrossEntropyLoss()
            return
        self.terms["tightness"] = TightnessPrior(s.band_width, s.tightness_weight)
        if "size" in recipe:
            self.terms["size"] = BoxSize(*s.size_bounds)
        if recipe.endswith("masked-ce"):
            self.terms["masked-ce"] = MaskedCrossEntropy()
        else:
            self.terms["emptiness"] = Emptiness()

    def forward(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], t: float):
        if "ce" in self.terms:
            loss = self.terms["ce"](logits, batch["labels"])
            return loss, {"ce": loss.detach()}
        s = torch.softmax(logits, 1)[:, 1:]
        parts = {}
        for name, term in self.terms.items():
            parts[name] = term(s, batch["boxes"] if name == "tightness" else batch["box_mask"], t)
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}

"""Training recipes: which loss terms a training run combines (named as in Kervadec et al.'s table).

=============================  ==============================================================
``full``                       cross-entropy on the reference masks (upper bound)
``box-mask``                   cross-entropy on the filled boxes (baseline)
``tightness+emptiness``        tightness prior + background emptiness
``tightness+size+masked-ce``   tightness prior + box-size bounds + masked CE outside the boxes
``tightness+size+emptiness``   tightness prior + box-size bounds + emptiness (default)
``deepcut``                    cross-entropy on filled boxes revised by a dense CRF every k epochs
``boxsup``                     cross-entropy on region-proposal candidates chosen every epoch
``size``                       CE on the mask slices + expected size loss on the size-labelled ones
``partial-ce``                 cross-entropy on the labelled pixels of partial labels (scribbles)
``sccl``                       partial CE + soft size penalty outside [a, b] (Kervadec et al.)
``accl-partial|unpaired|paired``  partial CE + adversarial loss against reference masks (Zhang et al.)
=============================  ==============================================================

``deepcut`` and ``boxsup`` revise their labels while training (:mod:`WeakSegLib.proposals`); every
recipe on a label map ignores unlabelled pixels (:data:`WeakSegLib.data.IGNORE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from WeakSegLib.adversarial import Adversary
from WeakSegLib.constraints import BoxSize, Emptiness, MaskedCrossEntropy, TightnessPrior
from WeakSegLib.label_losses import PartialCrossEntropy, SoftSizePenalty
from WeakSegLib.options import DEFAULT_RECIPE, LABEL_RECIPES, MASK_RECIPES, PROPOSAL_RECIPES, RECIPES  # noqa: F401
from WeakSegLib.size_loss import SizeLoss


@dataclass
class LossSettings:
    """Constraint parameters (METHODS.md §1).

    Attributes:
        band_width: tightness band width w in lines.
        tightness_weight: λ.
        size_bounds: (lower, upper) fractions of the box area |Ω_I|.
        size_weight: weight of the expected size loss (recipe ``size``).
        size_samples: masks drawn per image for its gradient estimate.
        sccl_weight: λ_s of SCCL.
        sccl_bounds: ``(C, 2)`` SCCL size bounds in pixels per class (recipe ``sccl``).
    """

    band_width: int = 5
    tightness_weight: float = 1e-4
    size_bounds: tuple[float, float] = (0.5, 0.9)
    size_weight: float = 1.0
    size_samples: int = 1
    sccl_weight: float = 0.01
    sccl_bounds: torch.Tensor | None = None


class RecipeLoss(nn.Module):
    """Loss of one recipe: ``forward(logits, batch, t) → (total, parts)``.

    ``logits`` ``(B, 1 + C, *S)``; ``batch`` as :meth:`WeakSegLib.data.SampleSet.batch` gives it;
    ``parts`` maps each term's name to its detached value (for logs). ``weak=False`` leaves out the
    terms of the weak labels (the size loss while pre-training on the mask slices).
    ACCL recipes take the :class:`WeakSegLib.adversarial.Adversary` whose discriminator scores the output.
    """

    def __init__(self, recipe: str, settings: LossSettings | None = None, adversary: Adversary | None = None) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        s = settings or LossSettings()
        self.recipe = recipe
        self.terms = nn.ModuleDict()
        self.adversary = adversary
        self.size_weight = s.size_weight
        if recipe in LABEL_RECIPES:
            self.terms["ce"] = PartialCrossEntropy()
            if recipe == "size":
                self.terms["size"] = SizeLoss(s.size_samples)
            if recipe == "sccl":
                if s.sccl_bounds is None:
                    raise ValueError("recipe 'sccl' needs size bounds (sccl_bounds)")
                self.terms["sccl"] = SoftSizePenalty(s.sccl_bounds, s.sccl_weight)
            return
        self.terms["tightness"] = TightnessPrior(s.band_width, s.tightness_weight)
        if "size" in recipe:
            self.terms["size"] = BoxSize(*s.size_bounds)
        if recipe.endswith("masked-ce"):
            self.terms["masked-ce"] = MaskedCrossEntropy()
        else:
            self.terms["emptiness"] = Emptiness()

    def forward(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], t: float, weak: bool = True):
        if "ce" in self.terms:
            return self._label_loss(logits, batch, weak)
        s = torch.softmax(logits, 1)[:, 1:]
        parts = {}
        for name, term in self.terms.items():
            parts[name] = term(s, batch["boxes"] if name == "tightness" else batch["box_mask"], t)
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}

    def _label_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], weak: bool):
        parts = {"ce": self.terms["ce"](logits, batch["labels"])}
        logs = {}
        if len(self.terms) == 1 and self.adversary is None:  # CE alone needs no probabilities
            return parts["ce"], {"ce": parts["ce"].detach()}
        probs = torch.softmax(logits, 1)
        if "size" in self.terms and weak:
            inside = batch["box_mask"] > 0  # (B, C, H, W); a slice without a box of the class: anywhere
            allowed = batch["valid"].unsqueeze(1) & (inside | ~inside.flatten(2).any(-1)[..., None, None])
            surrogate, logs["size_error"] = self.terms["size"](probs[:, 1:], batch["sizes"], allowed)
            parts["size"] = self.size_weight * surrogate
        if "sccl" in self.terms:
            parts["sccl"] = self.terms["sccl"](probs[:, 1:], batch["labels"])
        if self.adversary is not None:
            parts["adversarial"] = self.adversary.generator_loss(batch["image"], probs)
        total = sum(parts.values())
        return total, {**{k: v.detach() for k, v in parts.items()}, **logs}

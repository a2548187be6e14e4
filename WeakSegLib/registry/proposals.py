"""The recipes that revise their training labels (docs/methods.md §3): DeepCut (a dense CRF over the
network's prediction every k epochs) and BoxSup (a region-proposal candidate chosen per box every
epoch), and their settings. Both revise 2D slice labels over the whole training set, which stays in
memory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from WeakSegLib.errors import InputError
from WeakSegLib.options import option
from WeakSegLib.registry.spec import RecipeSettings, RecipeSpec, register


@dataclass(frozen=True)
class CRFSettings:
    """Dense CRF of DeepCut's label revisions (Rajchl et al.; docs/methods.md): ``*_sxy`` in pixels,
    ``bilateral_srgb`` in 0–255 intensity units, ``eps`` the probability floor of the unary."""

    gauss_sxy: float = 1.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 10.0
    bilateral_srgb: float = 20.0
    bilateral_compat: float = 10.0
    iterations: int = 5
    eps: float = 1e-5


@dataclass(frozen=True)
class DeepCutSettings(RecipeSettings):
    """When DeepCut revises its labels (epochs, fractions of the epochs) and its CRF."""

    speed_only = ("processes",)

    proposal_every: int = option(10, "epochs between CRF label revisions (k)")
    proposal_until: float = option(0.5, "no revision after this fraction of the epochs (the network, re-initialised "
                                        "at each revision, then trains on the last labels to the end)")
    processes: int = option(2, "CRF worker processes")
    proposal_min_fill: float = option(0.5, "a revision that labels less than this fraction of a box as its object "
                                           "keeps the box's previous labels (0: no guard)")
    crf: dict = option(help="CRF setting NAME=VALUE (repeat; names of CRFSettings)", factory=dict,
                       metavar="NAME=VALUE")

    def crf_settings(self) -> CRFSettings:
        """:class:`CRFSettings` with the overrides of ``crf`` (field → value)."""
        known = {f.name for f in dataclasses.fields(CRFSettings)}
        unknown = sorted(set(self.crf) - known)
        if unknown:
            raise InputError(f"unknown CRF setting(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        return dataclasses.replace(CRFSettings(), **self.crf)

    def validate(self) -> None:
        if not 0.0 <= self.proposal_until <= 1.0:
            raise InputError(f"proposal_until is a fraction of the epochs in [0, 1], got {self.proposal_until}")
        if not 0.0 <= self.proposal_min_fill <= 1.0:
            raise InputError(f"proposal_min_fill must be in [0, 1], got {self.proposal_min_fill}")
        if min(self.proposal_every, self.processes) < 1:
            raise InputError("proposal_every and processes must be ≥ 1")
        self.crf_settings()


@dataclass(frozen=True)
class BoxSupSettings(RecipeSettings):
    """How BoxSup picks a box's candidate: at random among the k cheapest, the cost weighing the
    network's disagreement by λ."""

    boxsup_k: int = option(5, "draw among the k cheapest candidates")
    boxsup_weight: float = option(1.0, "λ of the network-disagreement cost")

    def validate(self) -> None:
        if self.boxsup_k < 1:
            raise InputError(f"boxsup_k must be ≥ 1, got {self.boxsup_k}")


_REVISED = {"dims": (2,), "dims_reason": "revises 2D slice labels", "panel": True, "in_memory": True}
register(RecipeSpec("deepcut", "cross-entropy on filled boxes revised by a dense CRF every k epochs",
                    "WeakSegLib.recipes.proposals:DeepCut", extras=("crf",), settings=DeepCutSettings(), **_REVISED))
register(RecipeSpec("boxsup", "cross-entropy on region-proposal candidates chosen every epoch",
                    "WeakSegLib.recipes.proposals:BoxSup", labels=("boxes", "mask"), settings=BoxSupSettings(),
                    **_REVISED))

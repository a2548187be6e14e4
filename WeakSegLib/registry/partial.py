"""The recipes that learn from partial labels (scribbles; docs/methods.md §5): cross-entropy on the
labelled pixels, alone or with a soft size penalty (SCCL) or an adversarial loss (ACCL; Zhang et al.),
and their settings. An ACCL recipe's reference mode follows its spec's ``reference``: none (the
partial labels themselves), ``any`` (unpaired masks) or ``paired`` (the image's own mask)."""

from __future__ import annotations

from dataclasses import dataclass

from WeakSegLib.errors import InputError
from WeakSegLib.options import option
from WeakSegLib.registry.spec import RecipeSettings, RecipeSpec, register


@dataclass(frozen=True)
class SCCLSettings(RecipeSettings):
    """The soft size penalty: weight λ_s and the bounds [a, b] in pixels per label (or from reference
    masks)."""

    sccl_weight: float = option(0.01, "λ_s")
    sccl_bounds: list | None = option(None, "size bounds in pixels (repeat once per label, in label order)",
                                      metavar=("LO", "HI"))

    def validate(self) -> None:
        if self.sccl_weight < 0:
            raise InputError(f"sccl_weight must be ≥ 0, got {self.sccl_weight}")


@dataclass(frozen=True)
class ACCLSettings(RecipeSettings):
    """The adversarial term: weight λ_a (Zhang et al.'s per reference mode) and the discriminator's
    Adam learning rate."""

    adv_weight: float = option(1e-2, "λ_a")
    adv_lr: float = option(2e-4, "the discriminator's learning rate")

    def validate(self) -> None:
        if self.adv_weight < 0 or not self.adv_lr > 0:
            raise InputError(f"adv_weight must be ≥ 0 and adv_lr positive, got {self.adv_weight}, {self.adv_lr}")


_PARTIAL = {"labels": ("partial",), "dims": (2,), "dims_reason": "learns from per-slice labels"}
_ACCL = {**_PARTIAL, "lr": 2e-4, "betas": (0.5, 0.999), "decay_from": 0.5, "in_memory": True}
register(RecipeSpec("partial-ce", "cross-entropy on the labelled pixels of partial labels (scribbles)",
                    "WeakSegLib.recipes.label_map:CrossEntropy", default_for="partial", **_PARTIAL))
register(RecipeSpec("sccl", "partial CE + soft size penalty outside [a, b]", "WeakSegLib.recipes.partial:SCCL",
                    reference="any", in_memory=True, settings=SCCLSettings(), **_PARTIAL))
register(RecipeSpec("accl-partial", "partial CE + adversarial loss against the partial labels",
                    "WeakSegLib.recipes.partial:ACCL", settings=ACCLSettings(adv_weight=1e-3), **_ACCL))
register(RecipeSpec("accl-unpaired", "partial CE + adversarial loss against unpaired reference masks",
                    "WeakSegLib.recipes.partial:ACCL", reference="any", needs=("reference",),
                    settings=ACCLSettings(), **_ACCL))
register(RecipeSpec("accl-paired", "partial CE + adversarial loss against the image's own mask (upper bound)",
                    "WeakSegLib.recipes.partial:ACCL", reference="paired", settings=ACCLSettings(), **_ACCL))

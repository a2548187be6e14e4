"""Learning from object sizes (docs/methods.md §4): cross-entropy on the fully labelled slices, then
an expected size loss on the slices labelled with a size alone; its settings."""

from __future__ import annotations

from dataclasses import dataclass

from WeakSegLib.errors import InputError
from WeakSegLib.options import option
from WeakSegLib.registry.spec import RecipeSettings, RecipeSpec, register


@dataclass(frozen=True)
class SizeSettings(RecipeSettings):
    """The pretraining on the mask slices (epochs) and the expected size loss."""

    pretrain_epochs: int = option(20, "first epochs on the mask slices only (then batch-norm statistics stay)")
    size_weight: float = option(1.0, "weight of the expected size loss")
    size_samples: int = option(1, "masks drawn per slice for the gradient estimate")
    size_anchors: int = option(2, "mask slices added to every batch once sizes join")

    def validate(self) -> None:
        if min(self.size_samples, self.size_anchors) < 1:
            raise InputError("size_samples and size_anchors must be ≥ 1")
        if self.pretrain_epochs < 0:
            raise InputError(f"pretrain_epochs must be ≥ 0, got {self.pretrain_epochs}")


register(RecipeSpec("size", "CE on the mask slices + expected size loss on the size-labelled ones",
                    "WeakSegLib.recipes.size:Size", labels=("sizes", "mask"), extra=("mask", "boxes"),
                    needs=("sizes",), default_for="sizes", dims=(2,), dims_reason="learns from per-slice labels",
                    settings=SizeSettings()))

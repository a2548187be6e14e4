"""The box-constraint recipes (Kervadec et al. 2020; docs/methods.md §1) and their settings: the
tightness prior, the box-size bounds and the background terms, each through a log-barrier whose ``t``
the engine schedules (:meth:`WeakSegLib.config.TrainConfig.barrier_t`).

The weights are the reference code's per recipe (docs/methods.md §1 "Weights").
"""

from __future__ import annotations

from dataclasses import dataclass

from WeakSegLib.errors import InputError
from WeakSegLib.options import option
from WeakSegLib.registry.spec import RecipeSettings, RecipeSpec, register


@dataclass(frozen=True)
class BoxConstraintSettings(RecipeSettings):
    """Settings of the tightness prior (band width in lines of the slice, weight λ) and of the box-size
    bounds (fractions of the box area, weight)."""

    band_width: int = option(5, "tightness prior: band width w in lines")
    tightness_weight: float = option(1e-4, "tightness prior: weight λ")
    bounds_weight: float = option(1.0, "box-size bounds: weight")
    size_bounds: tuple[float, float] = option((0.5, 0.9), "box-size bounds as fractions of the box area",
                                              metavar=("LOWER", "UPPER"))

    def validate(self) -> None:
        if self.band_width < 1:
            raise InputError(f"band_width must be ≥ 1 line, got {self.band_width}")
        for name in ("tightness_weight", "bounds_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.size_bounds[0] <= self.size_bounds[1] <= 1:
            raise InputError(f"size_bounds must satisfy 0 ≤ lower ≤ upper ≤ 1 (fractions of the box area), "
                             f"got {tuple(self.size_bounds)}")


register(RecipeSpec("tightness+size+emptiness", "tightness prior + box-size bounds + background emptiness",
                    "WeakSegLib.recipes.box_constraints:TightnessSizeEmptiness", panel=True,
                    settings=BoxConstraintSettings()))
register(RecipeSpec("tightness+emptiness",
                    "tightness prior + background emptiness (no size bounds: may end diffuse, methods §1)",
                    "WeakSegLib.recipes.box_constraints:TightnessEmptiness", panel=True,
                    settings=BoxConstraintSettings(tightness_weight=5e-3),
                    caveat="no size bounds hold the object up: in the stability benchmark, runs on four of its five "
                           "cases ended with a faint object below the filled boxes, some predicting almost "
                           "nothing (docs/methods.md §1); tightness+size+emptiness adds the size bounds"))
register(RecipeSpec("tightness+size+masked-ce", "tightness prior + box-size bounds + masked CE outside the boxes",
                    "WeakSegLib.recipes.box_constraints:TightnessSizeMaskedCE", panel=True,
                    settings=BoxConstraintSettings(bounds_weight=1e-2)))

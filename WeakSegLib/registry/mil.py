"""The multiple-instance-learning recipes (Wang & Xia 2021, 2022; docs/methods.md §8) and their
settings: ``gmil`` (lines crossing tight boxes) and ``polar-mil`` (rays inside loose boxes, which has
gmil's settings too). Their Adam learning rate is the authors', decaying over the second half of the
epochs (without the decay the objects erode late in training: vertebral bodies MR 0.895 at epoch 60
→ 0.865 at 100; with it 0.892)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from WeakSegLib.errors import InputError
from WeakSegLib.options import check_choice, option
from WeakSegLib.registry.spec import RecipeSettings, RecipeSpec, register

#: smooth maxima of a MIL bag's probabilities (:mod:`WeakSegLib.losses.mil`)
SMOOTH_MAXIMA = ("softmax", "quasimax")
#: where polar-mil's rays start: the box pixel the network finds most likely (the papers'
#: "estimated" centre) or the box's centre
POLAR_CENTRES = ("estimated", "box")


@dataclass(frozen=True)
class MILSettings(RecipeSettings):
    """The bags of lines crossing a box (angles in degrees) and the losses over them."""

    mil_smoothmax: str = option("quasimax", "smooth maximum of a bag's probabilities", choices=SMOOTH_MAXIMA)
    mil_alpha: float = option(6.0, "α of the smooth maximum of the crossing-line bags")
    mil_angles: tuple[float, float, float] = option((-40.0, 40.0, 20.0), "angles of the crossing lines in degrees, "
                                                    "first to last by step (0 0 0: rows and columns only)",
                                                    metavar=("FIRST", "LAST", "STEP"))
    mil_focal: tuple[float, float] = option((0.25, 2.0), "the unary loss's focal β and γ", metavar=("BETA", "GAMMA"))
    mil_pairwise_weight: float = option(10.0, "weight λ of the pairwise smoothness")

    def validate(self) -> None:
        check_choice("mil_smoothmax", self.mil_smoothmax, SMOOTH_MAXIMA)
        if self.mil_alpha <= 0 or self.mil_pairwise_weight < 0:
            raise InputError("mil_alpha must be positive, mil_pairwise_weight ≥ 0")
        first, last, step = self.mil_angles
        if not (-90 < first <= last < 90 and step >= 0):
            raise InputError(f"mil_angles must be FIRST ≤ LAST in (-90, 90) degrees and STEP ≥ 0, "
                             f"got {tuple(self.mil_angles)}")
        if not (0 <= self.mil_focal[0] <= 1 and self.mil_focal[1] >= 0):
            raise InputError(f"mil_focal needs 0 ≤ β ≤ 1 and γ ≥ 0, got {tuple(self.mil_focal)}")


@dataclass(frozen=True)
class PolarMILSettings(MILSettings):
    """gmil's settings and the rays of polar MIL (evenly spaced over 360°, sampled from the centre to
    the farthest box corner)."""

    polar_rays: int = option(90, "rays per box, evenly spaced over 360°")
    polar_radii: int = option(30, "samples per ray, from the centre to the farthest box corner")
    polar_weight_min: float = option(0.5, "weight of a ray's outermost sample (nearer ones weigh more)")
    polar_alpha: float = option(1.0, "α of the smooth maximum of a ray")
    polar_centre: str = option("estimated", "where the rays start: the box pixel the network finds most likely, "
                                            "or the box's centre", choices=POLAR_CENTRES)
    polar_parallel: bool | None = option(None, "add the crossing-line bags of gmil, right for tight boxes only "
                                               "(default: on when every box was drawn on a slice, off when any "
                                               "is a 3D box, whose slices are loose)")

    def validate(self) -> None:
        super().validate()
        check_choice("polar_centre", self.polar_centre, POLAR_CENTRES)
        if self.polar_alpha <= 0:
            raise InputError("polar_alpha must be positive")
        if self.polar_rays < 1 or self.polar_radii < 2 or not 0 < self.polar_weight_min <= 1:
            raise InputError("polar_rays must be ≥ 1, polar_radii ≥ 2 and polar_weight_min in (0, 1]")

    def for_boxes(self, from_3d: bool) -> "PolarMILSettings":
        """``polar_parallel`` left unset: the crossing lines join the rays when every box is tight."""
        return self if self.polar_parallel is not None else replace(self, polar_parallel=not from_3d)


_MIL = {"lr": 1e-4, "decay_from": 0.5, "panel": True, "dims": (2,)}
register(RecipeSpec("gmil", "generalised MIL: lines crossing tight boxes at several angles + pairwise smoothness",
                    "WeakSegLib.recipes.mil:GeneralizedMIL", **_MIL, dims_reason="learns from lines in slices",
                    tight_boxes=True, settings=MILSettings()))
register(RecipeSpec("polar-mil", "polar MIL: rays from inside the object to the sides of loose boxes (3D boxes); "
                                 "gmil's lines too on slice boxes",
                    "WeakSegLib.recipes.mil:PolarMIL", **_MIL, dims_reason="learns from rays in slices",
                    settings=PolarMILSettings()))

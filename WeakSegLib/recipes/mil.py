"""Multiple-instance learning from boxes (Wang & Xia 2021, 2022; docs/methods.md §8).

``gmil`` (tight boxes): every line crossing a box at the configured angles is a positive bag, every
pixel outside the boxes a negative bag; focal unary loss of the bags' smooth maxima plus pairwise
smoothness inside the boxes. ``polar-mil`` (loose boxes, e.g. the slices of a 3D box): the positive
bags are rays from a point inside the object to the box's sides instead, which stay correct when
the box is larger than its object.

The network's foreground probabilities are the softmax's foreground channels: with one class this is
exactly the papers' sigmoid output (softmax over (0, z) = sigmoid(z)), and label maps, which the
engine predicts, need classes that exclude each other.
"""

from __future__ import annotations

from WeakSegLib.engine.train.recipe import Recipe, Term
from WeakSegLib.losses.mil import MILUnary, PairwiseSmoothness, angles_of


class _MIL(Recipe):
    """Shared terms: the unary loss over the recipe's bags and the pairwise smoothness."""

    def bags(self) -> list[tuple[str, tuple, float]]:
        raise NotImplementedError

    def terms(self) -> list[Term]:
        settings = self.ctx.settings
        unary = MILUnary(self.bags(), settings.mil_smoothmax, settings.mil_focal)
        return [Term("mil-unary", unary, ("probs", "boxes", "box_mask", "valid")),
                Term("mil-pairwise", PairwiseSmoothness(), ("probs", "box_mask"), weight=settings.mil_pairwise_weight)]


class GeneralizedMIL(_MIL):
    """Parallel crossing lines at ``mil_angles`` (generalised MIL; tight boxes)."""

    def bags(self) -> list[tuple[str, tuple, float]]:
        settings = self.ctx.settings
        return [("parallel", angles_of(settings.mil_angles), settings.mil_alpha)]


class PolarMIL(_MIL):
    """Rays from a point inside the object (polar MIL; loose boxes), plus the parallel lines when
    ``polar_parallel`` (training decides it from the boxes when the user did not:
    :meth:`WeakSegLib.config.TrainConfig.for_boxes`; a recipe built with it unset leaves them out)."""

    def bags(self) -> list[tuple[str, tuple, float]]:
        settings = self.ctx.settings
        polar = ("polar", (settings.polar_rays, settings.polar_radii, settings.polar_weight_min, settings.polar_centre),
                 settings.polar_alpha)
        parallel = ("parallel", angles_of(settings.mil_angles), settings.mil_alpha)
        return [polar, parallel] if settings.polar_parallel else [polar]

"""Box constraints under log-barrier extensions (Kervadec et al., MIDL 2020; docs/methods.md §1).

The network's foreground probabilities must fill every band of ``band_width`` lines of each box
(tightness prior), keep the object's size between fractions of the box area (box size), and leave
the outside of the boxes empty — by the barrier on its sum (emptiness) or by cross-entropy towards
background (masked CE). One barrier parameter t for every constraint, growing each epoch.
"""

from __future__ import annotations

from WeakSegLib.engine.train.recipe import Recipe, Term
from WeakSegLib.losses.box_constraints import BoxSize, Emptiness, MaskedCrossEntropy, TightnessPrior


class _BoxConstraints(Recipe):
    """Shared terms of the constraint recipes."""

    def tightness(self) -> Term:
        settings = self.ctx.settings
        return Term("tightness", TightnessPrior(settings.band_width, settings.tightness_weight), ("probs", "boxes", "t"))

    def size(self) -> Term:
        settings = self.ctx.settings
        return Term("size", BoxSize(*settings.size_bounds, weight=settings.bounds_weight), ("probs", "box_mask", "t"))

    @staticmethod
    def emptiness() -> Term:
        return Term("emptiness", Emptiness(), ("probs", "box_mask", "t"))


class TightnessSizeEmptiness(_BoxConstraints):
    """Tightness prior + box-size bounds + emptiness (the default recipe)."""

    def terms(self) -> list[Term]:
        return [self.tightness(), self.size(), self.emptiness()]


class TightnessEmptiness(_BoxConstraints):
    """Tightness prior + emptiness."""

    def terms(self) -> list[Term]:
        return [self.tightness(), self.emptiness()]


class TightnessSizeMaskedCE(_BoxConstraints):
    """Tightness prior + box-size bounds + cross-entropy towards background outside the boxes."""

    def terms(self) -> list[Term]:
        return [self.tightness(), self.size(), Term("masked-ce", MaskedCrossEntropy(), ("probs", "box_mask"))]

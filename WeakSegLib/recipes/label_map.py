"""Cross-entropy on the training label map (recipes ``full``, ``box-mask``, ``partial-ce``).

The label map is what the case gives (:func:`WeakSegLib.engine.samples.data.build_samples`): the reference
masks (``full``: the upper bound), the filled boxes (``box-mask``: the naive baseline) or partial
labels (``partial-ce``); the loss is averaged over the labelled pixels only. The proposal, size and
partial-label recipes build on it.
"""

from __future__ import annotations

from WeakSegLib.engine.train.recipe import Recipe, Term
from WeakSegLib.losses.labels import PartialCrossEntropy


class CrossEntropy(Recipe):
    """Cross-entropy over the labelled pixels of the batch's label map (mask cases' masks included)."""

    label_map = True

    def terms(self) -> list[Term]:
        return [Term("ce", PartialCrossEntropy(), ("logits", "labels"))]

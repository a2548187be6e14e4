"""Label values in files ↔ class indices in training.

A label volume holds label values (0 background, 1, 2, … or any positive integers); training works on
class indices 1..C of the label values taken, in order. Pixels whose label is unknown (outside the
scribbles of partial labels, the size-labelled slices of the size recipe) get :data:`IGNORE`: no
cross-entropy there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from WeakSegLib.io.partial import PARTIAL_BACKGROUND

#: training label of pixels without a label (cross-entropy's ``ignore_index``)
IGNORE = 255


def labels_from_mask(mask: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Label values → class indices 1..C (other values → 0), uint8."""
    lut = np.zeros(int(max(int(mask.max()), max(label_values))) + 1, dtype=np.uint8)
    for i, v in enumerate(label_values):
        lut[int(v)] = i + 1
    return lut[mask]


def partial_to_labels(partial: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Partial label volume (0 unknown, label values, :data:`PARTIAL_BACKGROUND`) → class indices with
    :data:`IGNORE` for unknown voxels and objects of other labels."""
    labels = np.full(partial.shape, IGNORE, np.uint8)
    labels[partial == PARTIAL_BACKGROUND] = 0
    for i, v in enumerate(label_values):
        labels[partial == v] = i + 1
    return labels

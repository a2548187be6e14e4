"""Partial labels (scribbles; docs/methods.md §4): the label-volume convention and making them from masks.

A partial label volume lies on the image's grid and marks some voxels only:

- ``0``: unknown (no loss there);
- a label value (1, 2, …): that object;
- :data:`PARTIAL_BACKGROUND` (255): background.

:func:`partial_from_mask` makes one from a reference mask as Zhang et al. did, by shrinking each
object and the background in-plane (per slice along ``axis``): object voxels farther than ``erode``
voxels from the object's edge stay object, background voxels farther than ``background_margin``
voxels from every object stay background, the rest becomes unknown. Objects thinner than
2·``erode`` on a slice leave no scribble there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from WeakSegLib.errors import InputError

#: label value that marks background in a partial label volume (0 is "unknown")
PARTIAL_BACKGROUND = 255


@dataclass
class AnnotationRatio:
    """How much of the reference the partial labels keep.

    Attributes:
        object: labelled object voxels / object voxels of the mask.
        background: labelled background voxels / background voxels.
        overall: labelled voxels / all voxels.
        slices_with_object: slices that keep an object scribble / slices with an object.
    """

    object: float
    background: float
    overall: float
    slices_with_object: float

    def to_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def _in_plane_distance(region: np.ndarray, axis: int) -> np.ndarray:
    """Euclidean distance (voxels) of each voxel of ``region`` to the nearest voxel outside it on the
    same slice along ``axis`` (slices without such a voxel: a large number)."""
    from scipy import ndimage  # noqa: PLC0415

    sampling = [1.0, 1.0, 1.0]
    sampling[axis] = 1e6
    return ndimage.distance_transform_edt(region, sampling=sampling)


def partial_from_mask(mask: np.ndarray, axis: int = 0, erode: float = 3.0, background_margin: float = 10.0,
                      labels: Iterable[int] | None = None) -> tuple[np.ndarray, AnnotationRatio]:
    """Partial labels made by shrinking a mask (module docstring).

    Args:
        mask: ``(z, y, x)`` integer label volume, 0 = background.
        axis: slice axis; distances are measured within each slice.
        erode: object voxels at a distance ≤ ``erode`` (voxels) from the object's edge become unknown.
        background_margin: background voxels within this distance (voxels) of any object become unknown.
        labels: label values to keep (default: all non-zero values); other objects count as unknown.

    Returns:
        ``(partial, ratio)``: uint8 partial label volume and its :class:`AnnotationRatio`.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    if erode < 0 or background_margin < 0:
        raise InputError("erode and background_margin must be ≥ 0 voxels")
    values = sorted(int(v) for v in np.unique(mask) if v != 0) if labels is None else [int(v) for v in labels]
    if any(v < 1 or v >= PARTIAL_BACKGROUND for v in values):
        raise InputError(f"label values must lie in 1..{PARTIAL_BACKGROUND - 1} ({PARTIAL_BACKGROUND} marks background)")
    objects = np.isin(mask, values)
    if not objects.any():
        raise InputError(f"the mask holds no object with label(s) {values or 'any'}: nothing to annotate")
    partial = np.zeros(mask.shape, np.uint8)
    for value in values:
        obj = mask == value
        partial[obj & (_in_plane_distance(obj, axis) > erode)] = value
    background = (mask == 0) & (_in_plane_distance(mask == 0, axis) > background_margin)
    partial[background] = PARTIAL_BACKGROUND
    kept = (partial > 0) & (partial < PARTIAL_BACKGROUND)
    other = tuple(a for a in range(3) if a != axis)
    has_object = objects.any(axis=other)
    ratio = AnnotationRatio(
        object=float(kept.sum() / objects.sum()),
        background=float(background.sum() / max(int((mask == 0).sum()), 1)),
        overall=float((partial > 0).sum() / partial.size),
        slices_with_object=float(kept.any(axis=other)[has_object].mean()))
    return partial, ratio

"""Per-slice object size labels (docs/methods.md §3): make them from a mask, validate, save, load.

A size label says how large the object of one class is on one slice: g = 2·max d, with d the
chessboard (Chebyshev) distance of the object's pixels to the background and the image border
counted as background (:func:`WeakSegLib.losses.distance.object_size`), in pixels of the slice grid.
For a square of side w, g = w (w even) or w + 1 (w odd): about the side of the largest square that
fits in the object — the "thickness" a radiologist reads off with a ruler, divided by the
pixel spacing. g = 0 means "no object of this class on this slice".

Size file format (``weakseg-sizes``, version 1), JSON, written atomically, beside the box format of
:mod:`WeakSegLib.io.boxes` (same ``geometry`` and ``labels`` blocks)::

    {
      "format": "weakseg-sizes",
      "version": 1,
      "geometry": {"shape": [Z, Y, X], "spacing": [...], "origin": [...], "direction": [...]},
      "labels": {"1": "vertebral body"},
      "axis": 0,
      "sizes": [{"slice": 12, "label": 1, "size": 18}, {"slice": 13, "label": 1, "size": 0}]
    }

``axis`` is the slice axis in (z, y, x) array order; ``slice`` indexes along it. A (slice, label)
pair appears at most once. Sizes are finite and ≥ 0 (fractions allowed: a measured size in mm
divided by the pixel spacing).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from WeakSegLib.errors import InputError
from WeakSegLib.io.atomic import atomic_write_json
from WeakSegLib.io.boxes import read_annotation_json
from WeakSegLib.io.fields import Fields
from WeakSegLib.io.volume import MAX_LABEL

SIZE_FORMAT = "weakseg-sizes"
SIZE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SizeLabel:
    """Size ``size`` (pixels, see module docstring) of class ``label`` on slice ``slice``."""

    slice: int
    label: int
    size: float


@dataclass
class SizeSet:
    """Size labels of one volume, their slice axis, the grid and the label names."""

    sizes: list[SizeLabel]
    shape: tuple[int, int, int]
    axis: int = 0
    labels: dict[int, str] = field(default_factory=lambda: {1: "object"})
    geometry: dict | None = None

    def validate(self) -> "SizeSet":
        """Raise :class:`InputError` naming the first bad entry; return self when all are fine."""
        if self.axis not in (0, 1, 2):
            raise InputError(f"size labels need a slice axis 0, 1 or 2, got {self.axis!r}")
        if not self.sizes:
            raise InputError("the size list is empty: give at least one slice's size")
        seen: set[tuple[int, int]] = set()
        n = int(self.shape[self.axis])
        for i, s in enumerate(self.sizes):
            name = f"size #{i} (slice {s.slice}, label {s.label}, size {s.size})"
            if not math.isfinite(s.size):
                raise InputError(f"{name}: the size is not a finite number")
            if s.size < 0:
                raise InputError(f"{name}: sizes must be ≥ 0 pixels (0 = no object on the slice)")
            if not 0 <= s.slice < n:
                raise InputError(f"{name}: slice outside the volume ({n} slices along axis {self.axis})")
            if s.label < 1:
                raise InputError(f"{name}: label must be ≥ 1 (0 is background)")
            if s.label not in self.labels:
                raise InputError(f"{name}: label {s.label} is not named in the label table {self.labels}")
            if (s.slice, s.label) in seen:
                raise InputError(f"{name}: slice {s.slice} has two sizes for label {s.label}")
            seen.add((s.slice, s.label))
        return self

    def to_dict(self) -> dict:
        geometry = dict(self.geometry or {})
        geometry["shape"] = [int(v) for v in self.shape]
        return {"format": SIZE_FORMAT, "version": SIZE_FORMAT_VERSION, "geometry": geometry,
                "labels": {str(k): v for k, v in sorted(self.labels.items())}, "axis": int(self.axis),
                "sizes": [{"slice": int(s.slice), "label": int(s.label),
                           "size": int(s.size) if float(s.size).is_integer() else float(s.size)} for s in self.sizes]}


def save_sizes(sizes: SizeSet, path: str | os.PathLike) -> Path:
    """Validate and write a size file atomically (format in the module docstring)."""
    sizes.validate()
    return atomic_write_json(path, sizes.to_dict())


def load_sizes(path: str | os.PathLike) -> SizeSet:
    """Read and validate a size file.

    Raises:
        InputError: missing file, invalid JSON, another format or a newer version, bad entries
            (negative, NaN, slice outside the volume, duplicates).
    """
    fields, geometry, labels = read_annotation_json(path, SIZE_FORMAT, SIZE_FORMAT_VERSION, "size")
    entries = []
    for i, entry in enumerate(fields.items("sizes", [])):
        f = Fields(entry, f"{path}: size #{i}")
        entries.append(SizeLabel(f.whole("slice"), f.whole("label", 1, low=1, high=MAX_LABEL), f.number("size")))
    try:
        return SizeSet(entries, tuple(geometry["shape"]), fields.whole("axis", 0), labels,  # type: ignore[arg-type]
                       geometry).validate()
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def object_size(mask: np.ndarray) -> int:
    """g = 2 · the largest chessboard (L∞) distance of a pixel of 2D ``mask`` to the background, the
    image border counting as background: the size measure of the size loss
    (:func:`WeakSegLib.losses.distance.object_size` is its batched torch form)."""
    from scipy import ndimage  # noqa: PLC0415 - not imported by Slicer's process with this module

    if not mask.size:
        return 0
    return 2 * int(ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard").max())


def sizes_from_mask(mask: np.ndarray, axis: int = 0, labels: Iterable[int] | None = None,
                    slices: Sequence[int] | None = None) -> list[SizeLabel]:
    """Size labels of every slice (or of ``slices``) along ``axis`` for each label value.

    Slices without the object get size 0. ``labels`` default: every non-zero value in ``mask``.

    Raises:
        InputError: not a 3D mask, or no object of the requested labels.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    values = sorted(int(v) for v in np.unique(mask) if v != 0) if labels is None else [int(v) for v in labels]
    if not values or not np.isin(mask, values).any():
        raise InputError(f"the mask holds no object with label(s) {values or 'any'}: no size to measure")
    planes = np.moveaxis(mask, axis, 0)
    index = np.arange(planes.shape[0]) if slices is None else np.asarray(slices, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= planes.shape[0]):
        raise InputError(f"slices {list(index)} outside 0..{planes.shape[0] - 1} along axis {axis}")
    out = []
    for value in values:
        g = [object_size(plane == value) for plane in planes[index]]
        out.extend(SizeLabel(int(k), value, float(s)) for k, s in zip(index, g))
    out.sort(key=lambda s: (s.slice, s.label))
    return out

"""Bounding boxes in voxel index space: make them from masks, cut 3D boxes, validate, save, load.

Geometry convention (docs/architecture.md): a box is half-open ``[start, stop)`` per axis in the array order of
``SimpleITK.GetArrayFromImage``, i.e. ``(z, y, x)``. A *slice box* is a 2D box on one slice: it is
stored as a 3D box exactly one voxel thick along its ``axis``. A *3D box* spans several slices.

Box file format (``weakseg-boxes``, version 1), JSON, written atomically::

    {
      "format": "weakseg-boxes",
      "version": 1,
      "geometry": {"shape": [Z, Y, X], "spacing": [sx, sy, sz], "origin": [...], "direction": [...]},
      "labels": {"1": "vertebra"},
      "boxes": [
        {"label": 1, "kind": "slice", "axis": 0, "start": [z0, y0, x0], "stop": [z1, y1, x1]},
        {"label": 1, "kind": "3d", "axis": null, "start": [...], "stop": [...]}
      ]
    }

``geometry`` is the grid the indices refer to (shape in (z, y, x), spacing/origin/direction in ITK
order); a box file is checked against its image before use. ``labels`` maps each label value to a
name. Several boxes per slice and several labels are allowed; boxes may overlap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from WeakSegLib.errors import InputError
from WeakSegLib.io.atomic import atomic_write_bytes, json_bytes
from WeakSegLib.io.fields import Fields, read_versioned
from WeakSegLib.io.volume import MAX_LABEL, geometry_differences

BOX_FORMAT = "weakseg-boxes"
BOX_FORMAT_VERSION = 1
KINDS = ("slice", "3d")


@dataclass(frozen=True)
class Box:
    """One box. ``start``/``stop`` are (z, y, x) voxel indices, half-open.

    ``kind`` is ``"slice"`` (one voxel thick along ``axis``) or ``"3d"`` (``axis`` is None).
    """

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    label: int = 1
    kind: str = "3d"
    axis: int | None = None

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(int(b - a) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def slice_index(self) -> int:
        """Index of the slice a slice box lies on."""
        if self.kind != "slice" or self.axis is None:
            raise InputError("slice_index asked of a 3D box")
        return int(self.start[self.axis])

    def in_plane(self) -> tuple[int, int, int, int]:
        """A slice box's bounds on its slice, ``(r0, r1, c0, c1)`` half-open: the two array axes other
        than ``axis``, in array order (rows, then columns of the slice)."""
        if self.kind != "slice" or self.axis is None:
            raise InputError("in_plane asked of a 3D box")
        (r0, c0), (r1, c1) = ([v for a, v in enumerate(p) if a != self.axis] for p in (self.start, self.stop))
        return int(r0), int(r1), int(c0), int(c1)

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {"label": int(self.label), "kind": self.kind, "axis": self.axis,
                "start": [int(v) for v in self.start], "stop": [int(v) for v in self.stop]}

    @classmethod
    def from_dict(cls, d: dict, where: str = "box") -> "Box":
        """A box from its JSON object (see the module docstring); wrong fields are named."""
        f = Fields(d, where)
        axis = f.whole("axis", None, low=0, high=2)
        return cls(tuple(f.wholes("start", 3)), tuple(f.wholes("stop", 3)),  # type: ignore[arg-type]
                   f.whole("label", 1, low=1, high=MAX_LABEL), f.text("kind", "3d"), axis)


@dataclass
class BoxSet:
    """Boxes of one volume, the grid they refer to and the label names."""

    boxes: list[Box]
    shape: tuple[int, int, int]
    labels: dict[int, str] = field(default_factory=lambda: {1: "object"})
    geometry: dict | None = None

    def validate(self) -> "BoxSet":
        """Raise :class:`InputError` naming the first bad box; return self when all are fine."""
        validate_boxes(self.boxes, self.shape)
        unknown = sorted({b.label for b in self.boxes} - set(self.labels))
        if unknown:
            raise InputError(f"boxes use label(s) {unknown} that the label table {self.labels} does not name")
        return self

    def slice_boxes(self, axis: int) -> list[Box]:
        """All boxes as slice boxes along ``axis``: 3D boxes are cut (see :func:`split_box`)."""
        out: list[Box] = []
        for box in self.boxes:
            if box.kind == "slice" and box.axis != axis:
                raise InputError(f"slice box {box.to_dict()} lies across axis {box.axis}, not the training axis {axis}")
            out.extend(split_box(box, axis))
        return out

    def to_dict(self) -> dict:
        geometry = dict(self.geometry or {})
        geometry["shape"] = [int(v) for v in self.shape]
        return {"format": BOX_FORMAT, "version": BOX_FORMAT_VERSION, "geometry": geometry,
                "labels": {str(k): v for k, v in sorted(self.labels.items())},
                "boxes": [b.to_dict() for b in self.boxes]}


def validate_boxes(boxes: Sequence[Box], shape: Sequence[int]) -> None:
    """Check every box against a volume of ``shape`` (z, y, x).

    Raises:
        InputError: naming the box (its position in the list and its indices) when it is empty or
            of zero size on an axis, outside the volume, of an unknown kind, or a slice box thicker
            than one voxel.
    """
    if len(boxes) == 0:
        raise InputError("the box list is empty: draw at least one box")
    shape = tuple(int(s) for s in shape)
    for i, box in enumerate(boxes):
        name = f"box #{i} (label {box.label}, start {list(box.start)}, stop {list(box.stop)})"
        if box.kind not in KINDS:
            raise InputError(f"{name}: unknown kind {box.kind!r}; use 'slice' or '3d'")
        if any(b <= a for a, b in zip(box.start, box.stop)):
            raise InputError(f"{name} is empty: stop must exceed start on every axis")
        if any(a < 0 for a in box.start) or any(b > s for b, s in zip(box.stop, shape)):
            raise InputError(f"{name} lies (partly) outside the volume of shape {list(shape)} (z, y, x)")
        if box.label < 1:
            raise InputError(f"{name}: label must be ≥ 1 (0 is background)")
        if box.kind == "slice":
            if box.axis not in (0, 1, 2):
                raise InputError(f"{name}: slice box needs axis 0, 1 or 2, got {box.axis!r}")
            if box.size[box.axis] != 1:
                raise InputError(f"{name}: slice box must be 1 voxel thick along axis {box.axis}")


def clip_box(box: Box, shape: Sequence[int]) -> Box:
    """The part of ``box`` inside a volume of ``shape``; raise when nothing is left."""
    start = tuple(max(0, int(a)) for a in box.start)
    stop = tuple(min(int(s), int(b)) for b, s in zip(box.stop, shape))
    if any(b <= a for a, b in zip(start, stop)):
        raise InputError(f"box {box.to_dict()} lies entirely outside the volume of shape {list(shape)}")
    return Box(start, stop, box.label, box.kind, box.axis)  # type: ignore[arg-type]


def split_box(box: Box, axis: int) -> list[Box]:
    """Cut a box into its slice boxes along ``axis`` (a slice box along ``axis`` is returned as is).

    A 3D box tight around an object gives per-slice boxes that are generally *not* tight.
    """
    if box.kind == "slice" and box.axis == axis:
        return [box]
    out = []
    for k in range(box.start[axis], box.stop[axis]):
        start = list(box.start)
        stop = list(box.stop)
        start[axis], stop[axis] = k, k + 1
        out.append(Box(tuple(start), tuple(stop), box.label, "slice", axis))  # type: ignore[arg-type]
    return out


def expand_box(box: Box, margin: int, shape: Sequence[int]) -> Box:
    """Widen a box by ``margin`` voxels on every side (not across the slice axis of a slice box),
    clipped to the volume."""
    start, stop = list(box.start), list(box.stop)
    for ax in range(3):
        if box.kind == "slice" and ax == box.axis:
            continue
        start[ax] = max(0, start[ax] - margin)
        stop[ax] = min(int(shape[ax]), stop[ax] + margin)
    return Box(tuple(start), tuple(stop), box.label, box.kind, box.axis)  # type: ignore[arg-type]


def boxes_from_mask(
    mask: np.ndarray,
    mode: str = "slice",
    axis: int = 0,
    margin: int = 0,
    labels: Iterable[int] | None = None,
    per_component: bool = True,
) -> list[Box]:
    """Tight boxes around the objects of a label mask.

    Args:
        mask: integer label array ``(z, y, x)``; 0 is background.
        mode: ``"slice"`` for one 2D box per object per slice along ``axis``; ``"3d"`` for 3D boxes.
        axis: slice axis for ``mode="slice"``.
        margin: voxels added on every side (in-plane for slice boxes), clipped to the volume.
        labels: label values to box (default: every non-zero value in the mask).
        per_component: one box per connected component (2D connectivity within a slice in slice
            mode, 3D in 3D mode, face neighbours); otherwise one box per label per slice (or volume).

    Returns:
        Boxes sorted by label, then position.

    Raises:
        InputError: the mask has no object of the requested labels.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    if margin < 0:
        raise InputError(f"margin must be ≥ 0 voxels, got {margin}")
    if mode not in ("slice", "3d"):
        raise InputError(f"mode must be 'slice' or '3d', got {mode!r}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    values = sorted(int(v) for v in np.unique(mask) if v != 0) if labels is None else [int(v) for v in labels]
    boxes: list[Box] = []
    from scipy import ndimage  # noqa: PLC0415  (not needed to read, write or draw boxes)

    structure = ndimage.generate_binary_structure(3, 1)
    if mode == "slice":
        structure = structure.copy()
        index = [slice(None)] * 3
        index[axis] = [0, 2]  # no connection across slices
        structure[tuple(index)] = False
    for value in values:
        obj = mask == value
        if not obj.any():
            continue
        if per_component:
            lab, _ = ndimage.label(obj, structure=structure)
        elif mode == "slice":
            ramp = np.arange(1, mask.shape[axis] + 1).reshape([-1 if a == axis else 1 for a in range(3)])
            lab = obj * ramp
        else:
            lab = obj.astype(np.int32)
        for sl in ndimage.find_objects(lab):
            if sl is None:
                continue
            box = Box(tuple(s.start for s in sl), tuple(s.stop for s in sl), value,
                      "slice" if mode == "slice" else "3d", axis if mode == "slice" else None)  # type: ignore[arg-type]
            boxes.append(expand_box(box, margin, mask.shape) if margin else box)
    if not boxes:
        raise InputError(f"the mask holds no object with label(s) {values or 'any'}: nothing to box")
    boxes.sort(key=lambda b: (b.label, b.start, b.stop))
    return boxes


def rasterize(boxes: Sequence[Box], shape: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    """Filled boxes as a mask ``(len(labels), z, y, x)`` of uint8: channel i is 1 inside any box of
    ``labels[i]``."""
    out = np.zeros((len(labels), *shape), dtype=np.uint8)
    index = {int(v): i for i, v in enumerate(labels)}
    for box in boxes:
        out[(index[box.label], *box.slices())] = 1
    return out


def box_file_bytes(boxset: BoxSet) -> bytes:
    """The content of the box file of ``boxset``, validated (format in the module docstring)."""
    return json_bytes(boxset.validate().to_dict())


def save_boxes(boxset: BoxSet, path: str | os.PathLike) -> Path:
    """Validate and write a box file atomically (format in the module docstring)."""
    return atomic_write_bytes(path, box_file_bytes(boxset))


def read_annotation_json(path: str | os.PathLike, fmt: str, version: int, what: str) -> tuple[Fields, dict, dict[int, str]]:
    """Read a versioned WeakSeg JSON annotation file (boxes, sizes): its fields, the grid it was drawn on
    (``shape``, and ``spacing``, ``origin``, ``direction`` when given) and its label names.

    Raises:
        InputError: missing file, invalid JSON, another format, a newer version, a missing or wrong
            geometry or label table (each named).
    """
    fields = read_versioned(Path(path), fmt, version, f"WeakSeg {what} file")
    g = fields.sub("geometry")
    geometry: dict = {"shape": g.wholes("shape", 3, low=1)}
    for key, count in (("spacing", 3), ("origin", 3), ("direction", 9)):
        value = g.numbers(key, count, None, positive=key == "spacing")
        if value is not None:
            geometry[key] = value
    names = fields.mapping("labels", {"1": "object"})
    labels = {}
    for key, name in names.items():
        if not key.isdigit() or not 1 <= int(key) <= MAX_LABEL or not isinstance(name, str):
            raise InputError(f"{path}: labels maps {key!r} to {name!r}; give label values 1–{MAX_LABEL} and names, "
                             'e.g. {"1": "liver"}')
        labels[int(key)] = name
    return fields, geometry, labels


def load_boxes(path: str | os.PathLike) -> BoxSet:
    """Read and validate a box file.

    Raises:
        InputError: missing file, invalid JSON, another format or a newer version, bad boxes.
    """
    fields, geometry, labels = read_annotation_json(path, BOX_FORMAT, BOX_FORMAT_VERSION, "box")
    boxes = [Box.from_dict(b, f"{path}: box #{i}") for i, b in enumerate(fields.items("boxes", []))]
    try:
        return BoxSet(boxes, tuple(geometry["shape"]), labels, geometry).validate()  # type: ignore[arg-type]
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def check_drawn_grid(drawn: dict, geometry: dict, what: str, name: str = "image") -> None:
    """Raise :class:`InputError` when annotations (``what``: "box", "size") made on the grid ``drawn``
    are used with an image of another grid ``geometry`` (:meth:`WeakSegLib.io.volume.Volume.geometry`)."""
    for key in geometry_differences(geometry, drawn):
        raise InputError(f"{what} labels were drawn on a grid of {key} {drawn[key]} but {name} has {key} {geometry[key]}: "
                         f"mismatched image/{what} geometry")


def check_boxes_fit(boxset: BoxSet, geometry: dict, name: str = "image") -> None:
    """Raise :class:`InputError` when a box file was drawn on another grid than ``geometry``."""
    check_drawn_grid({**(boxset.geometry or {}), "shape": list(boxset.shape)}, geometry, "box", name)

"""One canonical space for every case of a cohort: orientation, spacing and intensities made consistent.

A :class:`~WeakSegLib.io.canonical.Plan` is decided once from the training cases (as nnU-Net's experiment
planning) and stored in the model card; training and prediction apply it to every image:

1. **orientation**: every image is reoriented to RAS (MONAI ``Orientation``): array axis 0 runs
   towards the patient's head, 1 to the front, 2 to the patient's right (arrays keep WeakSeg's ``(z, y, x)``
   order: the ITK index ``(i, j, k)`` reversed), so a scan stored LPS and one stored RAS give the
   network the same slices, and axial slices are along axis 0;
2. **spacing**: resampled to the plan's spacing (MONAI ``Spacing``; bilinear for images, nearest for
   labels): by default the median spacing of the training cases, per axis;
3. **intensities**: ``ct`` (a CT cohort) clips to the 0.5–99.5 percentiles of the voxels inside the
   boxes or masks of all training cases and z-scores with their mean and standard deviation (one
   mapping for the whole cohort: a CT with −3024 padding outside its field of view is scaled like one
   without); ``percentile`` (MR) does the same per case over the whole image; the other methods of
   :func:`WeakSegLib.io.volume.normalize` stay available.

Boxes ride along exactly: each box is painted into an index map (boxes that overlap go to separate
layers), the maps go through the same nearest-neighbour resampling as the label volumes, and each
box is read back as the bounding box of its voxels — a slice box cut into the slices it now covers.
Predictions go back to each input's exact grid: class probabilities are resampled (linearly, in world
coordinates) before the argmax, so thin structures survive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box
from WeakSegLib.io.canonical import Plan
from WeakSegLib.io.sizes import SizeLabel
from WeakSegLib.io.volume import Volume

#: LPS (ITK) ↔ RAS (MONAI): the first two world axes flip
_FLIP = np.diag([-1.0, -1.0, 1.0])
#: the axis along which a canonical (RAS) array is cut into axial slices
AXIAL = 0
#: voxels sampled per case for the cohort's CT intensity statistics
_SAMPLES = 100_000


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether intensities look like Hounsfield units: some voxel (air, or padding outside the field of
    view) below −500, which MR magnitudes never reach."""
    return float(array.min()) < -500.0


# ---- geometry -------------------------------------------------------------------------------------

def volume_from_affine(array: np.ndarray, affine: np.ndarray) -> Volume:
    """A volume ``(z, y, x)`` on the grid of an ITK-index→RAS matrix."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = _FLIP @ (affine[:3, :3] / spacing)
    return Volume(array, tuple(float(v) for v in spacing), tuple(float(v) for v in _FLIP @ affine[:3, 3]),
                  tuple(float(v) for v in direction.ravel()))


def canonical_spacing(volume: Volume) -> np.ndarray:
    """The voxel size (mm) of ``volume`` once reoriented to RAS, ITK order ``(x, y, z)``."""
    direction = np.abs(np.asarray(volume.direction, float).reshape(3, 3))
    order = np.argmax(direction, axis=1)  # world axis → the index axis closest to it
    return np.asarray(volume.spacing, float)[order]


def target_spacing(volumes: Sequence[Volume]) -> list[float]:
    """The median canonical spacing of the training images, per axis (nnU-Net's default)."""
    return [float(v) for v in np.median([canonical_spacing(v) for v in volumes], axis=0)]


# ---- boxes as index maps ------------------------------------------------------------------------

def box_layers(boxes: Sequence[Box], shape: Sequence[int]) -> np.ndarray:
    """``(L, z, y, x)`` int32: box ``n`` painted as ``n + 1``; a box overlapping an earlier one goes to
    the next layer where it overlaps nothing."""
    layers: list[np.ndarray] = []
    for n, box in enumerate(boxes):
        region = box.slices()
        layer = next((l for l in layers if not l[region].any()), None)
        if layer is None:
            layer = np.zeros(tuple(shape), np.int32)
            layers.append(layer)
        layer[region] = n + 1
    return np.stack(layers) if layers else np.zeros((0, *shape), np.int32)


def boxes_from_layers(layers: np.ndarray, boxes: Sequence[Box], axis_map: Sequence[int]) -> list[Box]:
    """The boxes read back from resampled index maps: each box's bounding box; a slice box (along old
    axis a) cut into one slice box per slice along ``axis_map[a]``; a box no voxel kept is gone."""
    extent: dict[int, list[list[int]]] = {}
    for layer in layers:
        for value, region in enumerate(ndimage.find_objects(layer), start=1):
            if region is None:
                continue
            lo, hi = [s.start for s in region], [s.stop for s in region]
            if value in extent:
                extent[value] = [np.minimum(extent[value][0], lo).tolist(), np.maximum(extent[value][1], hi).tolist()]
            else:
                extent[value] = [lo, hi]
    out: list[Box] = []
    for n, box in enumerate(boxes):
        if n + 1 not in extent:
            continue
        lo, hi = extent[n + 1]
        moved = Box(tuple(lo), tuple(hi), box.label, "3d")  # type: ignore[arg-type]
        if box.kind == "slice":
            axis = axis_map[box.axis]
            for k in range(lo[axis], hi[axis]):
                start, stop = list(lo), list(hi)
                start[axis], stop[axis] = k, k + 1
                out.append(Box(tuple(start), tuple(stop), box.label, "slice", axis))  # type: ignore[arg-type]
        else:
            out.append(moved)
    return out


# ---- one case -----------------------------------------------------------------------------------

@dataclass
class CanonicalCase:
    """A case in the canonical space: the image (normalised), its grid, the label volumes, boxes and
    size labels moved with it, and the slice axis of the boxes drawn on slices."""

    volume: Volume
    labels: dict[str, np.ndarray]
    boxes: list[Box] | None
    sizes: list[SizeLabel] | None
    axis_map: list[int]


def canonicalize(image: Volume, plan: Plan, labels: dict[str, np.ndarray] | None = None,
                 boxes: Sequence[Box] | None = None, sizes: Sequence[SizeLabel] | None = None,
                 size_axis: int = 0, normalize_image: bool = True) -> CanonicalCase:
    """``image`` and what comes with it (label volumes, boxes, size labels on its grid) in the plan's
    canonical space (module docstring)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientationd, Spacingd

    labels = dict(labels or {})
    if plan.keeps_grid:  # a model trained before plans: the image as it is stored
        return CanonicalCase(image.with_array(plan.normalize(image.array)) if normalize_image else image, labels,
                             list(boxes) if boxes else None, list(sizes) if sizes else None, [0, 1, 2])
    affine = torch.from_numpy(image.ijk_to_ras())
    layers = box_layers(boxes, image.shape) if boxes else None
    channels = [v for v in labels.values()] + ([*layers] if layers is not None else [])
    data = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(image.array.T[None], np.float32)), affine=affine)}
    if channels:
        stacked = np.stack([c.T for c in channels]).astype(np.float32)  # integer values < 2^24: exact
        data["labels"] = MetaTensor(torch.from_numpy(stacked), affine=affine)
    keys = list(data)
    steps = [Orientationd(keys, axcodes=plan.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if plan.spacing is not None:
        steps.append(Spacingd(keys, pixdim=tuple(plan.spacing), mode=("bilinear", "nearest")[:len(keys)]))
    out = Compose(steps)(data)
    new_affine = out["image"].affine.numpy().astype(float)
    array = out["image"].numpy()[0].T.copy()
    volume = volume_from_affine(plan.normalize(array) if normalize_image else array, new_affine)
    moved = out["labels"].numpy().T if channels else None  # (z, y, x, C)
    new_labels = {name: np.ascontiguousarray(moved[..., i]).astype(values.dtype)
                  for i, (name, values) in enumerate(labels.items())}
    # index mapping new → old in (z, y, x) order, from the two ITK-index→RAS matrices
    mapping = np.linalg.inv(image.ijk_to_ras()) @ new_affine  # new ITK index → old ITK index
    axis_map = [0, 0, 0]
    for new_ijk in range(3):
        old_ijk = int(np.argmax(np.abs(mapping[:3, new_ijk])))
        axis_map[2 - old_ijk] = 2 - new_ijk
    new_boxes = None
    if boxes:
        box_maps = np.ascontiguousarray(np.moveaxis(moved[..., len(labels):], -1, 0)).astype(np.int32)
        new_boxes = boxes_from_layers(box_maps, boxes, axis_map)
        if not new_boxes:
            raise InputError("no box keeps a voxel after resampling to the plan's spacing: the boxes are too thin")
    new_sizes = _move_sizes(sizes, size_axis, axis_map, mapping, image, volume) if sizes else None
    return CanonicalCase(volume, new_labels, new_boxes, new_sizes, axis_map)


def _move_sizes(sizes: Sequence[SizeLabel], axis: int, axis_map: Sequence[int], mapping: np.ndarray,
                old: Volume, new: Volume) -> list[SizeLabel]:
    """Size labels on the slices of the canonical grid: each new slice takes the size of the old
    slice nearest to it, scaled from old to new in-plane pixels."""
    new_axis = axis_map[axis]
    old_ijk, new_ijk = 2 - axis, 2 - new_axis
    scale, shift = mapping[old_ijk, new_ijk], mapping[old_ijk, 3]
    in_plane = [2 - a for a in range(3) if a != axis]
    ratio = float(np.mean(np.asarray(old.spacing)[in_plane]) /
                  np.mean(np.asarray(new.spacing)[[2 - a for a in range(3) if a != new_axis]]))
    by_slice: dict[int, list[SizeLabel]] = {}
    for s in sizes:
        by_slice.setdefault(s.slice, []).append(s)
    out = []
    for k in range(new.shape[new_axis]):
        nearest = int(np.floor(scale * k + shift + 0.5))
        for s in by_slice.get(nearest, []):
            out.append(SizeLabel(k, s.label, float(s.size) * ratio))
    return out


def foreground_sample(array: np.ndarray, inside: np.ndarray, seed: int = 0) -> np.ndarray:
    """Up to 100 000 intensities drawn from the voxels of ``array`` where ``inside`` holds."""
    values = array[inside]
    if values.size > _SAMPLES:
        values = np.random.default_rng(seed).choice(values, _SAMPLES, replace=False)
    return values


def back_to_input(probabilities: np.ndarray, canonical: Volume, target: Volume, plan: Plan) -> np.ndarray:
    """Class probabilities ``(C, z, y, x)`` of :func:`canonicalize`'s image brought back onto the grid of
    ``target``, the image it was made from (:func:`to_input_grid`; as they are for a plan that keeps grids)."""
    return probabilities if plan.keeps_grid else to_input_grid(probabilities, canonical, target)


def to_input_grid(probabilities: np.ndarray, canonical: Volume, target: Volume) -> np.ndarray:
    """Class probabilities ``(C, z, y, x)`` on the canonical grid, resampled linearly (world
    coordinates) onto the grid of ``target``: ``(C, *target.shape)``. A voxel of ``target`` outside
    the canonical grid is background (class 0 probability 1)."""
    reference = sitk.Image([int(s) for s in target.shape[::-1]], sitk.sitkUInt8)
    reference.SetSpacing(target.spacing)
    reference.SetOrigin(target.origin)
    reference.SetDirection(target.direction)
    out = []
    for c, channel in enumerate(probabilities):
        image = canonical.with_array(np.ascontiguousarray(channel, np.float32)).to_sitk()
        outside = 1.0 if c == 0 else 0.0
        out.append(sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, outside,
                                                        sitk.sitkFloat32)))
    return np.stack(out)

"""Segmentation metrics: Dice (per volume and per slice), IoU, box IoU and HD95 in mm.

Conventions: two empty masks have Dice = IoU = 1 and HD95 = 0; exactly one empty mask gives Dice =
IoU = 0 and HD95 = inf.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks of any (equal) shape."""
    pred, ref = _pair(pred, ref)
    denom = int(pred.sum()) + int(ref.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & ref).sum()) / denom


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union (Jaccard) of two binary masks."""
    pred, ref = _pair(pred, ref)
    union = int((pred | ref).sum())
    return 1.0 if union == 0 else int((pred & ref).sum()) / union


def dice_per_slice(pred: np.ndarray, ref: np.ndarray, axis: int = 0) -> np.ndarray:
    """Dice of every slice along ``axis`` (empty vs empty = 1), shape ``(n_slices,)``."""
    pred, ref = _pair(pred, ref)
    other = tuple(a for a in range(pred.ndim) if a != axis)
    inter = (pred & ref).sum(axis=other).astype(np.float64)
    denom = pred.sum(axis=other) + ref.sum(axis=other)
    return np.where(denom == 0, 1.0, 2.0 * inter / np.maximum(denom, 1))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile symmetric Hausdorff distance between the surfaces, in mm.

    Args:
        pred, ref: binary masks ``(z, y, x)``.
        spacing: voxel size in the array's axis order (z, y, x) — i.e. ITK spacing reversed.
    """
    pred, ref = _pair(pred, ref)
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return float("inf")
    sp, sr = _surface(pred), _surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(np.percentile(np.concatenate([to_ref[sp], to_pred[sr]]), 95))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes, in voxels (0 when they do not overlap)."""
    lo = np.maximum(a.start, b.start)
    hi = np.minimum(a.stop, b.stop)
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = float(np.prod(a.size)) + float(np.prod(b.size)) - inter
    return inter / union if union > 0 else 0.0


def slice_box_iou(result: Sequence[Box], reference: Sequence[Box], axis: int) -> float:
    """Mean box IoU of two sets of slice boxes (one box per slice along ``axis``) over the slices of
    either set; a slice boxed in one set only scores 0 (a dropped or an extra slice)."""
    a = {b.start[axis]: b for b in result}
    b = {b.start[axis]: b for b in reference}
    slices = set(a) | set(b)
    return float(np.mean([box_iou(a[k], b[k]) if k in a and k in b else 0.0 for k in slices])) if slices else 0.0


def evaluate(pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float], label: int | None = None) -> dict:
    """Dice, IoU and HD95 (mm) of ``pred`` against ``ref``.

    Args:
        pred, ref: label volumes ``(z, y, x)``.
        spacing_xyz: ITK spacing (x, y, z) in mm.
        label: compare only this label value (default: any non-zero label as foreground).
    """
    p = pred == label if label is not None else pred > 0
    r = ref == label if label is not None else ref > 0
    if label is not None and not p.any() and not r.any():
        raise InputError(f"label {label} occurs in neither the prediction nor the reference (labels there: "
                         f"{sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})})")
    return {"dice": dice(p, r), "iou": iou(p, r), "hd95": hd95(p, r, tuple(spacing_xyz)[::-1])}

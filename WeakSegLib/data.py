"""Training samples from volumes and boxes (or masks), as padded in-memory tensors.

2D / 2.5D: every slice along ``axis`` of every case is one sample, boxes or not (slices without
boxes take part: their size bounds are [0, 0]). A sample's image holds ``context`` neighbouring
slices as channels (edge slices repeated at the volume border). 3D: every case is one sample.

Spatial sizes are padded at the far end (bottom/right/back) to a common multiple of
:data:`WeakSegLib.networks.SIZE_MULTIPLE`, so box indices need no shift; the padding is outside
every box and holds the volume's minimum intensity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from WeakSegLib.boxes import Box, rasterize
from WeakSegLib.errors import InputError
from WeakSegLib.networks import SIZE_MULTIPLE


@dataclass
class Case:
    """One training volume, already normalised.

    Attributes:
        image: ``(z, y, x)`` float32 normalised intensities.
        boxes: boxes on this grid (slice boxes along the training axis, or 3D boxes for 3D), or None.
        mask: ``(z, y, x)`` integer label volume (training labels for ``full``), or None.
        eval_mask: ``(z, y, x)`` reference labels used only to report Dice, never in a loss.
        name: shown in messages and reports.
    """

    image: np.ndarray
    boxes: list[Box] | None = None
    mask: np.ndarray | None = None
    eval_mask: np.ndarray | None = None
    name: str = "case"


@dataclass
class SampleSet:
    """Samples as tensors.

    Attributes:
        images: ``(N, k, *S)`` float32.
        labels: ``(N, *S)`` uint8 class indices (0 = background) from masks or filled boxes.
        box_mask: ``(N, C, *S)`` uint8, 1 inside any box of the class.
        boxes: ``(M, 2 + 2·nd)`` long ``[sample, class, lo_0, hi_0, …]``.
        eval_labels: ``(N, *S)`` uint8 reference class indices or None.
        valid: ``(N, *S)`` bool, False on padding.
        case_index: ``(N,)`` long, the case each sample comes from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    box_mask: torch.Tensor
    boxes: torch.Tensor
    eval_labels: torch.Tensor | None
    valid: torch.Tensor
    case_index: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "SampleSet":
        """All tensors on ``device`` (done once, so a training step moves nothing)."""
        return SampleSet(*[None if v is None else v.to(device) for v in
                           (self.images, self.labels, self.box_mask, self.boxes, self.eval_labels, self.valid,
                            self.case_index)])

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``index`` (long, CPU) with their boxes renumbered 0..len(index)-1."""
        remap = torch.full((len(self),), -1, dtype=torch.long, device=index.device)
        remap[index] = torch.arange(len(index), device=index.device)
        rows = remap[self.boxes[:, 0]]
        boxes = self.boxes[rows >= 0].clone()
        boxes[:, 0] = rows[rows >= 0]
        return {"image": self.images[index], "labels": self.labels[index].long(),
                "box_mask": self.box_mask[index], "boxes": boxes}


def flip_batch(batch: dict[str, torch.Tensor], axes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Mirror a batch along spatial ``axes`` (0 = first spatial axis): images, labels, box masks and
    the box coordinates together (a box ``[lo, hi)`` on an axis of size S becomes ``[S − hi, S − lo)``)."""
    if not axes:
        return batch
    out = {"image": batch["image"].flip([2 + a for a in axes]),
           "labels": batch["labels"].flip([1 + a for a in axes]),
           "box_mask": batch["box_mask"].flip([2 + a for a in axes])}
    boxes = batch["boxes"].clone()
    for a in axes:
        size = batch["image"].shape[2 + a]
        lo, hi = 2 + 2 * a, 3 + 2 * a
        boxes[:, lo], boxes[:, hi] = size - batch["boxes"][:, hi], size - batch["boxes"][:, lo]
    out["boxes"] = boxes
    return out


def padded_size(size: Sequence[int], multiple: int = SIZE_MULTIPLE) -> tuple[int, ...]:
    return tuple(int(math.ceil(s / multiple) * multiple) for s in size)


def stack_context(vol: np.ndarray, k: int) -> np.ndarray:
    """``(n, a, b)`` slices → ``(n, k, a, b)``: each slice with its (k−1)/2 neighbours on each side,
    the border slices repeated. ``k`` must be odd."""
    if k < 1 or k % 2 == 0:
        raise InputError(f"context (slices per input) must be an odd number ≥ 1, got {k}")
    half = k // 2
    idx = np.clip(np.arange(vol.shape[0])[:, None] + np.arange(-half, half + 1)[None, :], 0, vol.shape[0] - 1)
    return vol[idx]


def labels_from_mask(mask: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Label values → class indices 1..C (others → 0), uint8."""
    lut = np.zeros(int(max(int(mask.max()), max(label_values))) + 1, dtype=np.uint8)
    for i, v in enumerate(label_values):
        lut[int(v)] = i + 1
    return lut[mask]


def build_samples(cases: Sequence[Case], label_values: Sequence[int], *, spatial_dims: int = 2,
                  axis: int = 0, context: int = 1, pad_to: Sequence[int] | None = None) -> SampleSet:
    """Turn cases into padded sample tensors (see module docstring).

    Args:
        cases: training volumes with boxes and/or masks.
        label_values: label values of the foreground classes, in class order 1..C.
        spatial_dims: 2 (slices, 2D or 2.5D) or 3 (whole volumes).
        axis: slice axis for 2D.
        context: slices per 2D input (1 = 2D, 3/5 = 2.5D).
        pad_to: padded spatial size; default the largest case, rounded up to a multiple of 16.
    """
    if not cases:
        raise InputError("no training case given")
    C = len(label_values)
    per_images, per_labels, per_boxmask, per_eval, per_valid, per_boxes, per_case = [], [], [], [], [], [], []
    offset = 0
    views = []
    for case in cases:
        shape = case.image.shape
        labels = (labels_from_mask(case.mask, label_values) if case.mask is not None
                  else np.zeros(shape, np.uint8))
        if case.boxes is not None:
            box_mask = rasterize(case.boxes, shape, label_values)
            if case.mask is None:  # filled boxes as labels (box-mask recipe)
                for c in range(C):
                    labels[box_mask[c] > 0] = c + 1
        else:
            box_mask = np.zeros((C, *shape), np.uint8)
        ev = None if case.eval_mask is None else labels_from_mask(case.eval_mask, label_values)
        box_rows = []
        for box in case.boxes or []:
            if spatial_dims == 2:
                if box.kind != "slice" or box.axis != axis:
                    raise InputError(f"{case.name}: 2D training needs slice boxes along axis {axis}; "
                                     f"got {box.to_dict()} (cut 3D boxes first)")
                bounds = list(box.in_plane())
                sample = box.slice_index
            else:
                bounds = [v for a, b in zip(box.start, box.stop) for v in (a, b)]
                sample = 0
            box_rows.append([sample, label_values.index(box.label), *bounds])
        if spatial_dims == 2:
            img = stack_context(np.moveaxis(case.image, axis, 0), context)
            lab, bm = np.moveaxis(labels, axis, 0), np.moveaxis(box_mask, axis + 1, 0)
            ev = None if ev is None else np.moveaxis(ev, axis, 0)
        else:
            img, lab, bm = case.image[None, None], labels[None], box_mask[None]
            ev = None if ev is None else ev[None]
        boxes = np.asarray(box_rows, dtype=np.int64).reshape(-1, 2 + 2 * spatial_dims)
        boxes[:, 0] += offset
        offset += img.shape[0]
        views.append((img, lab, bm, ev, boxes, float(case.image.min())))
    spatial = np.max([v[0].shape[2:] for v in views], axis=0)
    target = tuple(int(s) for s in (pad_to or padded_size(spatial)))
    if any(t < s for t, s in zip(target, spatial)):
        raise InputError(f"pad_to {target} is smaller than the largest sample {tuple(spatial)}")
    has_eval = all(v[3] is not None for v in views)
    for i, (img, lab, bm, ev, boxes, fill) in enumerate(views):
        per_case.append(np.full(img.shape[0], i, dtype=np.int64))
        pad = [(0, 0), (0, 0)] + [(0, t - s) for t, s in zip(target, img.shape[2:])]
        per_images.append(np.pad(img, pad, constant_values=fill))
        per_labels.append(np.pad(lab, pad[1:]))
        per_boxmask.append(np.pad(bm, pad))
        valid = np.zeros((img.shape[0], *target), bool)
        valid[(slice(None), *[slice(0, s) for s in img.shape[2:]])] = True
        per_valid.append(valid)
        if has_eval:
            per_eval.append(np.pad(ev, pad[1:]))
        per_boxes.append(boxes)
    return SampleSet(
        images=torch.from_numpy(np.concatenate(per_images).astype(np.float32)),
        labels=torch.from_numpy(np.concatenate(per_labels)),
        box_mask=torch.from_numpy(np.concatenate(per_boxmask)),
        boxes=torch.from_numpy(np.concatenate(per_boxes)),
        eval_labels=torch.from_numpy(np.concatenate(per_eval)) if has_eval else None,
        valid=torch.from_numpy(np.concatenate(per_valid)),
        case_index=torch.from_numpy(np.concatenate(per_case)),
    )

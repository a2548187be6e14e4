"""Training samples from volumes and boxes (or masks), as padded in-memory tensors.

2D / 2.5D: every slice along ``axis`` of every case is one sample, boxes or not (slices without
boxes take part: their size bounds are [0, 0]). A sample's image holds ``context`` neighbouring
slices as channels (edge slices repeated at the volume border). 3D: every case is one sample.

Training labels are class indices with :data:`IGNORE` where nothing is known (no loss there):
masks and filled boxes label every pixel; partial labels (:mod:`WeakSegLib.io.partial`) only their
scribbles; a size-labelled case (:mod:`WeakSegLib.io.sizes`) labels the slices its mask covers, the
outside of its boxes and (as background) the slices measured empty for every class, and carries
per (slice, class) sizes for the size loss.

Mixed supervision: in a box recipe's cohort, a case that gives a mask and no boxes (an accepted
review, :mod:`WeakSegLib.io.review`) is a *mask case* (:attr:`Case.full`): its samples are labelled by
the mask and flagged ``full``, so the recipe's box terms skip them and cross-entropy on the mask
trains them (:meth:`WeakSegLib.engine.train.recipe.Recipe.loss`).

Spatial sizes are padded at the far end (bottom/right/back) to a common multiple of
:data:`WeakSegLib.nets.segmentation.SIZE_MULTIPLE`, so box indices need no shift; the padding is outside
every box and holds the volume's minimum intensity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box, rasterize
from WeakSegLib.io.labels import IGNORE, labels_from_mask, partial_to_labels
from WeakSegLib.io.sizes import SizeLabel
from WeakSegLib.nets.segmentation import SIZE_MULTIPLE

#: the spatial axes of each batch entry start at this dimension (``boxes`` and ``sizes`` have none)
SPATIAL_START = {"image": 2, "labels": 1, "box_mask": 2, "valid": 1, "reference": 1}


@dataclass
class Case:
    """One training volume, already normalised.

    Attributes:
        image: ``(z, y, x)`` float32 normalised intensities.
        boxes: boxes on this grid (slice boxes along the training axis, or 3D boxes for 3D), or None.
        mask: ``(z, y, x)`` integer label volume (training labels for ``full``), or None.
        eval_mask: ``(z, y, x)`` reference labels used only to report Dice, never in a loss.
        name: shown in messages and reports.
        sizes: per-slice size labels along the training axis (recipe ``size``); with them, ``mask``
            labels only the slices where it holds an object, and ``boxes`` mark background outside them.
        partial: ``(z, y, x)`` partial label volume (:mod:`WeakSegLib.io.partial`).
        reference: ``(z, y, x)`` reference masks for ACCL (any grid with the same in-plane size or
            smaller; the image's own grid for paired references).
        full: a mask case of a box recipe's cohort (module docstring): trained on ``mask`` by cross-entropy.
    """

    image: np.ndarray
    boxes: list[Box] | None = None
    mask: np.ndarray | None = None
    eval_mask: np.ndarray | None = None
    name: str = "case"
    sizes: list[SizeLabel] | None = None
    partial: np.ndarray | None = None
    reference: np.ndarray | None = None
    full: bool = False


@dataclass
class SampleSet:
    """Samples as tensors.

    Attributes:
        images: ``(N, k, *S)`` float32.
        labels: ``(N, *S)`` uint8 class indices (0 = background, :data:`IGNORE` = unknown).
        box_mask: ``(N, C, *S)`` uint8, 1 inside any box of the class.
        boxes: ``(M, 2 + 2·nd)`` long ``[sample, class, lo_0, hi_0, …]``.
        eval_labels: ``(N, *S)`` uint8 reference class indices (:data:`IGNORE` throughout for a case
            without an evaluation mask), or None when no case has one.
        valid: ``(N, *S)`` bool, False on padding.
        case_index: ``(N,)`` long, the case each sample comes from.
        sizes: ``(N, C)`` float32 size labels in pixels (< 0: none), or None without size labels.
        references: ``(R, *S)`` uint8 reference masks (class indices) for ACCL, or None.
        full: ``(N,)`` bool, the samples of mask cases (module docstring), or None when no case is one.
    """

    images: torch.Tensor
    labels: torch.Tensor
    box_mask: torch.Tensor
    boxes: torch.Tensor
    eval_labels: torch.Tensor | None
    valid: torch.Tensor
    case_index: torch.Tensor
    sizes: torch.Tensor | None = None
    references: torch.Tensor | None = None
    full: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def classes(self) -> int:
        """Foreground classes C."""
        return self.box_mask.shape[1]

    def to(self, device: torch.device) -> "SampleSet":
        """All tensors on ``device`` (done once, so a training step moves nothing)."""
        return SampleSet(*[None if v is None else v.to(device) for v in
                           (self.images, self.labels, self.box_mask, self.boxes, self.eval_labels, self.valid,
                            self.case_index, self.sizes, self.references, self.full)])

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``index`` (long, on the samples' device; a sample may appear more than once) with their
        boxes renumbered 0..len(index)-1, in the set's row order and then batch order (as
        :meth:`SliceStore.batch` gives them); ``sizes`` when the set has size labels, ``full`` when it has
        mask cases."""
        pairs = (self.boxes[:, 0, None] == index[None, :]).nonzero()  # (K, 2) [box row, batch position]
        boxes = self.boxes[pairs[:, 0]].clone()
        boxes[:, 0] = pairs[:, 1]
        out = {"image": self.images[index], "labels": self.labels[index].long(),
               "box_mask": self.box_mask[index], "boxes": boxes, "valid": self.valid[index]}
        if self.sizes is not None:
            out["sizes"] = self.sizes[index]
        if self.full is not None:
            out["full"] = self.full[index]
        return out

    @classmethod
    def of_batch(cls, batch: dict[str, torch.Tensor]) -> "SampleSet":
        """Samples that hold exactly ``batch`` (fields as :meth:`batch` gives them; one case; ``reference``
        masks when the batch has them): a recipe exercised on a hand-made batch."""
        n = batch["image"].shape[0]
        return cls(batch["image"], batch["labels"].to(torch.uint8), batch["box_mask"], batch["boxes"], None,
                   batch["valid"], torch.zeros(n, dtype=torch.long), batch.get("sizes"), batch.get("reference"),
                   batch.get("full"))

    def labelled(self) -> torch.Tensor:
        """``(N,)`` bool: samples with at least one labelled pixel (padding not counted)."""
        return ((self.labels != IGNORE) & self.valid).flatten(1).any(1)

    def boxed(self) -> torch.Tensor:
        """``(N,)`` bool on the CPU: samples that hold a box, or an object of a mask case's mask (the samples
        a batch's boxed share is drawn from, :func:`WeakSegLib.engine.train.loop.epoch_order`)."""
        out = torch.zeros(len(self), dtype=torch.bool)
        out[self.boxes[:, 0].cpu()] = True
        if self.full is not None:
            out |= (self.full & objects(self.labels)).cpu()
        return out


def objects(labels: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``(N,)`` bool: the samples of class-index ``labels`` ``(N, *S)`` that label an object pixel."""
    found = (labels > 0) & (labels != IGNORE)
    return found.reshape(len(found), -1).any(1)


def flip_batch(batch: dict[str, torch.Tensor], axes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Mirror a batch along spatial ``axes`` (0 = first spatial axis): every spatial entry and the box
    coordinates together (a box ``[lo, hi)`` on an axis of size S becomes ``[S − hi, S − lo)``)."""
    if not axes:
        return batch
    out = {k: v.flip([SPATIAL_START[k] + a for a in axes]) if k in SPATIAL_START else v for k, v in batch.items()}
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


def _size_case_labels(case: Case, label_values: Sequence[int], axis: int,
                      box_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and ``(slices, C)`` sizes of a size-labelled case (see :class:`Case`). A slice whose
    every class has size 0 holds no object: it is labelled background (CE) instead of a size target.

    Raises:
        InputError: a slice with both a mask and a size label, or a size label of a class on a slice
            whose boxes are all of other classes.
    """
    C = len(label_values)
    shape = case.image.shape
    labels = np.full(shape, IGNORE, np.uint8)
    sizes = np.full((shape[axis], C), -1.0, np.float32)
    lab = np.moveaxis(labels, axis, 0)  # a view: writes reach ``labels``
    boxed = np.moveaxis(box_mask, axis + 1, 1).reshape(C, shape[axis], -1).any(2)  # (C, slices)
    lab[boxed.any(0)] = 0  # boxed slices: background outside the boxes, unknown inside
    labels[box_mask.any(0)] = IGNORE
    masked = np.zeros(shape[axis], bool)
    if case.mask is not None:
        planes = np.moveaxis(labels_from_mask(case.mask, label_values), axis, 0)
        masked = planes.reshape(shape[axis], -1).any(1)
        lab[masked] = planes[masked]
    for s in case.sizes or []:
        if s.label not in label_values:
            continue
        c = label_values.index(s.label)
        if masked[s.slice]:
            raise InputError(f"{case.name}: slice {s.slice} has both a mask and a size label; give each slice one")
        if boxed[:, s.slice].any() and not boxed[c, s.slice]:
            others = [label_values[k] for k in range(C) if boxed[k, s.slice]]
            raise InputError(f"{case.name}: size label of label {s.label} on slice {s.slice}, whose boxes are "
                             f"of label(s) {others}: box the object the size measures")
        sizes[s.slice, c] = s.size
    empty = (sizes == 0).all(1)  # every class measured absent: the whole slice is background
    lab[empty] = 0
    sizes[empty] = -1
    return labels, sizes


def _reference_slices(case: Case, label_values: Sequence[int], axis: int, target: Sequence[int]) -> np.ndarray:
    """A case's reference masks as padded 2D class-index slices ``(n, *target)``."""
    ref = np.moveaxis(labels_from_mask(case.reference, label_values), axis, 0)
    if any(s > t for s, t in zip(ref.shape[1:], target)):
        raise InputError(f"{case.name}: reference masks have slices of shape {ref.shape[1:]}, larger than "
                         f"the training slices {tuple(target)}: give reference masks of the training shape")
    return np.pad(ref, [(0, 0)] + [(0, t - s) for t, s in zip(target, ref.shape[1:])])


@dataclass
class CaseSamples:
    """One case's samples before padding: its slices along the training axis (2D, 2.5D) or its volume
    (3D, one sample), with the labels, box rows, evaluation labels and sizes of each.

    Attributes:
        planes: ``(n, *S)`` float32 intensities (2.5D context is stacked when read: :meth:`images`).
        labels: ``(n, *S)`` uint8 class indices (:data:`IGNORE` = unknown).
        box_rows: ``(M, 2 + 2·nd)`` int64 ``[sample, class, lo_0, hi_0, …]``, samples counted from 0.
        eval_labels: ``(n, *S)`` uint8 reference class indices, or None.
        sizes: ``(n, C)`` float32 size labels (< 0: none), or None.
        fill: the intensity padding takes (the case's minimum).
        full: the samples of a mask case (:attr:`Case.full`).
    """

    planes: np.ndarray
    labels: np.ndarray
    box_rows: np.ndarray
    eval_labels: np.ndarray | None
    sizes: np.ndarray | None
    fill: float
    full: bool = False

    def images(self, context: int, spatial_dims: int) -> np.ndarray:
        """``(n, k, *S)``: each slice with its context slices as channels (2D), or ``(1, 1, *S)`` (3D)."""
        return stack_context(self.planes, context) if spatial_dims == 2 else self.planes[:, None]


def rows_to_mask(rows: np.ndarray | torch.Tensor, count: int, classes: int, spatial: Sequence[int]) -> np.ndarray:
    """``(count, classes, *spatial)`` uint8: 1 inside any box row ``[sample, class, lo, hi, …]``."""
    mask = np.zeros((count, classes, *spatial), np.uint8)
    for row in np.asarray(rows).tolist():
        mask[(row[0], row[1], *[slice(row[2 + 2 * a], row[3 + 2 * a]) for a in range(len(spatial))])] = 1
    return mask


def case_samples(case: Case, label_values: Sequence[int], *, spatial_dims: int = 2, axis: int = 0) -> CaseSamples:
    """The samples of one case (see :class:`Case` for what each label input gives)."""
    C = len(label_values)
    shape = case.image.shape
    box_mask = (rasterize(case.boxes, shape, label_values) if case.boxes is not None
                else np.zeros((C, *shape), np.uint8))
    sizes = None
    if case.sizes is not None:
        if spatial_dims != 2:
            raise InputError("size labels are per slice: train a 2D or 2.5D network")
        labels, sizes = _size_case_labels(case, label_values, axis, box_mask)
    elif case.partial is not None:
        labels = partial_to_labels(case.partial, label_values)
    elif case.mask is not None:
        labels = labels_from_mask(case.mask, label_values)
    else:  # filled boxes as labels (box-mask recipe)
        labels = np.zeros(shape, np.uint8)
        for c in range(C):
            labels[box_mask[c] > 0] = c + 1
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
    rows = np.asarray(box_rows, dtype=np.int64).reshape(-1, 2 + 2 * spatial_dims)
    if spatial_dims == 2:
        return CaseSamples(np.moveaxis(case.image, axis, 0), np.moveaxis(labels, axis, 0), rows,
                           None if ev is None else np.moveaxis(ev, axis, 0), sizes, float(case.image.min()), case.full)
    return CaseSamples(case.image[None], labels[None], rows, None if ev is None else ev[None], None,
                       float(case.image.min()), case.full)


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
    views = [case_samples(case, label_values, spatial_dims=spatial_dims, axis=axis) for case in cases]
    spatial = np.max([v.planes.shape[1:] for v in views], axis=0)
    target = tuple(int(s) for s in (pad_to or padded_size(spatial)))
    if any(t < s for t, s in zip(target, spatial)):
        raise InputError(f"pad_to {target} is smaller than the largest sample {tuple(spatial)}")
    has_eval = any(v.eval_labels is not None for v in views)  # a case without one: IGNORE throughout
    with_sizes = any(v.sizes is not None for v in views)  # then every sample gets a sizes row
    per = {key: [] for key in ("images", "labels", "box_mask", "eval", "valid", "boxes", "case", "sizes", "full")}
    offset = 0
    for i, view in enumerate(views):
        n = len(view.planes)
        pad = [(0, 0)] + [(0, t - s) for t, s in zip(target, view.planes.shape[1:])]
        per["images"].append(np.pad(view.images(context, spatial_dims), [(0, 0)] + pad, constant_values=view.fill))
        per["labels"].append(np.pad(view.labels, pad))
        per["box_mask"].append(rows_to_mask(view.box_rows, n, C, target))
        valid = np.zeros((n, *target), bool)
        valid[(slice(None), *[slice(0, s) for s in view.planes.shape[1:]])] = True
        per["valid"].append(valid)
        if has_eval:
            ev = view.eval_labels if view.eval_labels is not None else np.full(view.labels.shape, IGNORE, np.uint8)
            per["eval"].append(np.pad(ev, pad))
        rows = view.box_rows.copy()
        rows[:, 0] += offset
        per["boxes"].append(rows)
        per["case"].append(np.full(n, i, dtype=np.int64))
        per["full"].append(np.full(n, view.full))
        if with_sizes:
            per["sizes"].append(view.sizes if view.sizes is not None else np.full((n, C), -1.0, np.float32))
        offset += n
    with_refs = [c for c in cases if c.reference is not None]
    if with_refs and spatial_dims != 2:
        raise InputError("reference masks are used slice by slice: train a 2D or 2.5D network")
    references = [_reference_slices(c, label_values, axis, target) for c in with_refs]
    return SampleSet(
        images=torch.from_numpy(np.concatenate(per["images"]).astype(np.float32)),
        labels=torch.from_numpy(np.concatenate(per["labels"])),
        box_mask=torch.from_numpy(np.concatenate(per["box_mask"])),
        boxes=torch.from_numpy(np.concatenate(per["boxes"])),
        eval_labels=torch.from_numpy(np.concatenate(per["eval"])) if has_eval else None,
        valid=torch.from_numpy(np.concatenate(per["valid"])),
        case_index=torch.from_numpy(np.concatenate(per["case"])),
        sizes=torch.from_numpy(np.concatenate(per["sizes"])) if with_sizes else None,
        references=torch.from_numpy(np.concatenate(references)) if references else None,
        full=torch.from_numpy(np.concatenate(per["full"])) if any(v.full for v in views) else None,
    )

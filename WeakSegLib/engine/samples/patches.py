"""3D training patches: a batch of whole volumes cut to one patch each, drawn around the boxes.

Each sample of a batch gets a patch of the training patch size (voxels, ``(D, H, W)``) at a random
position; a share ``foreground`` of them (nnU-Net: one third) is placed so that it holds one of the
sample's boxes whole (a box larger than the patch: centred on it), or, without boxes, centred on a
random labelled object voxel. Every spatial field is cropped alike. The box constraints stay true on
a patch only for boxes it holds whole: those rows are kept (moved into patch coordinates); a box the
patch cuts loses its row (no tightness or size bound on a partial box) but keeps its voxels in
``box_mask``, so that emptiness never pushes them to background. The draw comes from a generator
seeded per step, so a resumed run cuts the same patches.
"""

from __future__ import annotations

from typing import Sequence

import torch

from WeakSegLib.engine.samples.data import SPATIAL_START
from WeakSegLib.io.labels import IGNORE


def _start_holding(lo: int, hi: int, size: int, extent: int, u: float) -> int:
    """A patch start along one axis such that ``[lo, hi)`` lies inside ``[start, start + size)`` (a
    random one of those when there are several), within ``[0, extent − size]``; centred on the box when
    it is longer than the patch."""
    if hi - lo >= size:
        return min(max((lo + hi - size) // 2, 0), extent - size)
    first, last = max(hi - size, 0), min(lo, extent - size)
    return first + int(u * (last - first + 1)) if last >= first else min(max(lo, 0), extent - size)


def patch_starts(batch: dict[str, torch.Tensor], patch: Sequence[int], generator: torch.Generator,
                 foreground: float) -> list[tuple[int, ...]]:
    """The start ``(d, h, w)`` of each sample's patch (module docstring)."""
    spatial = batch["image"].shape[2:]
    boxes = batch["boxes"]
    starts = []
    for b in range(batch["image"].shape[0]):
        draw = torch.rand(1 + 2 * len(spatial), generator=generator).tolist()
        mine = boxes[boxes[:, 0] == b]
        if draw[0] < foreground and len(mine):
            row = mine[int(draw[1] * len(mine))]
            starts.append(tuple(_start_holding(int(row[2 + 2 * a]), int(row[3 + 2 * a]), patch[a], spatial[a],
                                               draw[2 + a]) for a in range(len(spatial))))
            continue
        labelled = (batch["labels"][b] > 0) & (batch["labels"][b] != IGNORE)
        if draw[0] < foreground and labelled.any():
            voxels = labelled.nonzero()
            centre = voxels[int(draw[1] * len(voxels))].tolist()
            starts.append(tuple(min(max(c - p // 2, 0), s - p) for c, p, s in zip(centre, patch, spatial)))
            continue
        starts.append(tuple(int(u * (s - p + 1)) for u, p, s in zip(draw[2:], patch, spatial)))
    return starts


def crop_patches(batch: dict[str, torch.Tensor], patch: Sequence[int], generator: torch.Generator,
                 foreground: float = 1 / 3) -> dict[str, torch.Tensor]:
    """``batch`` (3D, fields as :meth:`WeakSegLib.engine.samples.data.SampleSet.batch`) cut to one patch per
    sample; a batch no larger than ``patch`` is returned as it is."""
    spatial = tuple(batch["image"].shape[2:])
    patch = tuple(min(p, s) for p, s in zip(patch, spatial))
    if patch == spatial:
        return batch
    starts = patch_starts(batch, patch, generator, foreground)
    out = {}
    for key, value in batch.items():
        if key not in SPATIAL_START:
            out[key] = value
            continue
        first = SPATIAL_START[key] - 1  # the axis after the batch axis where the spatial axes start
        out[key] = torch.stack([v[(slice(None),) * first + tuple(slice(s, s + p) for s, p in zip(start, patch))]
                                for v, start in zip(value, starts)])
    boxes = batch["boxes"].clone()
    if len(boxes):
        offset = torch.tensor(starts, dtype=boxes.dtype, device=boxes.device)[boxes[:, 0]]  # (M, 3)
        lo, hi = boxes[:, 2::2] - offset, boxes[:, 3::2] - offset
        inside = ((lo >= 0) & (hi <= torch.tensor(patch, device=boxes.device))).all(1)
        boxes[:, 2::2], boxes[:, 3::2] = lo, hi
        boxes = boxes[inside]
    out["boxes"] = boxes
    return out

"""Tightening the per-slice boxes of 3D boxes with a trained tightener (docs/methods.md §2).

Each slice box of each 3D box is covered with patches on a grid of stride ``stride`` (default
``patch / 4``: finer edges than the training tiling); the corrected box bounds the cells of the
positive patches (:func:`WeakSegLib.tightener.patches.positive_extent`), clipped to the original box.
Along each 3D box the slices are then made consistent (:func:`consistent_extents`):

1. slices without a positive patch at either end are dropped: the object does not reach them;
2. isolated detections are rejected: only the longest run of detected slices is kept, where a run
   may bridge at most ``max_gap`` undetected slices;
3. an undetected slice inside the run gets the box interpolated from its neighbours (one 3D box
   holds one object, which does not vanish between two slices);
4. each box coordinate is median-filtered over 3 neighbouring slices, which removes one-slice
   spikes and leaves monotone changes untouched.

A 3D box in which no patch is positive keeps its raw slice boxes, with a warning (an annotation is
never silently lost). Output: slice boxes in the box file format (:mod:`WeakSegLib.io.boxes`).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from WeakSegLib import events
from WeakSegLib.config import DEFAULT_DEVICE, TightenSettings, check_patch_geometry
from WeakSegLib.engine.predict.devices import resolve_device
from WeakSegLib.errors import CancelledError, InputError
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import Staged, check_writable, json_bytes
from WeakSegLib.io.boxes import Box, BoxSet, box_file_bytes, check_boxes_fit, load_boxes, split_box, validate_boxes
from WeakSegLib.io.card import TightenerCard
from WeakSegLib.io.volume import Volume, check_not_constant, read_volume
from WeakSegLib.tightener.model import classify, compatibility_warnings, load_tightener
from WeakSegLib.tightener.patches import (
    Extent,
    box_from_extent,
    extract_patches,
    largest_component,
    patch_grid,
    positive_extent,
    slice_plane,
)


def consistent_extents(extents: Sequence[Extent | None], max_gap: int = 2,
                       smooth: bool = True) -> tuple[list[Extent | None], dict]:
    """Make the per-slice extents of one 3D box consistent along the slices (module docstring).

    Args:
        extents: per slice (in order), ``(r0, r1, c0, c1)`` or None where nothing was detected.
        max_gap: undetected slices a run of detections may bridge.
        smooth: median-filter each coordinate over 3 slices.

    Returns:
        The extents (None = no box on that slice) and counts ``{"dropped_ends", "outliers",
        "filled", "smoothed"}``.
    """
    found = np.array([e is not None for e in extents])
    info = {"dropped_ends": 0, "outliers": 0, "filled": 0, "smoothed": 0}
    if not found.any():
        info["dropped_ends"] = len(extents)
        return [None] * len(extents), info
    idx = np.flatnonzero(found)
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    runs = np.split(idx, breaks + 1)
    main = max(runs, key=len)
    lo, hi = int(main[0]), int(main[-1]) + 1
    info["outliers"] = int(found.sum() - len(main))
    info["dropped_ends"] = int((~found[:lo]).sum() + (~found[hi:]).sum())
    coords = np.full((hi - lo, 4), np.nan)
    for k in range(lo, hi):
        if found[k]:
            coords[k - lo] = extents[k]
    missing = np.isnan(coords[:, 0])
    info["filled"] = int(missing.sum())
    if missing.any():
        known = np.flatnonzero(~missing)
        for c in range(4):
            coords[missing, c] = np.interp(np.flatnonzero(missing), known, coords[known, c])
    coords = np.rint(coords).astype(np.int64)
    if smooth and len(coords) >= 3:
        smoothed = ndimage.median_filter(coords, size=(3, 1), mode="nearest")
        info["smoothed"] = int((smoothed != coords).any(axis=1).sum())
        coords = smoothed
    out: list[Extent | None] = [None] * len(extents)
    for k in range(lo, hi):
        out[k] = tuple(int(v) for v in coords[k - lo])  # type: ignore[assignment]
    return out, info


def tighten(model: str | os.PathLike | tuple[torch.nn.Module, TightenerCard], volume: Volume, boxset: BoxSet,
            settings: TightenSettings | None = None, *, device: str = DEFAULT_DEVICE, on_event: EventSink | None = None,
            should_stop: Callable[[], bool] | None = None) -> tuple[BoxSet, dict]:
    """Tightened slice boxes for the boxes of ``boxset`` on ``volume``.

    3D boxes are cut along the tightener's axis and made consistent; slice boxes (on that axis) are
    tightened one by one. Returns the new box set (same labels and geometry) and a report:
    ``{"warnings": [...], "boxes": [{"box", "label", "slices_in", "slices_out", "dropped_ends",
    "outliers", "filled", "smoothed", "fallback"}, ...], "patches": N}``.

    Raises:
        InputError: no boxes, a box outside the volume or empty (named), boxes made on another grid,
            a slice box across another axis.
    """
    settings = settings or TightenSettings()
    emit = on_event or events.ignore
    stop = should_stop or (lambda: False)
    network, card = load_tightener(model) if isinstance(model, (str, os.PathLike)) else model
    if not boxset.boxes:
        raise InputError("the box list is empty: draw at least one box to tighten")
    validate_boxes(boxset.boxes, volume.shape)
    if boxset.geometry:
        check_boxes_fit(boxset, volume.geometry(), "image")
    axis = card.input.axis if settings.axis is None else settings.axis
    patch, context = card.patch.size, card.network.context
    stride = settings.stride or card.patch.stride
    extent_rule = settings.extent or card.patch.extent
    threshold = card.patch.threshold if settings.threshold is None else settings.threshold
    check_patch_geometry(patch, stride)
    if settings.component not in ("largest", "all"):
        raise InputError(f"component must be 'largest' or 'all', got {settings.component!r}")
    warnings = compatibility_warnings(card, volume)
    for w in warnings:
        emit(events.warning(w))
    dev = resolve_device(device)
    network = network.to(dev)
    array = card.input.normalization.apply(volume.array)
    pad = float(array.min())

    for i, box in enumerate(boxset.boxes):
        if box.kind == "slice" and box.axis != axis:
            raise InputError(f"box #{i} is a slice box across axis {box.axis}; the tightener works on axis {axis}")
    emit(events.start(kind="tighten", boxes=len(boxset.boxes)))
    out_boxes: list[Box] = []
    report: dict = {"warnings": warnings, "boxes": [], "patches": 0}
    for i, box in enumerate(boxset.boxes):  # one box at a time: memory ∝ the largest box
        if stop():
            raise CancelledError(f"tightening cancelled before box #{i}; nothing was written")
        pieces = split_box(box, axis)
        cells, chunks = [], []
        for sb in pieces:
            plane, extent = slice_plane(array, sb)
            cells.append((patch_grid(extent, patch, stride), extent))
            chunks.append(extract_patches(plane, cells[-1][0], pad, context))
        prob = classify(network, np.concatenate(chunks), dev) > threshold
        report["patches"] += len(prob)
        positive = prob.reshape(len(pieces), *cells[0][0].shape)  # the slices of a box share one grid
        if settings.component == "largest":
            positive = largest_component(positive, settings.max_gap)
        extents = [positive_extent(g, pos.ravel(), extent, extent_rule) for (g, extent), pos in zip(cells, positive)]
        if box.kind == "3d":
            extents, info = consistent_extents(extents, settings.max_gap, settings.smooth)
        else:
            info = {"dropped_ends": int(extents[0] is None), "outliers": 0, "filled": 0, "smoothed": 0}
        kept = [box_from_extent(sb, e) for sb, e in zip(pieces, extents) if e is not None]
        fallback = not kept
        if fallback:
            kept = pieces
            msg = (f"box #{i} (label {box.label}): no patch was classified as object, so its "
                   f"{len(pieces)} slice box(es) are kept untightened")
            warnings.append(msg)
            emit(events.warning(msg))
        out_boxes.extend(kept)
        report["boxes"].append({"box": i, "label": box.label, "slices_in": len(pieces), "slices_out": len(kept),
                                **info, "fallback": fallback})
        emit(events.progress(i + 1, len(boxset.boxes)))
    result = BoxSet(out_boxes, boxset.shape, dict(boxset.labels), boxset.geometry or volume.geometry())
    return result.validate(), report


def tighten_file(model_dir: str | os.PathLike, image: str | os.PathLike, boxes: str | os.PathLike,
                 out: str | os.PathLike, settings: TightenSettings | None = None, *, device: str = DEFAULT_DEVICE,
                 on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                 report_out: str | os.PathLike | None = None) -> dict:
    """:func:`tighten` from and to files: the box file ``out`` and, with ``report_out``, the report as
    JSON. Both locations are checked before any work and written together, atomically. Returns the
    report with ``"out"`` added."""
    for path in [out] + ([report_out] if report_out is not None else []):
        check_writable(path, "output file")
    model = load_tightener(model_dir)
    volume = read_volume(image)
    check_not_constant(volume.array, str(image), "tighten boxes on")
    boxset = load_boxes(boxes)
    result, report = tighten(model, volume, boxset, settings, device=device, on_event=on_event,
                             should_stop=should_stop)
    report = {**report, "out": str(out)}
    with Staged() as staged:
        staged.write_bytes(out, box_file_bytes(result))
        if report_out is not None:
            staged.write_bytes(report_out, json_bytes(report))
    return report

"""Tighten the per-slice boxes of a 3D box with a patch classifier (METHODS.md §2, Redekop 2021).

**Training** (:func:`train_tightener`) on a few fully labelled volumes: every object of a mask gets
its tight 3D box widened by ``margin`` voxels (so the end slices hold little or no object, as a
hand-drawn box does); the box is cut into slices along ``axis``; each slice box is tiled with
``patch`` × ``patch`` patches at stride ``patch / 2`` (:mod:`WeakSegLib.patches`), labelled 1 when
the box's object covers more than half of the patch. The classifier may also see ``context`` voxels
of image around each patch (default 0: the paper's p × p input). A binary classifier
(:mod:`WeakSegLib.classifier`) learns them with class-weighted cross-entropy and Adam (1e-4), in
the engine's epoch loop (events, cancel, checkpoint, resume). A random ``val_fraction`` of the
slices is held out; its patch accuracy goes into the card.

**Tightening** (:func:`tighten`): each slice box of each 3D box is covered with patches on a grid
of stride ``stride`` (default ``patch / 4``: finer edges than the training tiling); the corrected
box bounds the cells of the positive patches (:func:`WeakSegLib.patches.positive_extent`), clipped
to the original box. Along each 3D box the slices are then made consistent
(:func:`consistent_extents`):

1. slices without a positive patch at either end are dropped: the object does not reach them;
2. isolated detections are rejected: only the longest run of detected slices is kept, where a run
   may bridge at most ``max_gap`` undetected slices;
3. an undetected slice inside the run gets the box interpolated from its neighbours (one 3D box
   holds one object, which does not vanish between two slices);
4. each box coordinate is median-filtered over 3 neighbouring slices, which removes one-slice
   spikes and leaves monotone changes untouched.

A 3D box in which no patch is positive keeps its raw slice boxes, with a warning (an annotation is
never silently lost). Output: slice boxes in the box file format (:mod:`WeakSegLib.boxes`).

A tightener is a model folder (``model.pt`` + ``model.json``, format ``weakseg-tightener``)::

    {"format": "weakseg-tightener", "version": 1,
     "network": {"name": "light", "patch": 16, "context": 0},
     "patch": {"size": 16, "train_stride": 8, "stride": 4, "extent": "cells", "rule": "object > 50 %"},
     "input": {"axis": 1, "spacing": [sx, sy, sz], "normalization": {...},
               "intensity": {"p1": …, "p50": …, "p99": …}},
     "training": {...TightenerConfig..., "cases": [...], "objects": 4, "patches": {...}},
     "metrics": {"val_accuracy": 0.95, "val_balanced_accuracy": 0.94}, "history": [...]}

Applied to an image whose in-plane spacing differs by more than 25 % from the card's, or whose
intensities look like another modality (CT-like vs not, or a very different range), it warns.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from WeakSegLib.boxes import (Box, BoxSet, boxes_from_mask, check_boxes_fit, load_boxes, save_boxes, split_box,
                              validate_boxes)
from WeakSegLib.classifier import CLASSIFIERS, PatchClassifier
from WeakSegLib.devices import resolve_device
from WeakSegLib.errors import CancelledError, InputError, ModelError
from WeakSegLib.inference import normalize_like_card
from WeakSegLib.loop import EventSink, LoopSettings, run_epochs
from WeakSegLib.model import CARD, load_weights, read_card, save_model
from WeakSegLib.patches import (check_patch_geometry, extract_patches, largest_component, patch_grid, patch_labels,
                                positive_extent)
from WeakSegLib.volume import Volume, check_same_grid, normalize, read_label_volume, read_volume

TIGHTENER_FORMAT = "weakseg-tightener"
CHECKPOINT = "checkpoint.pt"
SPACING_TOLERANCE = 0.25
Extent = tuple[int, int, int, int]


@dataclass
class TightenerCase:
    """A fully labelled training volume: image and label mask file paths."""

    image: str
    mask: str


@dataclass
class TightenerConfig:
    """Tightener training settings (defaults: METHODS.md §2, with a light network for CPUs).

    ``threshold_rule`` picks the use-time probability threshold on the held-out slices: best
    ``"balanced"`` accuracy (mean of both classes' recalls) or best plain ``"accuracy"`` (tighter
    boxes on blob-like objects, but it can silence a rare object class).
    ``context`` voxels of image on every side of a patch are shown to the classifier with it (the label
    stays the patch's own; :class:`WeakSegLib.classifier.PatchClassifier` pools only over the patch).
    ``margin`` voxels widen each object's 3D box on every side before it is cut into slices;
    ``labels`` restricts the objects to these label values; ``per_component`` makes one object per
    connected component instead of one per label.
    """

    patch: int = 16
    train_stride: int | None = None
    context: int = 0
    network: str = "light"
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    margin: int = 4
    axis: int = 0
    labels: list[int] | None = None
    per_component: bool = False
    normalization: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: tuple[float, float] = (-1000.0, 1000.0)
    val_fraction: float = 0.2
    threshold_rule: str = "balanced"
    augment: bool = True
    seed: int = 0
    device: str = "auto"

    @property
    def stride(self) -> int:
        return self.train_stride or self.patch // 2

    def validate(self) -> TightenerConfig:
        check_patch_geometry(self.patch, self.stride)
        if self.network not in CLASSIFIERS:
            raise InputError(f"unknown patch classifier {self.network!r}; choose one of {', '.join(CLASSIFIERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be ≥ 1")
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {self.axis}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.threshold_rule not in ("balanced", "accuracy"):
            raise InputError(f"threshold_rule must be 'balanced' or 'accuracy', got {self.threshold_rule!r}")
        if self.context < 0:
            raise InputError(f"context must be ≥ 0 pixels, got {self.context}")
        if self.margin < 0:
            raise InputError(f"margin must be ≥ 0, got {self.margin}")
        return self

    def fingerprint(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("epochs", "device"):
            d.pop(key)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def slice_plane(array: np.ndarray, box: Box) -> tuple[np.ndarray, Extent]:
    """The 2D slice of ``array`` (z, y, x) a slice box lies on, and the box in that plane as
    ``(r0, r1, c0, c1)`` (rows, columns = the two other axes in array order)."""
    return np.take(array, box.slice_index, axis=box.axis), box.in_plane()


def box_from_extent(box: Box, extent: Extent) -> Box:
    """The slice box ``box`` with its in-plane bounds replaced by ``extent``."""
    a, b = (ax for ax in range(3) if ax != box.axis)
    start, stop = list(box.start), list(box.stop)
    start[a], stop[a], start[b], stop[b] = extent
    return Box(tuple(start), tuple(stop), box.label, "slice", box.axis)  # type: ignore[arg-type]


def intensity_profile(array: np.ndarray) -> dict[str, float]:
    """1st, 50th and 99th percentiles of the raw intensities (for the modality check)."""
    p1, p50, p99 = np.percentile(array, [1, 50, 99])
    return {"p1": float(p1), "p50": float(p50), "p99": float(p99)}


def _ct_like(profile: dict) -> bool:
    return profile["p1"] < -500.0  # air in Hounsfield units


def compatibility_warnings(card: dict, volume: Volume) -> list[str]:
    """Reasons to doubt that the tightener of ``card`` suits ``volume`` (empty list when none)."""
    out = []
    axis = int(card["input"]["axis"])
    itk_axes = [2 - ax for ax in range(3) if ax != axis]  # in-plane axes in ITK (x, y, z) order
    trained = np.asarray(card["input"]["spacing"], float)[itk_axes]
    given = np.asarray(volume.spacing, float)[itk_axes]
    ratio = given / trained
    if np.any(np.abs(ratio - 1.0) > SPACING_TOLERANCE):
        out.append(f"in-plane spacing {given.round(3).tolist()} mm differs from the tightener's training spacing "
                   f"{trained.round(3).tolist()} mm by more than {SPACING_TOLERANCE:.0%}: patches cover another "
                   "physical size; resample the image or train a tightener at this spacing")
    ref = card["input"].get("intensity")
    if ref:
        here = intensity_profile(volume.array)
        if _ct_like(ref) != _ct_like(here):
            kinds = ("CT (Hounsfield units)", "not CT")
            out.append(f"the image looks {kinds[not _ct_like(here)]} but the tightener was trained on "
                       f"{kinds[not _ct_like(ref)]} images: it is probably another modality")
        else:
            span_ref, span = ref["p99"] - ref["p1"], here["p99"] - here["p1"]
            if span_ref > 0 and span > 0 and not 0.25 <= span / span_ref <= 4.0:
                out.append(f"the image's intensity range ({here['p1']:.4g}…{here['p99']:.4g}) is far from the "
                           f"training images' ({ref['p1']:.4g}…{ref['p99']:.4g}): another modality or sequence?")
    return out


# ----------------------------------------------------------------------------------------- training

@dataclass
class PatchSet:
    """Training patches. ``images`` ``(N, 1, p, p)`` float32, ``labels`` ``(N,)`` long, ``groups``
    ``(N,)`` long: one id per slice box (the unit of the validation split)."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    objects: int = 0
    spacing: list[float] = field(default_factory=list)
    intensity: dict = field(default_factory=dict)


def training_patches(cases: Sequence[TightenerCase], config: TightenerConfig) -> PatchSet:
    """Read the cases and cut the labelled patches of every object's widened 3D box."""
    if not cases:
        raise InputError("no training case given: pass at least one --image with its --mask")
    images, labels, groups, spacings, profiles = [], [], [], [], []
    objects = group = 0
    for case in cases:
        image = read_volume(case.image)
        mask = read_label_volume(case.mask)
        check_same_grid(image, mask, str(case.image), str(case.mask))
        try:
            boxes = boxes_from_mask(mask.array, "3d", config.axis, config.margin, config.labels, config.per_component)
        except InputError as exc:
            raise InputError(f"{case.mask}: {exc}") from exc
        array = normalize(image.array, config.normalization, percentiles=tuple(config.percentiles),
                          window=tuple(config.window))
        pad = float(array.min())
        spacings.append(image.spacing)
        profiles.append(intensity_profile(image.array))
        for box in boxes:
            objects += 1
            is_object = mask.array == box.label
            for sb in split_box(box, config.axis):
                plane, extent = slice_plane(array, sb)
                obj, _ = slice_plane(is_object, sb)
                grid = patch_grid(extent, config.patch, config.stride)
                images.append(extract_patches(plane, grid, pad, config.context))
                labels.append(patch_labels(obj, grid))
                groups.append(np.full(len(grid.cells), group))
                group += 1
    y = np.concatenate(labels)
    if not y.any():
        raise InputError(f"no patch of {config.patch}×{config.patch} pixels is more than half covered by an object: "
                         "the objects are too small for this patch size (try --patch-size 8 or a finer image)")
    if y.all():
        raise InputError("every patch is object: no background to learn from (use a margin > 0)")
    return PatchSet(torch.from_numpy(np.concatenate(images)[:, None]), torch.from_numpy(y),
                    torch.from_numpy(np.concatenate(groups)), objects,
                    [float(v) for v in np.mean(spacings, axis=0)],
                    {k: float(np.mean([p[k] for p in profiles])) for k in profiles[0]})


def _split(groups: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of training and validation patches; whole slices go to validation."""
    n_groups = int(groups.max()) + 1
    held = torch.rand(n_groups, generator=torch.Generator().manual_seed(seed)) < fraction
    if fraction > 0 and not held.any():
        held[n_groups // 2] = True
    if held.all():
        held[0] = False
    val = held[groups]
    return torch.nonzero(~val).flatten(), torch.nonzero(val).flatten()


def _augment(x: torch.Tensor, epoch: int, batch: int, seed: int) -> torch.Tensor:
    """One of the 8 flips/rotations by 90° of the square patches, drawn from (seed, epoch, batch)."""
    code = int(torch.randint(8, (1,), generator=torch.Generator().manual_seed((seed * 100003 + epoch) * 10007 + batch)))
    x = torch.rot90(x, code % 4, dims=(2, 3))
    return x.flip(3) if code >= 4 else x


@torch.no_grad()
def classify(network: torch.nn.Module, patches: np.ndarray | torch.Tensor, device: torch.device,
             batch_size: int = 2048) -> np.ndarray:
    """Object probability ``(N,)`` of patches ``(N, p, p)`` or ``(N, 1, p, p)``."""
    x = torch.as_tensor(patches, dtype=torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    network.eval()
    out = [torch.softmax(network(x[i:i + batch_size].to(device)), 1)[:, 1].cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _accuracy(prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    pred = prob > threshold
    recalls = [float((pred[labels == c] == c).mean()) for c in (0, 1) if (labels == c).any()]
    return {"val_accuracy": float((pred == labels).mean()), "val_balanced_accuracy": float(np.mean(recalls))}


def train_tightener(cases: Sequence[TightenerCase], config: TightenerConfig, out_dir: str | os.PathLike, *,
                    on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                    resume: bool = True) -> dict:
    """Train a box tightener and write its model folder (card: module docstring); returns the card.

    ``on_event``, ``should_stop`` and ``resume`` behave as in :func:`WeakSegLib.training.train`.
    """
    config.validate()
    emit = on_event or (lambda e: None)
    out = Path(out_dir)
    device = resolve_device(config.device)
    data = training_patches(cases, config)
    train_idx, val_idx = _split(data.groups, config.val_fraction, config.seed)
    x, y = data.images.to(device), data.labels.to(device)
    counts = torch.bincount(data.labels[train_idx], minlength=2).clamp(min=1).float()
    weights = (counts.sum() / (2.0 * counts)).to(device)
    torch.manual_seed(config.seed)
    network = PatchClassifier(config.network, config.patch, config.context).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    train_on = train_idx.to(device)

    def step(index: torch.Tensor, epoch: int, b: int) -> dict[str, torch.Tensor]:
        rows = train_on[index]
        images = _augment(x[rows], epoch, b, config.seed) if config.augment else x[rows]
        loss = torch.nn.functional.cross_entropy(network(images), y[rows], weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    def epoch_info(epoch: int, last: bool) -> dict:
        if len(val_idx) == 0:
            return {}
        return _accuracy(classify(network, data.images[val_idx], device), data.labels[val_idx].numpy())

    positives = int(data.labels.sum())
    patch_counts = {"total": len(data.labels), "positive": positives, "train": len(train_idx),
                    "validation": len(val_idx)}
    history = run_epochs(network, optimizer, LoopSettings(len(train_idx), config.batch_size, config.epochs, config.seed),
                         step, checkpoint=out / CHECKPOINT, device=device,
                         fingerprint={**config.fingerprint(), "cases": [dataclasses.asdict(c) for c in cases]},
                         epoch_info=epoch_info, emit=emit, should_stop=should_stop, resume=resume,
                         start_info={"kind": "tighten-train", "out": str(out), "objects": data.objects,
                                     "patches": patch_counts}, defaults=TightenerConfig().fingerprint())
    card = {
        "network": {"name": config.network, "patch": config.patch, "context": config.context},
        "patch": {"size": config.patch, "train_stride": config.stride, "stride": max(1, config.patch // 4),
                  "extent": "cells", "rule": "object > 50 % of the patch", "threshold": 0.5},
        "input": {"axis": config.axis, "spacing": data.spacing, "intensity": data.intensity,
                  "normalization": {"method": config.normalization, "percentiles": list(config.percentiles),
                                    "window": list(config.window)}},
        "training": {**dataclasses.asdict(config), "cases": [dataclasses.asdict(c) for c in cases],
                     "objects": data.objects, "patches": patch_counts},
        "metrics": {k: history[-1][k] for k in ("val_accuracy", "val_balanced_accuracy", "loss") if k in history[-1]},
        "history": history,
    }
    if len(val_idx):
        prob = classify(network, data.images[val_idx], device)
        truth = data.labels[val_idx].numpy()
        thresholds = np.round(np.arange(0.05, 0.96, 0.05), 2)
        score = "val_balanced_accuracy" if config.threshold_rule == "balanced" else "val_accuracy"
        best = max(thresholds, key=lambda th: _accuracy(prob, truth, th)[score] - 1e-6 * abs(th - 0.5))
        card["patch"]["threshold"] = float(best)
        card["metrics"].update({f"{k}_at_threshold": v for k, v in _accuracy(prob, truth, best).items()})
    save_model(out, network, card, TIGHTENER_FORMAT)
    emit({"event": "done", "model": str(out), "card": str(out / CARD), "metrics": card["metrics"]})
    return card


def load_tightener(folder: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Classifier (eval mode, CPU) and card of a tightener folder; :class:`ModelError` if unusable."""
    card = read_card(folder, TIGHTENER_FORMAT)
    try:
        network = PatchClassifier(card["network"]["name"], int(card["network"]["patch"]),
                                  int(card["network"].get("context", 0)))
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise ModelError(f"{Path(folder) / CARD}: network section {card.get('network')} is invalid ({exc})") from exc
    return load_weights(folder, network, card), card


# ---------------------------------------------------------------------------------------- tightening

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


@dataclass
class TightenSettings:
    """Use-time settings; None takes the card's value. ``threshold`` on the object probability (the
    card's is the one with the best balanced accuracy — mean of the two classes' recalls — on the
    held-out slices; plain accuracy would favour the far more frequent background patches);
    ``component`` ``"largest"`` keeps only the largest connected group of positive cells of a box
    (in 3D over its slices: one box holds one connected object, other groups are look-alikes such
    as a neighbouring organ or air), ``"all"`` bounds every positive cell (the paper)."""

    stride: int | None = None
    extent: str | None = None
    component: str = "largest"
    threshold: float | None = None
    max_gap: int = 2
    smooth: bool = True
    axis: int | None = None


def tighten(model: str | os.PathLike | tuple[torch.nn.Module, dict], volume: Volume, boxset: BoxSet,
            settings: TightenSettings | None = None, *, device: str = "auto", on_event: EventSink | None = None,
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
    emit = on_event or (lambda e: None)
    stop = should_stop or (lambda: False)
    network, card = load_tightener(model) if isinstance(model, (str, os.PathLike)) else model
    if not boxset.boxes:
        raise InputError("the box list is empty: draw at least one box to tighten")
    validate_boxes(boxset.boxes, volume.shape)
    if boxset.geometry:
        check_boxes_fit(boxset, volume.geometry(), "image")
    axis = int(card["input"]["axis"] if settings.axis is None else settings.axis)
    patch = int(card["patch"]["size"])
    context = int(card["network"].get("context", 0))
    stride = int(settings.stride or card["patch"].get("stride", patch // 4))
    extent_rule = settings.extent or card["patch"].get("extent", "cells")
    threshold = float(card["patch"].get("threshold", 0.5) if settings.threshold is None else settings.threshold)
    check_patch_geometry(patch, stride)
    if settings.component not in ("largest", "all"):
        raise InputError(f"component must be 'largest' or 'all', got {settings.component!r}")
    warnings = compatibility_warnings(card, volume)
    for w in warnings:
        emit({"event": "warning", "message": w})
    dev = resolve_device(device)
    network = network.to(dev)
    array = normalize_like_card(volume.array, card)
    pad = float(array.min())

    for i, box in enumerate(boxset.boxes):
        if box.kind == "slice" and box.axis != axis:
            raise InputError(f"box #{i} is a slice box across axis {box.axis}; the tightener works on axis {axis}")
    emit({"event": "start", "kind": "tighten", "boxes": len(boxset.boxes)})
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
            emit({"event": "warning", "message": msg})
        out_boxes.extend(kept)
        report["boxes"].append({"box": i, "label": box.label, "slices_in": len(pieces), "slices_out": len(kept),
                                **info, "fallback": fallback})
        emit({"event": "progress", "done": i + 1, "of": len(boxset.boxes)})
    result = BoxSet(out_boxes, boxset.shape, dict(boxset.labels), boxset.geometry or volume.geometry())
    return result.validate(), report


def tighten_file(model_dir: str | os.PathLike, image: str | os.PathLike, boxes: str | os.PathLike,
                 out: str | os.PathLike, settings: TightenSettings | None = None, *, device: str = "auto",
                 on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """:func:`tighten` from and to files; the box file is written atomically. Returns the report
    with ``"out"`` added."""
    volume = read_volume(image)
    boxset = load_boxes(boxes)
    result, report = tighten(model_dir, volume, boxset, settings, device=device, on_event=on_event,
                             should_stop=should_stop)
    save_boxes(result, out)
    return {**report, "out": str(out)}

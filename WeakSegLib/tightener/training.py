"""Training a box tightener (docs/methods.md §2, Redekop & Chernyavskiy 2021).

On a few fully labelled volumes: every object of a mask gets its tight 3D box widened by ``margin``
voxels (so the end slices hold little or no object, as a hand-drawn box does); the box is cut into
slices along ``axis``; each slice box is tiled with ``patch`` × ``patch`` patches at stride
``patch / 2`` (:mod:`WeakSegLib.tightener.patches`), labelled 1 when the box's object covers more
than half of the patch. The classifier may also see ``context`` voxels of image around each patch
(default 0: the paper's p × p input). A binary classifier (:mod:`WeakSegLib.nets.classifier`)
learns them with class-weighted cross-entropy and Adam (1e-4), in the engine's epoch loop (events,
cancel, checkpoint, resume). A random ``val_fraction`` of the slices is held out; its patch accuracy
and the probability threshold that is best by the ``threshold_rule`` go into the card
(:class:`WeakSegLib.io.card.TightenerCard`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from WeakSegLib import events
from WeakSegLib.config import TightenerCase, TightenerConfig
from WeakSegLib.engine.predict.devices import resolve_device
from WeakSegLib.engine.predict.model import save_model
from WeakSegLib.engine.train.loop import Checkpoint, LoopSettings, Reporting, run_epochs, step_generator
from WeakSegLib.errors import InputError
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import check_output_folder
from WeakSegLib.io.boxes import boxes_from_mask, split_box
from WeakSegLib.io.canonical import IntensityMapping
from WeakSegLib.io.card import CARD, ClassifierSpec, PatchSpec, TightenerCard, TightenerInput
from WeakSegLib.io.lock import FolderLock
from WeakSegLib.io.volume import check_same_grid, read_label_volume, read_volume
from WeakSegLib.nets.classifier import PatchClassifier
from WeakSegLib.tightener.model import classify, intensity_profile
from WeakSegLib.tightener.patches import extract_patches, patch_grid, patch_labels, slice_plane

CHECKPOINT = "checkpoint.pt"
#: probability thresholds tried on the held-out slices
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


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
        array = IntensityMapping.of(config).apply(image.array)
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
    code = int(torch.randint(8, (1,), generator=step_generator(seed, epoch, batch)))
    x = torch.rot90(x, code % 4, dims=(2, 3))
    return x.flip(3) if code >= 4 else x


def _accuracy(prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    pred = prob > threshold
    recalls = [float((pred[labels == c] == c).mean()) for c in (0, 1) if (labels == c).any()]
    return {"val_accuracy": float((pred == labels).mean()), "val_balanced_accuracy": float(np.mean(recalls))}


def best_threshold(prob: np.ndarray, labels: np.ndarray, rule: str) -> float:
    """The threshold of :data:`THRESHOLDS` with the best ``rule`` score (``"balanced"``: mean of both
    classes' recalls; ``"accuracy"``) on held-out patches; ties go to the one nearest 0.5."""
    score = "val_balanced_accuracy" if rule == "balanced" else "val_accuracy"
    return float(max(THRESHOLDS, key=lambda th: _accuracy(prob, labels, th)[score] - 1e-6 * abs(th - 0.5)))


def train_tightener(cases: Sequence[TightenerCase], config: TightenerConfig, out_dir: str | os.PathLike, *,
                    on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                    resume: bool = True) -> TightenerCard:
    """Train a box tightener and write its model folder; returns its card.

    ``on_event``, ``should_stop`` and ``resume`` behave as in :func:`WeakSegLib.engine.train.training.train`.
    """
    config.validate()
    emit = on_event or events.ignore
    out = check_output_folder(out_dir, "tightener folder")
    device = resolve_device(config.device)
    data = training_patches(cases, config)
    with FolderLock(out, "tightener training"):  # inputs are fine: from here on the folder is this run's
        card = _train_in(out, cases, config, data, device, emit, should_stop, resume)
    emit(events.done(model=str(out), card=str(out / CARD), metrics=card.metrics))
    return card


def _train_in(out: Path, cases: Sequence[TightenerCase], config: TightenerConfig, data: PatchSet,
              device: torch.device, emit: EventSink, should_stop: Callable[[], bool] | None,
              resume: bool) -> TightenerCard:
    """The run of :func:`train_tightener` once its patches are cut and its folder is locked."""
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

    patch_counts = {"total": len(data.labels), "positive": int(data.labels.sum()), "train": len(train_idx),
                    "validation": len(val_idx)}
    fingerprint = {**config.fingerprint(), "cases": [dataclasses.asdict(c) for c in cases]}
    checkpoint = Checkpoint(out / CHECKPOINT, fingerprint, TightenerConfig().fingerprint(), resume)
    start_info = {"kind": "tighten-train", "out": str(out), "objects": data.objects, "patches": patch_counts}
    settings = LoopSettings(len(train_idx), config.batch_size, config.epochs, config.seed)
    history = run_epochs(network, optimizer, settings, step, checkpoint, device=device,
                         reporting=Reporting(emit, start_info, epoch_info, should_stop))
    card = TightenerCard(
        ClassifierSpec(config.network, config.patch, config.context),
        PatchSpec(config.patch, config.stride, max(1, config.patch // 4)),
        TightenerInput(config.axis, data.spacing, data.intensity, IntensityMapping.of(config)),
        training={**dataclasses.asdict(config), "cases": [dataclasses.asdict(c) for c in cases],
                  "objects": data.objects, "patches": patch_counts},
        metrics={k: history[-1][k] for k in ("val_accuracy", "val_balanced_accuracy", "loss") if k in history[-1]},
        history=history)
    if len(val_idx):
        prob = classify(network, data.images[val_idx], device)
        truth = data.labels[val_idx].numpy()
        card.patch.threshold = best_threshold(prob, truth, config.threshold_rule)
        card.metrics.update({f"{k}_at_threshold": v for k, v in _accuracy(prob, truth, card.patch.threshold).items()})
    save_model(out, network, card)
    return card

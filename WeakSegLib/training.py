"""The training loop shared by every recipe: data, network, Adam, barrier schedule, checkpoints.

A run writes into its output folder:

- ``checkpoint.pt`` after every epoch (atomic): weights, optimizer state, epoch, history, config,
  RNG state. A run started again on the same folder resumes from it (same config required; the
  number of epochs may grow).
- ``model.pt`` + ``model.json`` at the end (:mod:`WeakSegLib.model`): the model folder inference uses.

Events (dicts, one per call of ``on_event``; the worker prints them as JSON lines)::

    {"event": "start", "epochs": 50, "first_epoch": 1, "samples": 120, "device": "cpu", ...}
    {"event": "batch", "epoch": 3, "batch": 5, "of": 15}
    {"event": "epoch", "epoch": 3, "of": 50, "loss": 0.12, "dice": 0.81, "t": 6.05, "seconds": 4.2, ...}
    {"event": "done", "model": "/path/to/model", "metrics": {...}}

The barrier parameter of epoch e (0-based) is t₀·factor^e: one t for every constraint.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from WeakSegLib.boxes import BoxSet, check_boxes_fit, load_boxes
from WeakSegLib.crf import CRFParams
from WeakSegLib.data import Case, SampleSet, build_samples, flip_batch
from WeakSegLib.devices import resolve_device
from WeakSegLib.errors import InputError
from WeakSegLib.inference import predict_probabilities
from WeakSegLib.loop import EventSink, LoopSettings, run_epochs
from WeakSegLib.model import CARD, build_from_card, default_color, save_model
from WeakSegLib.networks import NETWORKS
from WeakSegLib.proposals import BoxSup, DeepCut
from WeakSegLib.recipes import DEFAULT_RECIPE, MASK_RECIPES, PROPOSAL_RECIPES, RECIPES, LossSettings, RecipeLoss
from WeakSegLib.volume import check_same_grid, normalize, read_label_volume, read_volume

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainCase:
    """File paths of one training volume. ``boxes`` for box recipes, ``mask`` for ``full``;
    ``eval_mask`` (optional) only reports Dice per epoch. ``boxsup`` takes either: volumes given with
    a mask (and no boxes) train on it as is (semi-supervised)."""

    image: str
    boxes: str | None = None
    mask: str | None = None
    eval_mask: str | None = None


@dataclass
class TrainConfig:
    """Training settings (defaults of METHODS.md §1).

    ``spatial_dims`` 2 with ``context`` 1 is 2D, ``context`` k > 1 is 2.5D (k slices in), 3 is 3D.
    ``labels`` restricts training to these label values (default: all in the boxes or mask).
    ``proposal_every`` (DeepCut's k: epochs between CRF revisions), ``processes`` (its CRF worker
    processes), ``crf`` (overrides of :class:`WeakSegLib.crf.CRFParams`), ``boxsup_k`` and
    ``boxsup_weight`` (BoxSup's k cheapest candidates and λ) only matter for those recipes.
    ``augment`` (off by default) mirrors each batch along each in-plane (2D) or spatial (3D) axis with probability
    0.5 (boxes and masks with it), drawn from a generator seeded by (seed, epoch, batch).
    """

    recipe: str = DEFAULT_RECIPE
    network: str = "unet"
    spatial_dims: int = 2
    context: int = 1
    axis: int = 0
    epochs: int = 100
    batch_size: int = 8
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.99)
    band_width: int = 5
    tightness_weight: float = 1e-4
    size_bounds: tuple[float, float] = (0.5, 0.9)
    t0: float = 5.0
    t_factor: float = 1.1
    seed: int = 0
    device: str = "auto"
    normalization: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: tuple[float, float] = (-1000.0, 1000.0)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    labels: list[int] | None = None
    eval_every: int = 1
    augment: bool = False
    proposal_every: int = 10
    processes: int = 2
    boxsup_k: int = 5
    boxsup_weight: float = 1.0
    crf: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        if self.recipe not in RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.network not in NETWORKS:
            raise InputError(f"unknown network {self.network!r}; choose one of {', '.join(NETWORKS)}")
        if self.spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.spatial_dims == 3 and self.context != 1:
            raise InputError("context (2.5D) applies to 2D networks only")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be ≥ 1")
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {self.axis}")
        if self.recipe in PROPOSAL_RECIPES and self.spatial_dims != 2:
            raise InputError(f"recipe {self.recipe!r} revises 2D slice labels: use a 2D or 2.5D network")
        if self.proposal_every < 1 or self.processes < 1 or self.boxsup_k < 1:
            raise InputError("proposal_every, processes and boxsup_k must be ≥ 1")
        self.crf_params()
        return self

    def crf_params(self) -> CRFParams:
        """DeepCut's CRF settings: METHODS.md §6 with the overrides of ``crf`` (field name → value)."""
        known = {f.name for f in dataclasses.fields(CRFParams)}
        unknown = sorted(set(self.crf) - known)
        if unknown:
            raise InputError(f"unknown CRF setting(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        return dataclasses.replace(CRFParams(), **self.crf)

    def loss_settings(self) -> LossSettings:
        return LossSettings(self.band_width, self.tightness_weight, tuple(self.size_bounds))

    def fingerprint(self) -> dict:
        """Settings that must match for a checkpoint to be resumed (all but epochs and device)."""
        d = dataclasses.asdict(self)
        for key in ("epochs", "device", "eval_every", "processes"):
            d.pop(key)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class LoadedData:
    cases: list[Case]
    label_values: list[int]
    label_names: dict[int, str]
    spacing: list[float]
    names: list[str] = field(default_factory=list)


def load_training_data(cases: Sequence[TrainCase], config: TrainConfig) -> LoadedData:
    """Read, check and normalise the training cases (see :class:`TrainCase`)."""
    if not cases:
        raise InputError("no training case given: pass at least one --image")
    mask_recipe = config.recipe in MASK_RECIPES
    out: list[Case] = []
    names: dict[int, str] = {}
    spacing = None
    for tc in cases:
        image = read_volume(tc.image)
        spacing = spacing or list(image.spacing)
        mask = eval_mask = boxes = None
        if mask_recipe or (config.recipe == "boxsup" and tc.mask is not None and tc.boxes is None):
            if tc.mask is None:
                raise InputError(f"recipe {config.recipe!r} trains on masks: give --mask for {tc.image}")
            mvol = read_label_volume(tc.mask)
            check_same_grid(image, mvol, str(tc.image), str(tc.mask))
            mask = mvol.array
            values = config.labels or [int(v) for v in np.unique(mask) if v]
            names.update({v: names.get(v, f"label {v}") for v in values})
        else:
            if tc.boxes is None:
                raise InputError(f"recipe {config.recipe!r} trains on boxes: give --boxes for {tc.image}")
            boxset: BoxSet = load_boxes(tc.boxes)
            check_boxes_fit(boxset, image.geometry(), str(tc.image))
            keep = [b for b in boxset.boxes if config.labels is None or b.label in config.labels]
            if not keep:
                raise InputError(f"{tc.boxes}: no box with label(s) {config.labels}")
            boxset = BoxSet(keep, boxset.shape, boxset.labels, boxset.geometry)
            boxes = boxset.slice_boxes(config.axis) if config.spatial_dims == 2 else boxset.boxes
            for b in keep:
                names.setdefault(b.label, boxset.labels.get(b.label, f"label {b.label}"))
        if tc.eval_mask is not None:
            evol = read_label_volume(tc.eval_mask)
            check_same_grid(image, evol, str(tc.image), str(tc.eval_mask))
            eval_mask = evol.array
        array = normalize(image.array, config.normalization, percentiles=tuple(config.percentiles),
                          window=tuple(config.window))
        out.append(Case(array, boxes, mask, eval_mask, name=str(tc.image)))
    values = sorted(config.labels or names)
    return LoadedData(out, values, {v: names.get(v, f"label {v}") for v in values}, spacing or [1.0] * 3,
                      [str(c.image) for c in cases])


def per_case_dice(pred: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor, case_index: torch.Tensor,
                  n_classes: int) -> list[float]:
    """Mean over foreground classes of the 3D Dice of each case (empty vs empty = 1).

    ``pred``, ``ref`` ``(N, *S)`` class indices; ``valid`` masks out padding.
    """
    n_cases = int(case_index.max()) + 1
    out = []
    for c in range(n_cases):
        sel = case_index == c
        p, r, v = pred[sel], ref[sel], valid[sel]
        scores = []
        for k in range(1, n_classes + 1):
            pk, rk = (p == k) & v, (r == k) & v
            denom = int(pk.sum() + rk.sum())
            scores.append(1.0 if denom == 0 else 2.0 * int((pk & rk).sum()) / denom)
        out.append(float(np.mean(scores)))
    return out


def label_revision(config: TrainConfig, card: dict, samples: SampleSet, network: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, device: torch.device) -> DeepCut | BoxSup | None:
    """The label revision of a proposal recipe (:mod:`WeakSegLib.proposals`), None for the others.

    DeepCut's re-initialisation of round r draws fresh weights from seed ``config.seed + r`` (without
    touching the global RNG) and clears Adam's moments.
    """
    if config.recipe == "boxsup":
        return BoxSup(samples, network, device, k=config.boxsup_k, weight=config.boxsup_weight, seed=config.seed,
                      batch_size=config.batch_size * 2)
    if config.recipe != "deepcut":
        return None

    def reinit(round_: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + round_)
            fresh = build_from_card(card)
        network.load_state_dict(fresh.state_dict())
        optimizer.state.clear()

    return DeepCut(samples, network, device, reinit=reinit, every=config.proposal_every,
                   processes=config.processes, params=config.crf_params(), batch_size=config.batch_size * 2)


def train(cases: Sequence[TrainCase], config: TrainConfig, out_dir: str | os.PathLike, *,
          on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
          resume: bool = True) -> dict:
    """Train a model and write its folder (see module docstring).

    Args:
        cases: training volumes.
        config: settings; checked first.
        out_dir: model folder (created); holds the checkpoint while training.
        on_event: receives progress events.
        should_stop: polled between batches; when it returns True the run stops, keeping the last
            epoch's checkpoint, and raises :class:`CancelledError`.
        resume: continue from ``out_dir/checkpoint.pt`` when present.

    Returns:
        The model card.
    """
    config.validate()
    emit = on_event or (lambda e: None)
    out = Path(out_dir)
    device = resolve_device(config.device)
    data = load_training_data(cases, config)
    samples: SampleSet = build_samples(data.cases, data.label_values, spatial_dims=config.spatial_dims,
                                       axis=config.axis, context=config.context)
    n_classes = len(data.label_values)
    card = {
        "network": {"name": config.network, "spatial_dims": config.spatial_dims,
                    "in_channels": config.context, "out_channels": n_classes + 1,
                    "channels": list(config.channels)},
        "input": {"mode": "3d" if config.spatial_dims == 3 else ("2.5d" if config.context > 1 else "2d"),
                  "axis": config.axis, "context": config.context, "spacing": data.spacing,
                  "normalization": {"method": config.normalization, "percentiles": list(config.percentiles),
                                    "window": list(config.window)},
                  "patch_size": list(samples.images.shape[2:])},
        "labels": [{"value": v, "name": data.label_names[v], "color": default_color(i)}
                   for i, v in enumerate(data.label_values)],
        "recipe": config.recipe,
        "training": {**dataclasses.asdict(config), "cases": data.names},
    }
    torch.manual_seed(config.seed)
    network = build_from_card(card).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, betas=tuple(config.betas))
    loss_fn = RecipeLoss(config.recipe, config.loss_settings())
    samples = samples.to(device)

    def barrier_t(epoch: int) -> float:
        return config.t0 * config.t_factor ** epoch

    def step(index: torch.Tensor, epoch: int, b: int) -> dict[str, torch.Tensor]:
        batch = samples.batch(index)
        if config.augment:
            coin = torch.rand(config.spatial_dims, generator=torch.Generator().manual_seed(
                (config.seed * 100003 + epoch) * 10007 + b))
            batch = flip_batch(batch, [a for a in range(config.spatial_dims) if coin[a] < 0.5])
        loss, parts = loss_fn(network(batch["image"]), batch, barrier_t(epoch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), **parts}

    def epoch_info(epoch: int, last: bool) -> dict:
        info: dict = {"t": barrier_t(epoch)}
        if samples.eval_labels is not None and ((epoch + 1) % config.eval_every == 0 or last):
            probs = predict_probabilities(network, samples.images, device, config.batch_size * 2)
            scores = per_case_dice(probs.argmax(1), samples.eval_labels.cpu(), samples.valid.cpu(),
                                   samples.case_index.cpu(), n_classes)
            info.update(dice=float(np.mean(scores)), dice_per_case=scores)
        return info

    hooks = label_revision(config, card, samples, network, optimizer, device)
    start_info = {"recipe": config.recipe, "out": str(out), "labels": data.label_values,
                  **(hooks.start_info() if hooks is not None else {})}
    try:
        history = run_epochs(network, optimizer, LoopSettings(len(samples), config.batch_size, config.epochs, config.seed),
                             step, checkpoint=out / CHECKPOINT, fingerprint=config.fingerprint(), device=device,
                             epoch_info=epoch_info, emit=emit, should_stop=should_stop, resume=resume,
                             start_info=start_info, hooks=hooks)
    finally:
        if hooks is not None:
            hooks.close()
    card["history"] = history
    last = history[-1] if history else {}
    card["metrics"] = {k: last[k] for k in ("loss", "dice") if k in last}
    save_model(out, network, card)
    emit({"event": "done", "model": str(out), "card": str(out / CARD), "metrics": card["metrics"]})
    return card

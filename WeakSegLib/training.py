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

from WeakSegLib.adversarial import Adversary
from WeakSegLib.boxes import BoxSet, check_boxes_fit, check_drawn_grid, load_boxes
from WeakSegLib.crf import CRFParams
from WeakSegLib.data import Case, SampleSet, build_samples, flip_batch
from WeakSegLib.devices import resolve_device
from WeakSegLib.errors import InputError
from WeakSegLib.inference import predict_probabilities
from WeakSegLib.loop import EventSink, LoopSettings, run_epochs
from WeakSegLib.model import CARD, build_from_card, default_color, save_model
from WeakSegLib.networks import NETWORKS
from WeakSegLib.proposals import BoxSup, DeepCut
from WeakSegLib.label_losses import sccl_bounds
from WeakSegLib.options import ADVERSARIAL_RECIPES, PARTIAL_RECIPES, SIZE_RECIPES
from WeakSegLib.partial import PARTIAL_BACKGROUND
from WeakSegLib.recipes import DEFAULT_RECIPE, MASK_RECIPES, PROPOSAL_RECIPES, RECIPES, LossSettings, RecipeLoss
from WeakSegLib.sizes import load_sizes
from WeakSegLib.volume import Volume, check_same_grid, normalize, read_label_volume, read_volume

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainCase:
    """File paths of one training volume. ``boxes`` for box recipes, ``mask`` for ``full``;
    ``eval_mask`` (optional) only reports Dice per epoch. ``boxsup`` takes either: volumes given with
    a mask (and no boxes) train on it as is (semi-supervised).

    Recipe ``size``: ``sizes`` (a size file) and/or ``mask`` — the mask labels the slices where it
    holds an object, the size file the slices it lists (:class:`WeakSegLib.data.Case`); optional
    ``boxes`` mark background outside them. Partial-label recipes: ``partial`` (a partial label
    volume, :mod:`WeakSegLib.partial`); ``reference`` masks for ``accl-unpaired`` (any volume whose
    slices are no larger than the training slices), ``accl-paired`` (this image's true mask) and
    ``sccl`` (to derive its size bounds).
    """

    image: str
    boxes: str | None = None
    mask: str | None = None
    eval_mask: str | None = None
    sizes: str | None = None
    partial: str | None = None
    reference: str | None = None


@dataclass
class TrainConfig:
    """Training settings (defaults of METHODS.md §1).

    ``spatial_dims`` 2 with ``context`` 1 is 2D, ``context`` k > 1 is 2.5D (k slices in), 3 is 3D.
    ``labels`` restricts training to these label values (default: all in the boxes or mask).
    ``proposal_every`` (DeepCut's k: epochs between CRF revisions), ``processes`` (its CRF worker
    processes), ``crf`` (overrides of :class:`WeakSegLib.crf.CRFParams`), ``boxsup_k`` and
    ``boxsup_weight`` (BoxSup's k cheapest candidates and λ) only matter for those recipes.
    Recipe ``size``: ``pretrain_epochs`` (20) first epochs train on the mask slices only, then the size loss
    (weight ``size_weight``, ``size_samples`` masks drawn per slice) joins; from then on every batch
    also carries ``size_anchors`` (2) mask slices drawn at random, so that no step follows the size
    loss alone (with Adam, a step on a batch without labelled pixels would be a full-size step of the
    size term whatever its weight), and batch-norm statistics stay frozen at their pre-training
    values (trained further on slices no mask constrains, they let the network paint whole slices). ``sccl_weight`` and
    ``sccl_bounds`` (``[[lo, hi], …]`` pixels per class; default 0.9·min / 1.1·max of the reference
    masks' per-slice sizes) for ``sccl``; ``adv_weight`` (λ_a, default by reference kind) and ``adv_lr``
    (the discriminator's Adam) for ``accl-*``.
    ``lr``, ``betas`` (Adam) and ``decay_from`` (the fraction of the epochs after which the learning
    rates decay linearly towards 0; 1 = constant) default by recipe (:meth:`resolved`): 5e-4, (0.9,
    0.99), constant (METHODS.md §1); ``accl-*`` 2e-4, (0.5, 0.999), decay over the second half
    (METHODS.md §4), the discriminator's ``adv_lr`` decaying with it.
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
    lr: float | None = None
    betas: tuple[float, float] | None = None
    decay_from: float | None = None
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
    pretrain_epochs: int = 20
    size_weight: float = 1.0
    size_samples: int = 1
    size_anchors: int = 2
    sccl_weight: float = 0.01
    sccl_bounds: list | None = None
    adv_weight: float | None = None
    adv_lr: float = 2e-4

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe's defaults in place of the optimiser settings left None."""
        accl = self.recipe in ADVERSARIAL_RECIPES
        return dataclasses.replace(
            self, lr=(2e-4 if accl else 5e-4) if self.lr is None else self.lr,
            betas=((0.5, 0.999) if accl else (0.9, 0.99)) if self.betas is None else tuple(self.betas),
            decay_from=(0.5 if accl else 1.0) if self.decay_from is None else self.decay_from)

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the learning rates in ``epoch`` (0-based): 1 up to ``decay_from``·epochs,
        then falling linearly, 1/(n + 1) in the last of the n decaying epochs (never 0)."""
        start = round(self.resolved().decay_from * self.epochs)
        return 1.0 - max(0, epoch + 1 - start) / (self.epochs - start + 1)

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
        if self.decay_from is not None and not 0 <= self.decay_from <= 1:
            raise InputError(f"decay_from is a fraction of the epochs in [0, 1], got {self.decay_from}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {self.axis}")
        if self.recipe in PROPOSAL_RECIPES and self.spatial_dims != 2:
            raise InputError(f"recipe {self.recipe!r} revises 2D slice labels: use a 2D or 2.5D network")
        if min(self.proposal_every, self.processes, self.boxsup_k, self.size_samples, self.size_anchors) < 1:
            raise InputError("proposal_every, processes, boxsup_k, size_samples and size_anchors must be ≥ 1")
        if self.recipe in SIZE_RECIPES + PARTIAL_RECIPES and self.spatial_dims != 2:
            raise InputError(f"recipe {self.recipe!r} learns from per-slice labels: use a 2D or 2.5D network")
        if self.pretrain_epochs < 0:
            raise InputError(f"pretrain_epochs must be ≥ 0, got {self.pretrain_epochs}")
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
        return LossSettings(self.band_width, self.tightness_weight, tuple(self.size_bounds), self.size_weight,
                            self.size_samples, self.sccl_weight)

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


def _read_boxes(tc: TrainCase, image: Volume, config: TrainConfig, names: dict[int, str]) -> list:
    boxset: BoxSet = load_boxes(tc.boxes)
    check_boxes_fit(boxset, image.geometry(), str(tc.image))
    keep = [b for b in boxset.boxes if config.labels is None or b.label in config.labels]
    if not keep:
        raise InputError(f"{tc.boxes}: no box with label(s) {config.labels}")
    boxset = BoxSet(keep, boxset.shape, boxset.labels, boxset.geometry)
    for b in keep:
        names.setdefault(b.label, boxset.labels.get(b.label, f"label {b.label}"))
    return boxset.slice_boxes(config.axis) if config.spatial_dims == 2 else boxset.boxes


def _read_labels(path: str, image: Volume, config: TrainConfig, names: dict[int, str] | None, *,
                 what: str, image_name: str, same_grid: bool = True) -> np.ndarray:
    """A label volume (mask, partial labels, reference masks) as an array; its label values join
    ``names`` when given (training labels; not for reference or evaluation masks)."""
    vol = read_label_volume(path)
    if same_grid:
        check_same_grid(image, vol, image_name, f"{what} {path}")
    if names is not None:
        values = config.labels or [int(v) for v in np.unique(vol.array) if v and v != PARTIAL_BACKGROUND]
        names.update({v: names.get(v, f"label {v}") for v in values})
    return vol.array


def _read_sizes(tc: TrainCase, image: Volume, config: TrainConfig, names: dict[int, str]) -> list:
    sizeset = load_sizes(tc.sizes)
    check_drawn_grid({**(sizeset.geometry or {}), "shape": list(sizeset.shape)}, image.geometry(), "size", str(tc.image))
    if sizeset.axis != config.axis:
        raise InputError(f"{tc.sizes}: sizes were measured on slices along axis {sizeset.axis}, "
                         f"but training slices along axis {config.axis}")
    keep = [e for e in sizeset.sizes if config.labels is None or e.label in config.labels]
    if not keep:
        raise InputError(f"{tc.sizes}: no size with label(s) {config.labels}")
    for e in keep:
        names.setdefault(e.label, sizeset.labels.get(e.label, f"label {e.label}"))
    return keep


def load_training_data(cases: Sequence[TrainCase], config: TrainConfig) -> LoadedData:
    """Read, check and normalise the training cases (see :class:`TrainCase`)."""
    if not cases:
        raise InputError("no training case given: pass at least one --image")
    recipe = config.recipe
    out: list[Case] = []
    names: dict[int, str] = {}
    spacing = None
    for tc in cases:
        image = read_volume(tc.image)
        spacing = spacing or list(image.spacing)
        case = Case(np.empty(0), name=str(tc.image))
        if recipe in SIZE_RECIPES:
            if tc.sizes is None and tc.mask is None:
                raise InputError(f"recipe {recipe!r} trains on sizes and masks: give --sizes and/or --mask for {tc.image}")
            case.sizes = None if tc.sizes is None else _read_sizes(tc, image, config, names)
            case.mask = None if tc.mask is None else _read_labels(tc.mask, image, config, names, what="mask", image_name=str(tc.image))
            case.boxes = None if tc.boxes is None else _read_boxes(tc, image, config, names)
        elif recipe in PARTIAL_RECIPES:
            if tc.partial is None:
                raise InputError(f"recipe {recipe!r} trains on partial labels: give --partial for {tc.image}")
            case.partial = _read_labels(tc.partial, image, config, names, what="partial labels", image_name=str(tc.image))
        elif recipe in MASK_RECIPES or (recipe == "boxsup" and tc.mask is not None and tc.boxes is None):
            if tc.mask is None:
                raise InputError(f"recipe {recipe!r} trains on masks: give --mask for {tc.image}")
            case.mask = _read_labels(tc.mask, image, config, names, what="mask", image_name=str(tc.image))
        else:
            if tc.boxes is None:
                raise InputError(f"recipe {recipe!r} trains on boxes: give --boxes for {tc.image}")
            case.boxes = _read_boxes(tc, image, config, names)
        if tc.reference is not None:
            case.reference = _read_labels(tc.reference, image, config, None, what="reference masks", image_name=str(tc.image),
                                          same_grid=recipe == "accl-paired")
        elif recipe == "accl-paired":
            raise InputError(f"recipe 'accl-paired' needs this image's true mask: give --reference for {tc.image}")
        if tc.eval_mask is not None:
            case.eval_mask = _read_labels(tc.eval_mask, image, config, None, what="evaluation mask", image_name=str(tc.image))
        case.image = normalize(image.array, config.normalization, percentiles=tuple(config.percentiles),
                               window=tuple(config.window))
        out.append(case)
    if recipe in SIZE_RECIPES and all(c.sizes is None for c in out):
        raise InputError(f"recipe {recipe!r} needs size labels: give --sizes for at least one image")
    if recipe == "accl-unpaired" and all(c.reference is None for c in out):
        raise InputError("recipe 'accl-unpaired' needs reference masks: give --reference (any masks of the structure)")
    if recipe == "sccl" and config.sccl_bounds is None and all(c.reference is None for c in out):
        raise InputError("recipe 'sccl' needs size bounds: give --sccl-bounds LO HI or --reference masks to derive them")
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


def freeze_batch_norm(network: torch.nn.Module) -> None:
    """Put the batch-norm layers in eval mode: their statistics stay those of the pre-training data
    (fine-tuning with frozen statistics; the other layers keep training)."""
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


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
    config = config.validate().resolved()
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
    samples = samples.to(device)
    adversary = None
    if config.recipe in ADVERSARIAL_RECIPES:
        adversary = Adversary(ADVERSARIAL_RECIPES[config.recipe], config.context, n_classes, device,
                              references=samples.references, weight=config.adv_weight, lr=config.adv_lr)
    settings = config.loss_settings()
    if config.recipe == "sccl":
        settings.sccl_bounds = (torch.tensor(config.sccl_bounds, dtype=torch.float32) if config.sccl_bounds is not None
                                else sccl_bounds(samples.references.cpu(), n_classes))
        card["training"]["sccl_bounds"] = settings.sccl_bounds.tolist()
    loss_fn = RecipeLoss(config.recipe, settings, adversary).to(device)
    labelled = samples.labelled()
    labelled_index = labelled.nonzero().flatten()

    def barrier_t(epoch: int) -> float:
        return config.t0 * config.t_factor ** epoch

    optimizers = [(optimizer, config.lr)] + ([(adversary.optimizer, config.adv_lr)] if adversary is not None else [])

    def step(index: torch.Tensor, epoch: int, b: int) -> dict[str, torch.Tensor]:
        if b == 0:  # the epoch's learning rates: a function of the epoch alone, so resuming is exact
            for opt, lr in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr * config.lr_factor(epoch)
        pretraining = epoch < config.pretrain_epochs
        weak_terms = (config.recipe in SIZE_RECIPES and not pretraining) or adversary is not None
        if not weak_terms:  # a sample without any labelled pixel has nothing to learn from: skip it
            index = index[labelled[index]]
            if len(index) == 0:
                return {}
        elif config.recipe in SIZE_RECIPES:
            if config.pretrain_epochs:
                freeze_batch_norm(network)
            if len(labelled_index):  # the size loss never steps alone
                draw = torch.randperm(len(labelled_index), generator=torch.Generator().manual_seed(
                    (config.seed * 100003 + epoch) * 10007 + b))[:config.size_anchors]
                index = torch.cat([index, labelled_index[draw.to(device)]])
        batch = samples.batch(index)
        if config.recipe == "accl-paired":
            batch["reference"] = samples.references[index]
        if config.augment:
            coin = torch.rand(config.spatial_dims, generator=torch.Generator().manual_seed(
                (config.seed * 100003 + epoch) * 10007 + b))
            batch = flip_batch(batch, [a for a in range(config.spatial_dims) if coin[a] < 0.5])
        logits = network(batch["image"])
        loss, parts = loss_fn(logits, batch, barrier_t(epoch), weak=weak_terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if adversary is not None:
            parts["discriminator"] = adversary.discriminator_step(batch, torch.softmax(logits.detach(), 1))
        return {"loss": loss.detach(), **parts}

    def epoch_info(epoch: int, last: bool) -> dict:
        info: dict = {"t": barrier_t(epoch), "lr": config.lr * config.lr_factor(epoch)}
        if samples.eval_labels is not None and ((epoch + 1) % config.eval_every == 0 or last):
            probs = predict_probabilities(network, samples.images, device, config.batch_size * 2)
            scores = per_case_dice(probs.argmax(1), samples.eval_labels.cpu(), samples.valid.cpu(),
                                   samples.case_index.cpu(), n_classes)
            info.update(dice=float(np.mean(scores)), dice_per_case=scores)
        return info

    hooks = adversary or label_revision(config, card, samples, network, optimizer, device)
    start_info = {"recipe": config.recipe, "out": str(out), "labels": data.label_values,
                  **(hooks.start_info() if hooks is not None else {})}
    try:
        history = run_epochs(network, optimizer, LoopSettings(len(samples), config.batch_size, config.epochs, config.seed),
                             step, checkpoint=out / CHECKPOINT, fingerprint=config.fingerprint(), device=device,
                             epoch_info=epoch_info, emit=emit, should_stop=should_stop, resume=resume,
                             start_info=start_info, hooks=hooks, defaults=TrainConfig().resolved().fingerprint())
    finally:
        if hooks is not None:
            hooks.close()
    card["history"] = history
    last = history[-1] if history else {}
    card["metrics"] = {k: last[k] for k in ("loss", "dice") if k in last}
    save_model(out, network, card)
    emit({"event": "done", "model": str(out), "card": str(out / CARD), "metrics": card["metrics"]})
    return card

"""Segmentation training: read the cases a recipe needs, build samples, run the one loop.

A run writes into its output folder:

- ``checkpoint.pt`` after every epoch (atomic): weights, optimizer state, epoch, history, config,
  RNG state and the recipe's hooks. A run started again on the same folder resumes from it (same
  config required; the number of epochs may grow).
- ``model.pt`` + ``model.json`` at the end (:mod:`WeakSegLib.io.card`): the model folder inference uses.

What supervises the network is the recipe's (:mod:`WeakSegLib.recipes.registry` names the class,
:mod:`WeakSegLib.engine.recipe` says what it implements); this module owns everything else: which
files each case gives (the recipe's spec), the network and Adam, the learning-rate schedule, the
barrier parameter t of each epoch (:meth:`WeakSegLib.config.TrainConfig.barrier_t`), augmentation,
Dice per epoch against evaluation masks, and the events (:mod:`WeakSegLib.events`).
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
from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.data import Case, SampleSet, build_samples, flip_batch
from WeakSegLib.engine.devices import resolve_device
from WeakSegLib.engine.inference import predict_probabilities
from WeakSegLib.engine.loop import LoopSettings, run_epochs, step_generator
from WeakSegLib.engine.model import build_from_card, save_model
from WeakSegLib.engine.recipe import Recipe, RecipeContext
from WeakSegLib.errors import InputError
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import check_output_folder
from WeakSegLib.io.boxes import BoxSet, check_boxes_fit, check_drawn_grid, load_boxes
from WeakSegLib.io.card import CARD, InputSpec, LabelSpec, ModelCard, NetworkSpec, default_color
from WeakSegLib.io.lock import FolderLock
from WeakSegLib.io.partial import PARTIAL_BACKGROUND
from WeakSegLib.io.sizes import load_sizes
from WeakSegLib.io.volume import Normalization, Volume, check_same_grid, read_label_volume, read_volume
from WeakSegLib.recipes.registry import INPUT_NAMES, RecipeSpec, recipe_spec

CHECKPOINT = "checkpoint.pt"


@dataclass
class LoadedData:
    """The cases as read, and what they say together: the label values trained (class order), their
    names, the first image's spacing (mm, ITK order), the image paths, and warnings (inputs given
    that the recipe does not use)."""

    cases: list[Case]
    label_values: list[int]
    label_names: dict[int, str]
    spacing: list[float]
    names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _CaseReader:
    """Reads the inputs of one case onto its image's grid; label values of training labels join
    ``names`` (first name seen wins)."""

    def __init__(self, tc: TrainCase, image: Volume, config: TrainConfig, names: dict[int, str]) -> None:
        self.tc, self.image, self.config, self.names = tc, image, config, names

    def boxes(self) -> list:
        tc, config = self.tc, self.config
        boxset: BoxSet = load_boxes(tc.boxes)
        check_boxes_fit(boxset, self.image.geometry(), str(tc.image))
        keep = [b for b in boxset.boxes if config.labels is None or b.label in config.labels]
        if not keep:
            raise InputError(f"{tc.boxes}: no box with label(s) {config.labels}")
        boxset = BoxSet(keep, boxset.shape, boxset.labels, boxset.geometry)
        for b in keep:
            self.names.setdefault(b.label, boxset.labels.get(b.label, f"label {b.label}"))
        return boxset.slice_boxes(config.axis) if config.spatial_dims == 2 else boxset.boxes

    def labels(self, path: str, what: str, *, training: bool = True, same_grid: bool = True) -> np.ndarray:
        """A label volume (mask, partial labels, reference or evaluation masks) as an array."""
        vol = read_label_volume(path)
        if same_grid:
            check_same_grid(self.image, vol, str(self.tc.image), f"{what} {path}")
        if training:
            values = self.config.labels or [int(v) for v in np.unique(vol.array) if v and v != PARTIAL_BACKGROUND]
            self.names.update({v: self.names.get(v, f"label {v}") for v in values})
        return vol.array

    def sizes(self) -> list:
        tc, config = self.tc, self.config
        sizeset = load_sizes(tc.sizes)
        check_drawn_grid({**(sizeset.geometry or {}), "shape": list(sizeset.shape)}, self.image.geometry(), "size",
                         str(tc.image))
        if sizeset.axis != config.axis:
            raise InputError(f"{tc.sizes}: sizes were measured on slices along axis {sizeset.axis}, "
                             f"but training slices along axis {config.axis}")
        keep = [e for e in sizeset.sizes if config.labels is None or e.label in config.labels]
        if not keep:
            raise InputError(f"{tc.sizes}: no size with label(s) {config.labels}")
        for e in keep:
            self.names.setdefault(e.label, sizeset.labels.get(e.label, f"label {e.label}"))
        return keep

    def read(self, kind: str, spec: RecipeSpec) -> object:
        if kind == "boxes":
            return self.boxes()
        if kind == "sizes":
            return self.sizes()
        if kind == "reference":
            return self.labels(self.tc.reference, "reference masks", training=False,
                               same_grid=spec.reference == "paired")
        return self.labels(getattr(self.tc, kind), {"mask": "mask", "partial": "partial labels"}[kind])


def inputs_to_read(tc: TrainCase, spec: RecipeSpec) -> tuple[list[str], list[str]]:
    """The inputs of case ``tc`` that recipe ``spec`` reads, in reading order, and those it gives that
    the recipe leaves unused (see :class:`~WeakSegLib.recipes.registry.RecipeSpec`).

    Raises:
        InputError: the case gives none of the recipe's label inputs, or lacks the paired reference
            mask the recipe needs.
    """
    given = [kind for kind in INPUT_NAMES if getattr(tc, kind) is not None]
    first = next((kind for kind in spec.labels if kind in given), None)
    if first is None:
        raise InputError(spec.missing_labels_message(tc.image))
    if spec.reference == "paired" and "reference" not in given:
        raise InputError(f"recipe {spec.name!r} needs this image's true mask: give --reference for {tc.image}")
    read = [kind for kind in spec.inputs()
            if kind == first or (kind in given and (kind in spec.extra or kind == "reference"))]
    return read, [kind for kind in given if kind not in read]


def load_training_data(cases: Sequence[TrainCase], config: TrainConfig) -> LoadedData:
    """Read, check and normalise the training cases: the inputs the recipe reads, each checked against
    its image's grid (see :class:`~WeakSegLib.config.TrainCase`)."""
    if not cases:
        raise InputError("no training case given: pass at least one --image")
    spec = recipe_spec(config.recipe)
    out: list[Case] = []
    names: dict[int, str] = {}
    warnings: list[str] = []
    spacing = None
    norm = Normalization.of(config)
    for tc in cases:
        image = read_volume(tc.image)
        if image.array.min() == image.array.max():
            raise InputError(f"{tc.image}: every voxel has the value {float(image.array.min()):g}: nothing to learn from")
        spacing = spacing or list(image.spacing)
        reader = _CaseReader(tc, image, config, names)
        case = Case(np.empty(0), name=str(tc.image))
        read, unused = inputs_to_read(tc, spec)
        for kind in read:
            setattr(case, kind, reader.read(kind, spec))
        warnings += [f"recipe {spec.name!r} does not use the {INPUT_NAMES[kind]} given for {tc.image} "
                     f"(--{kind}): ignored" for kind in unused]
        if tc.eval_mask is not None:
            case.eval_mask = reader.labels(tc.eval_mask, "evaluation mask", training=False)
        case.image = norm.apply(image.array)
        out.append(case)
    for kind in spec.needs:
        if all(getattr(tc, kind) is None for tc in cases):
            raise InputError(f"recipe {spec.name!r} needs {INPUT_NAMES[kind]}: give --{kind} for at least one image"
                             + (" (any masks of the structure)" if kind == "reference" else ""))
    values = sorted(config.labels or names)
    if not values:
        raise InputError(f"no object to learn: the {' / '.join(INPUT_NAMES[k] for k in spec.labels)} of "
                         f"{', '.join(str(tc.image) for tc in cases)} hold no label")
    return LoadedData(out, values, {v: names.get(v, f"label {v}") for v in values}, spacing or [1.0] * 3,
                      [str(c.image) for c in cases], warnings)


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


def new_card(config: TrainConfig, data: LoadedData, samples: SampleSet) -> ModelCard:
    """The card of a run before training (history and metrics come at the end)."""
    n_classes = len(data.label_values)
    mode = "3d" if config.spatial_dims == 3 else ("2.5d" if config.context > 1 else "2d")
    return ModelCard(
        NetworkSpec(config.network, config.spatial_dims, config.context, n_classes + 1, tuple(config.channels)),
        InputSpec(mode, config.axis, config.context, data.spacing, Normalization.of(config),
                  list(samples.images.shape[2:])),
        [LabelSpec(v, data.label_names[v], default_color(i)) for i, v in enumerate(data.label_values)],
        config.recipe, {**dataclasses.asdict(config), "cases": data.names})


def start_recipe(config: TrainConfig, samples: SampleSet, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, fresh_network: Callable[[], torch.nn.Module] | None = None) -> Recipe:
    """The recipe of ``config`` (resolved) for a run, built by its registry entry.

    ``fresh_network()`` builds an untrained network like ``network``; a recipe that re-initialises the
    network (DeepCut, round r) gets weights drawn with seed ``config.seed + r`` without touching the
    global RNG, and Adam's moments cleared.
    """
    def reinit(round_: int) -> None:
        if fresh_network is None:
            raise ValueError("this run cannot re-initialise its network (no fresh_network given)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + round_)
            fresh = fresh_network()
        network.load_state_dict(fresh.state_dict())
        optimizer.state.clear()

    def predict() -> torch.Tensor:
        return predict_probabilities(network, samples.images, device, config.batch_size * 2)

    ctx = RecipeContext(config, samples, network, optimizer, device, samples.box_mask.shape[1], predict, reinit)
    return recipe_spec(config.recipe).load()(ctx)


def train(cases: Sequence[TrainCase], config: TrainConfig, out_dir: str | os.PathLike, *,
          on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
          resume: bool = True) -> ModelCard:
    """Train a model and write its folder (see module docstring).

    Args:
        cases: training volumes.
        config: settings; checked first.
        out_dir: model folder (created); holds the checkpoint while training.
        on_event: receives progress events (:mod:`WeakSegLib.events`).
        should_stop: polled between batches; when it returns True the run stops, keeping the last
            epoch's checkpoint, and raises :class:`~WeakSegLib.errors.CancelledError`.
        resume: continue from ``out_dir/checkpoint.pt`` when present.

    Returns:
        The model card.
    """
    config = config.validate().resolved()
    emit = on_event or events.ignore
    out = check_output_folder(out_dir, "model folder")
    device = resolve_device(config.device)
    data = load_training_data(cases, config)
    for message in data.warnings:
        emit(events.warning(message))
    samples = build_samples(data.cases, data.label_values, spatial_dims=config.spatial_dims, axis=config.axis,
                            context=config.context)
    with FolderLock(out, "training"):  # inputs are fine: from here on the folder is this run's
        card = _train_in(out, config, data, samples, device, emit, should_stop, resume)
    emit(events.done(model=str(out), card=str(out / CARD), metrics=card.metrics))
    return card


def _train_in(out: Path, config: TrainConfig, data: LoadedData, samples: SampleSet, device: torch.device,
              emit: EventSink, should_stop: Callable[[], bool] | None, resume: bool) -> ModelCard:
    """The training run of :func:`train` once its inputs are read and its folder is locked."""
    card = new_card(config, data, samples)
    n_classes = len(data.label_values)
    torch.manual_seed(config.seed)
    network = build_from_card(card).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, betas=tuple(config.betas))
    samples = samples.to(device)
    recipe = start_recipe(config, samples, network, optimizer, device, lambda: build_from_card(card))
    card.training.update(recipe.card_info())
    optimizers = [(optimizer, config.lr)] + recipe.optimizers()

    def step(index: torch.Tensor, epoch: int, b: int) -> dict[str, torch.Tensor]:
        if b == 0:  # the epoch's learning rates: a function of the epoch alone, so resuming is exact
            for opt, lr in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr * config.lr_factor(epoch)
        weak = recipe.weak(epoch)
        index = recipe.select(index, epoch, b, weak)
        if len(index) == 0:
            return {}
        batch = recipe.prepare(samples.batch(index), index)
        if config.augment:
            coin = torch.rand(config.spatial_dims, generator=step_generator(config.seed, epoch, b))
            batch = flip_batch(batch, [a for a in range(config.spatial_dims) if coin[a] < 0.5])
        logits = network(batch["image"])
        loss, parts = recipe.loss(logits, batch, config.barrier_t(epoch), weak)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        parts.update(recipe.after_step(batch, logits))
        return {"loss": loss.detach(), **parts}

    def epoch_info(epoch: int, last: bool) -> dict:
        info: dict = {"t": config.barrier_t(epoch), "lr": config.lr * config.lr_factor(epoch)}
        if samples.eval_labels is not None and ((epoch + 1) % config.eval_every == 0 or last):
            probs = predict_probabilities(network, samples.images, device, config.batch_size * 2)
            scores = per_case_dice(probs.argmax(1), samples.eval_labels.cpu(), samples.valid.cpu(),
                                   samples.case_index.cpu(), n_classes)
            info.update(dice=float(np.mean(scores)), dice_per_case=scores)
        return info

    hooks = recipe.hooks()
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
    card.history = history
    last = history[-1] if history else {}
    card.metrics = {k: last[k] for k in ("loss", "dice") if k in last}
    save_model(out, network, card)
    return card

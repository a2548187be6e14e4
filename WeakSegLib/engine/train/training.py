"""Segmentation training: read the cohort a recipe needs, run the one loop, write the model folder.

A run writes into its output folder:

- ``checkpoint.pt`` after every epoch (atomic): weights, optimizer state, epoch, history, config,
  RNG state and the recipe's hooks. A run started again on the same folder resumes from it (same
  config required; the number of epochs may grow).
- ``model.pt`` + ``model.json`` at the end (:mod:`WeakSegLib.io.card`): the model folder inference uses;
  its card records the canonical space the images were moved to (:mod:`WeakSegLib.engine.samples.preprocess`).
- ``.samples/`` while training from disk (:mod:`WeakSegLib.engine.samples.store`), removed at the end.

What supervises the network is the recipe's (:mod:`WeakSegLib.registry` names the class,
:mod:`WeakSegLib.engine.train.recipe` says what it implements); reading the cohort is
:mod:`WeakSegLib.engine.samples.cohort`'s; this module owns the rest: the network and Adam, the learning-rate
schedule, the barrier parameter t of each epoch (:meth:`WeakSegLib.config.TrainConfig.barrier_t`), the
fixed number of batches of an epoch (``epoch_batches``), augmentation, mixed precision on a GPU, Dice
per epoch against evaluation masks, and the events (:mod:`WeakSegLib.events`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from WeakSegLib import events
from WeakSegLib.config import TrainCase, TrainConfig, mode_of
from WeakSegLib.engine.predict.devices import autocast_dtype
from WeakSegLib.engine.predict.inference import predict_probabilities, predict_volume, window_probabilities
from WeakSegLib.engine.predict.model import build_from_card, load_model, save_model
from WeakSegLib.engine.predict.postprocess import MAX_CASES, Decision, decide
from WeakSegLib.engine.samples.cohort import Cohort, read_cohort, recipe_for
from WeakSegLib.engine.samples.data import SampleSet, flip_batch
from WeakSegLib.engine.samples.patches import crop_patches
from WeakSegLib.engine.samples.store import SliceStore, StoreBatches
from WeakSegLib.engine.train.distributed import SINGLE, Distributed, join
from WeakSegLib.engine.train.loop import Checkpoint, LoopSettings, Reporting, run_epochs, step_generator
from WeakSegLib.engine.train.recipe import Recipe, RecipeContext
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import atomic_write_json, check_output_folder
from WeakSegLib.io.boxes import load_boxes, rasterize
from WeakSegLib.io.card import CARD, InputSpec, LabelSpec, ModelCard, NetworkSpec, default_color
from WeakSegLib.io.labels import IGNORE
from WeakSegLib.io.lock import FolderLock
from WeakSegLib.io.volume import read_label_volume, read_volume
from WeakSegLib.options import AUTO
from WeakSegLib.registry import recipe_spec

CHECKPOINT = "checkpoint.pt"
#: the folder of the samples while training reads them from disk
SAMPLES = ".samples"


def per_case_dice(pred: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor, case_index: torch.Tensor,
                  n_classes: int) -> list[float | None]:
    """Mean over foreground classes of the 3D Dice of each case (empty vs empty = 1); None for a case
    without reference (``ref`` :data:`~WeakSegLib.io.labels.IGNORE` throughout).

    ``pred``, ``ref`` ``(N, *S)`` class indices; ``valid`` masks out padding.
    """
    n_cases = int(case_index.max()) + 1
    out: list[float | None] = []
    for c in range(n_cases):
        sel = case_index == c
        p, r = pred[sel], ref[sel]
        v = valid[sel] & (r != IGNORE)
        if not v.any():
            out.append(None)
            continue
        scores = []
        for k in range(1, n_classes + 1):
            pk, rk = (p == k) & v, (r == k) & v
            denom = int(pk.sum() + rk.sum())
            scores.append(1.0 if denom == 0 else 2.0 * int((pk & rk).sum()) / denom)
        out.append(float(np.mean(scores)))
    return out


def new_card(config: TrainConfig, cohort: Cohort) -> ModelCard:
    """The card of a run before training (history and metrics come at the end)."""
    n_classes = len(cohort.label_values)
    samples = cohort.samples
    if isinstance(samples, SampleSet):
        patch = list(samples.images.shape[2:])
        if config.spatial_dims == 3:
            patch = [min(p, s) for p, s in zip(config.patch_size, patch)]
    else:
        patch = list(samples.largest())
    return ModelCard(
        NetworkSpec(config.network, config.spatial_dims, config.context, n_classes + 1, tuple(config.channels)),
        InputSpec(mode_of(config.spatial_dims, config.context), config.axis, config.context, patch, cohort.plan),
        [LabelSpec(v, cohort.label_names[v], default_color(i)) for i, v in enumerate(cohort.label_values)],
        config.recipe, {**dataclasses.asdict(config), "cases": cohort.names, "dataset": cohort.summary})


def start_recipe(config: TrainConfig, samples: SampleSet, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, fresh_network: Callable[[], torch.nn.Module] | None = None,
                 group: Distributed = SINGLE) -> Recipe:
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

    ctx = RecipeContext(config, samples, network, optimizer, device, samples.classes, predict, reinit, group)
    return recipe_spec(config.recipe).load()(ctx)


def train(cases: Sequence[TrainCase], config: TrainConfig, out_dir: str | os.PathLike, *,
          on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
          resume: bool = True, backend: str = AUTO) -> ModelCard:
    """Train a model and write its folder (see module docstring).

    Started by ``torchrun`` with several processes, every process calls this and they train one
    model together (:mod:`WeakSegLib.engine.train.distributed`; ``backend`` of the process group: ``auto``,
    ``nccl`` or ``gloo``); rank 0 writes the folder and sends the events.

    Args:
        cases: training volumes.
        config: settings; checked first (recipe ``auto``: chosen from the cases, :func:`recipe_for`).
        out_dir: model folder (created); holds the checkpoint while training.
        on_event: receives progress events (:mod:`WeakSegLib.events`).
        should_stop: polled between batches; when it returns True (on any rank) the run stops, keeping
            the last epoch's checkpoint, and raises :class:`~WeakSegLib.errors.CancelledError`.
        resume: continue from ``out_dir/checkpoint.pt`` when present.

    Returns:
        The model card.
    """
    config = config.validate().picking(recipe_for(cases, config)).validate().resolved()
    group, device = join(config.device, backend)
    try:
        group.check_batch(config.batch_size)
        emit = (on_event or events.ignore) if group.main else events.ignore
        caveat = recipe_spec(config.recipe).caveat
        if caveat:
            emit(events.warning(f"recipe {config.recipe!r}: {caveat}"))
        out = check_output_folder(out_dir, "model folder")
        # rank 0 holds the folder (a killed run's leftovers removed) before any rank writes into it
        with FolderLock(out, "training") if group.main else contextlib.nullcontext():
            group.barrier()
            cohort = read_cohort(cases, config, out / (SAMPLES if group.main else f"{SAMPLES}-rank{group.rank}"))
            try:
                for message in cohort.warnings:
                    emit(events.warning(message))
                config = config.for_boxes(cohort.boxes_from_3d)
                card = _train_in(out, config, cohort, device, group, emit, should_stop, resume)
            finally:
                if isinstance(cohort.samples, SliceStore):
                    cohort.samples.close()
            if group.main and config.postprocess:
                card.postprocess = decide_postprocessing(out, cases, card, device).to_dict()
                atomic_write_json(out / CARD, card.to_dict())
    finally:
        group.leave()
    emit(events.done(model=str(out), card=str(out / CARD), metrics=card.metrics))
    return card


def decide_postprocessing(folder: Path, cases: Sequence[TrainCase], card: ModelCard,
                          device: torch.device) -> Decision:
    """The connected-component post-processing of the model in ``folder`` (:mod:`~WeakSegLib.engine.predict.postprocess`),
    decided on up to :data:`~WeakSegLib.engine.predict.postprocess.MAX_CASES` training cases: each predicted on its
    own grid and compared, per label, with its mask (``mask`` or ``eval_mask``) or else its filled boxes.
    Cases with neither (sizes, partial labels) are not used."""
    model = load_model(folder)
    values = [entry.value for entry in card.labels]
    used = [tc for tc in cases if tc.mask or tc.eval_mask or tc.boxes][:MAX_CASES]
    kinds = {"masks" if tc.mask or tc.eval_mask else "boxes" for tc in used}

    def pairs():
        for tc in used:
            image = read_volume(tc.image)
            labels, _ = predict_volume(model, image, device=str(device), name=tc.image)
            if tc.mask or tc.eval_mask:
                mask = read_label_volume(tc.mask or tc.eval_mask).array
                yield labels.array, {v: mask == v for v in values}
            else:
                filled = rasterize(load_boxes(tc.boxes).boxes, image.shape, values)
                yield labels.array, {v: filled[i].astype(bool) for i, v in enumerate(values)}

    return decide(pairs(), values, " and ".join(sorted(kinds)))


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _batches(config: TrainConfig, recipe: Recipe, samples: SampleSet | SliceStore, device: torch.device,
             group: Distributed) -> Callable[[int, list[torch.Tensor]], Iterable[Any]]:
    """The ``load`` of the loop: each chunk of an epoch's draw becomes ``(indices, batch)`` — the
    recipe's selection of this rank's share of the chunk and the batch of those samples on ``device``
    (None when empty: then on every rank); read ahead by worker processes when the samples are on disk."""
    if isinstance(samples, SliceStore):
        workers = config.workers if config.workers >= 0 else (2 if device.type == "cuda" else 0)
        reader = StoreBatches(samples, workers, pin_memory=device.type == "cuda")
    on_device = isinstance(samples, SampleSet) and config.spatial_dims == 2

    def load(epoch: int, chunks: list[torch.Tensor]) -> Iterable[Any]:
        weak = recipe.weak(epoch)
        plan = [recipe.select(group.shard(chunk.to(device) if on_device else chunk), epoch, b, weak)
                for b, chunk in enumerate(chunks)]
        if group.active:  # a step all ranks take: a batch empty on one rank is skipped by all
            empty = group.gather([b for b, index in enumerate(plan) if not len(index)])
            plan = [index[:0] if any(b in e for e in empty) else index for b, index in enumerate(plan)]
        if isinstance(samples, SampleSet) and config.spatial_dims == 3:  # volumes on the CPU, a patch each
            return ((index, None if not len(index) else _to(crop_patches(
                samples.batch(index), config.patch_size,
                step_generator(config.seed, epoch, b, stream=1 + group.rank), config.foreground_ratio), device))
                for b, index in enumerate(plan))
        if on_device:
            return ((index, samples.batch(index) if len(index) else None) for index in plan)
        return ((index, None if batch is None else _to(batch, device)) for index, batch in reader.epoch(plan))

    return load


def _dice(network: torch.nn.Module, samples: SampleSet | SliceStore, device: torch.device, batch_size: int,
          n_classes: int, patch: Sequence[int], group: Distributed) -> list[float | None] | None:
    """Dice of each case (mean over classes; None for a case without evaluation labels), or None when no
    case has them; each rank scores every ``world_size``-th case and the scores are gathered. 3D volumes
    larger than the training ``patch`` are predicted by sliding windows."""
    def mine(case: int) -> bool:
        return case % group.world_size == group.rank

    scores: dict[int, float | None] = {}
    if isinstance(samples, SampleSet):
        if samples.eval_labels is None:
            return None
        cases = samples.case_index.cpu()
        rows = (cases % group.world_size == group.rank).nonzero()[:, 0]
        if len(rows):
            images = samples.images[rows.to(samples.images.device)]
            if images.dim() == 5 and tuple(patch) != tuple(images.shape[2:]):
                probs = torch.cat([window_probabilities(network, images[i:i + 1], patch, device)
                                   for i in range(len(images))])
            else:
                probs = predict_probabilities(network, images, device, batch_size)
            found = per_case_dice(probs.argmax(1), samples.eval_labels.cpu()[rows], samples.valid.cpu()[rows],
                                  cases[rows], n_classes)
            scores = {c: found[c] for c in cases[rows].unique().tolist()}
    else:
        for case, images, labels in samples.eval_cases(mine):
            probs = predict_probabilities(network, torch.from_numpy(images), device, batch_size)
            scores[case] = per_case_dice(probs.argmax(1), torch.from_numpy(labels),
                                         torch.ones(labels.shape, dtype=torch.bool),
                                         torch.zeros(len(labels), dtype=torch.long), n_classes)[0]
    merged: dict[int, float | None] = {}
    for part in group.gather(scores):
        merged.update(part)
    out = [merged.get(c) for c in range(len(samples.counts) if isinstance(samples, SliceStore)
                                        else int(samples.case_index.max()) + 1)]
    return out if any(s is not None for s in out) else None


def _train_in(out: Path, config: TrainConfig, cohort: Cohort, device: torch.device, group: Distributed,
              emit: EventSink, should_stop: Callable[[], bool] | None, resume: bool) -> ModelCard:
    """The training run of :func:`train` once its cohort is read."""
    samples = cohort.samples
    card = new_card(config, cohort)
    n_classes = len(cohort.label_values)
    torch.manual_seed(config.seed)
    network = build_from_card(card).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, betas=tuple(config.betas))
    if isinstance(samples, SampleSet) and config.spatial_dims == 2:  # 3D: volumes stay, patches travel
        samples = samples.to(device)
    recipe = start_recipe(config, samples, network, optimizer, device, lambda: build_from_card(card), group)
    card.training.update({**recipe.card_info(), **group.info()})
    model = group.wrap(network, device)
    optimizers = [(optimizer, config.lr)] + recipe.optimizers()
    dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def step(item: tuple[torch.Tensor, dict | None], epoch: int, b: int) -> dict[str, torch.Tensor]:
        if b == 0:  # the epoch's learning rates: a function of the epoch alone, so resuming is exact
            for opt, lr in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr * config.lr_factor(epoch)
        index, batch = item
        if batch is None:
            return {}
        weak = recipe.weak(epoch)
        recipe.before_step(epoch, weak)
        batch = recipe.prepare(batch, index)
        if config.augment:
            coin = torch.rand(config.spatial_dims, generator=step_generator(config.seed, epoch, b))
            batch = flip_batch(batch, [a for a in range(config.spatial_dims) if coin[a] < 0.5])
        with torch.autocast(device.type, dtype) if dtype is not None else contextlib.nullcontext():
            logits = model(batch["image"])
        loss, parts = recipe.loss(logits.float(), batch, config.barrier_t(epoch), weak)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        parts.update(recipe.after_step(batch, logits.detach().float()))
        return {"loss": loss.detach(), **parts}

    def epoch_info(epoch: int, last: bool) -> dict:
        info: dict = {"t": config.barrier_t(epoch), "lr": config.lr * config.lr_factor(epoch)}
        if (epoch + 1) % config.eval_every == 0 or last:
            scores = _dice(network, samples, device, config.batch_size * 2, n_classes, card.input.patch_size, group)
            if scores is not None:
                info.update(dice=float(np.mean([v for v in scores if v is not None])), dice_per_case=scores)
        return info

    hooks = recipe.hooks()
    start_info = {"recipe": config.recipe, "out": str(out), "labels": cohort.label_values,
                  "dataset": cohort.summary, **group.info(), **(hooks.start_info() if hooks is not None else {})}
    settings = LoopSettings(len(samples), config.batch_size, config.epochs, config.seed, config.epoch_batches,
                            boxed=samples.boxed(), boxed_fraction=config.boxed_fraction)
    try:
        checkpoint = Checkpoint(out / CHECKPOINT, config.fingerprint(),
                                TrainConfig(recipe=config.recipe).resolved().fingerprint(), resume)
        history = run_epochs(network, optimizer, settings, step, checkpoint, device=device,
                             reporting=Reporting(emit, start_info, epoch_info, should_stop), hooks=hooks,
                             load=_batches(config, recipe, samples, device, group), group=group)
    finally:
        if hooks is not None:
            hooks.close()
    card.history = history
    last = history[-1] if history else {}
    card.metrics = {k: last[k] for k in ("loss", "dice") if k in last}
    if group.main:
        save_model(out, network, card)
    return card

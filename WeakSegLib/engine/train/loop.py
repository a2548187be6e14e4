"""The one epoch loop every trainer uses (segmentation recipes, the box tightener's classifier).

It owns what must behave the same everywhere: the seeded sample order of each epoch, cancellation
at batch boundaries, an atomic checkpoint after every epoch, bit-exact resume from it, and the
events (``start``, ``batch``, ``epoch``, ``cancelled``). What a step computes is the caller's.

Checkpoint (``torch.save`` dict, read with ``weights_only=True``)::

    {"model": state_dict, "optimizer": state_dict, "epoch": int (epochs done), "history": [record, …],
     "config": fingerprint (dict that must match to resume), "rng": {"torch": …, "cuda": …},
     "hooks": the hooks' state_dict() (recipes that change their labels while training)}
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from WeakSegLib import events
from WeakSegLib.engine.predict.model import load_state
from WeakSegLib.engine.train.distributed import SINGLE, Distributed
from WeakSegLib.engine.train.recipe import EpochHooks
from WeakSegLib.errors import CancelledError, ModelError
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import atomic_torch_save

#: ``step(item, epoch, batch)`` trains on one batch of 0-based ``epoch`` and ``batch``: ``item`` is the
#: batch's sample indices (long, on the device), or what ``load`` made of them; returns the loss terms
#: to average over the epoch (0-dim tensors, detached).
StepFn = Callable[[Any, int, int], dict[str, torch.Tensor]]
#: ``load(epoch, chunks)`` → one item per chunk of sample indices (CPU tensors), in order: the batches
#: of the epoch as the step takes them (e.g. read from disk ahead of the step).
LoadFn = Callable[[int, list[torch.Tensor]], Iterable[Any]]
#: ``epoch_info(epoch, last)`` → extra values for the epoch record (e.g. validation scores); ``last``
#: is True on the final epoch.
InfoFn = Callable[[int, bool], dict]


@dataclass
class LoopSettings:
    """``samples`` items, ``batch_size`` per step, ``epochs`` in all, ``seed`` of the sample order, and
    ``batches`` per epoch (None: one pass over the samples); ``boxed`` ``(samples,)`` bool marks the
    samples that hold a box, of which each batch of a fixed-length epoch gets at least ``boxed_fraction``
    (:func:`epoch_order`)."""

    samples: int
    batch_size: int
    epochs: int
    seed: int = 0
    batches: int | None = None
    boxed: torch.Tensor | None = None
    boxed_fraction: float = 0.0

    @property
    def batches_per_epoch(self) -> int:
        return self.batches if self.batches is not None else math.ceil(self.samples / self.batch_size)


@dataclass
class Checkpoint:
    """Where a run keeps its state after every epoch and when it may continue from it: ``path`` (written
    atomically), ``fingerprint`` (the settings that must match to resume), ``defaults`` (values of
    settings an older checkpoint may not record, :func:`resume_from`), ``resume`` (read it when present)."""

    path: Path
    fingerprint: dict
    defaults: dict | None = None
    resume: bool = True


@dataclass
class Reporting:
    """What a run tells and listens to: ``emit`` receives the events, ``start_info`` extends the ``start``
    event, ``epoch_info`` adds values to each epoch record (:data:`InfoFn`), ``should_stop`` is polled
    before every batch (True stops the run, keeping the last complete epoch's checkpoint)."""

    emit: EventSink = events.ignore
    start_info: dict = field(default_factory=dict)
    epoch_info: InfoFn | None = None
    should_stop: Callable[[], bool] | None = None


def _passes(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` items of ``range(n)``: whole permutations one after the other, each drawn from
    ``(seed, pass)``."""
    passes = [torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    while sum(len(p) for p in passes) < count:
        passes.append(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + len(passes))))
    return torch.cat(passes)[:count]


def epoch_order(settings: LoopSettings, epoch: int) -> torch.Tensor:
    """The samples of 0-based ``epoch``: one pass over all of them (``batches`` None; the last batch may
    be short), or ``batches × batch_size`` of them taken from passes one after the other; each pass in an
    order drawn from ``(seed, epoch, pass)``, the same for a resumed run.

    With ``boxed`` and ``boxed_fraction``, a batch of a fixed-length epoch that holds fewer than
    ⌈fraction · batch size⌉ boxed samples has its first unboxed ones replaced by boxed samples drawn in
    their own order (from ``(seed, epoch)`` too): a scan whose object lies on a few slices — a lesion —
    still has every step see boxes, while a batch that already holds enough is left as drawn.
    """
    n = settings.samples
    count = n if settings.batches is None else settings.batches * settings.batch_size
    order = _passes(n, count, settings.seed * 100003 + epoch)
    boxed = settings.boxed
    if settings.batches is None or boxed is None or settings.boxed_fraction <= 0 or boxed.all() or not boxed.any():
        return order
    need = math.ceil(settings.boxed_fraction * settings.batch_size)
    batches = order.view(settings.batches, settings.batch_size).clone()
    have = boxed[batches]  # (batches, batch_size)
    missing = (need - have.sum(1)).clamp(min=0)  # boxed samples each batch lacks
    pool = boxed.nonzero()[:, 0]
    extra = pool[_passes(len(pool), int(missing.sum()), (settings.seed * 100003 + epoch) * 104729 + 1)]
    # the first `missing` unboxed positions of each batch, row by row, take the extra samples in turn
    rank = (~have).cumsum(1)
    replace = ~have & (rank <= missing[:, None])
    batches[replace] = extra
    return batches.flatten()


def step_generator(seed: int, epoch: int, batch: int, stream: int = 0) -> torch.Generator:
    """A generator seeded by (seed, 0-based epoch, 0-based batch): random choices inside a step that a
    resumed run repeats exactly (augmentation, extra samples of a batch, 3D patches); ``stream``
    separates independent uses within one step."""
    return torch.Generator().manual_seed((seed * 100003 + epoch) * 10007 + batch + (stream << 48))


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_from(checkpoint: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                fingerprint: dict, device: torch.device, hooks: EpochHooks | None = None,
                defaults: dict | None = None) -> tuple[int, list[dict]]:
    """Load ``checkpoint`` into ``network`` and ``optimizer``; returns (epochs done, history).

    A setting the checkpoint does not record (it was written before that setting existed) matches
    when the current value is its value in ``defaults`` (the settings' defaults), so a new setting
    does not orphan the checkpoints of runs that never used it; a setting it records that
    ``fingerprint`` does not name (another recipe's, in a checkpoint written when every recipe's
    settings were in one class) is not compared.

    Raises:
        ModelError: corrupt checkpoint, or one made with other settings (names the settings).
    """
    try:
        ckpt = load_state(checkpoint)
    except ModelError as exc:
        raise ModelError(f"{exc}; delete it or start over (--no-resume)") from exc
    saved = ckpt.get("config")
    if isinstance(saved, dict):  # what the run's settings do not name (another recipe's) does not matter
        defaults = defaults or {}
        saved = {k: saved[k] if k in saved else defaults.get(k) for k in fingerprint}
    if saved != fingerprint:
        saved = saved if isinstance(saved, dict) else {}
        diff = sorted(k for k in set(fingerprint) | set(saved) if saved.get(k) != fingerprint.get(k))
        raise ModelError(f"{checkpoint} was made with other settings (differ: {', '.join(diff)}); "
                         "use another output folder or start over (--no-resume)")
    network.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    _set_rng_state(ckpt["rng"], device)
    if hooks is not None:
        if "hooks" not in ckpt:
            raise ModelError(f"{checkpoint} holds no label state for this recipe; start without resuming")
        hooks.load_state_dict(ckpt["hooks"])
    return int(ckpt["epoch"]), list(ckpt["history"])


def run_epochs(network: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: LoopSettings,
               step: StepFn, checkpoint: Checkpoint, *, device: torch.device, reporting: Reporting | None = None,
               hooks: EpochHooks | None = None, load: LoadFn | None = None,
               group: Distributed = SINGLE) -> list[dict]:
    """Train ``network`` for ``settings.epochs`` epochs and return the history (one record per epoch).

    Each epoch takes ``settings.batches_per_epoch`` batches of samples drawn from ``(seed, epoch)``
    (:func:`epoch_order`), so an interrupted run resumed from its checkpoint continues exactly as if it
    had not stopped.

    Args:
        network, optimizer: trained in place (the network is put in train mode every epoch).
        settings: sample count, batch size, epochs, seed.
        step: one optimisation step (see :data:`StepFn`).
        checkpoint: written after every epoch; read first when it allows resuming and is present.
        device: where the order tensor goes.
        reporting: events, extra record values, the stop request (default: none).
        hooks: label revisions between epochs, saved with the checkpoint (see :class:`EpochHooks`).
        load: turns each epoch's chunks of sample indices into the step's items (see :data:`LoadFn`);
            default: the chunks themselves, on ``device``.
        group: the processes of a distributed run (:mod:`WeakSegLib.engine.train.distributed`): every rank
            stops at the same batch when any is asked to, after a ``before_epoch`` that revised
            something on rank 0 the hooks of every rank take rank 0's state, the epoch's loss terms are
            averaged over the ranks, and rank 0 alone writes the checkpoint.
    """
    reporting = reporting or Reporting()
    emit, epoch_info = reporting.emit, reporting.epoch_info
    stop = reporting.should_stop or (lambda: False)
    first, history = 0, []
    if checkpoint.resume and checkpoint.path.exists():
        first, history = resume_from(checkpoint.path, network, optimizer, checkpoint.fingerprint, device, hooks,
                                     checkpoint.defaults)
    n, n_batches, size = settings.samples, settings.batches_per_epoch, settings.batch_size
    emit(events.start(epochs=settings.epochs, first_epoch=first + 1, samples=n, batches=n_batches, device=str(device),
                      **reporting.start_info))
    for epoch in range(first, settings.epochs):
        began = time.perf_counter()
        revised = hooks.before_epoch(epoch) if hooks is not None else None
        if hooks is not None and group.active and group.broadcast(revised is not None):
            state = group.broadcast(hooks.state_dict() if group.main else None)  # rank 0's revised labels
            if not group.main:
                hooks.load_state_dict(state)
        network.train()
        order = epoch_order(settings, epoch)
        chunks = [order[b * size:(b + 1) * size] for b in range(n_batches)]
        items = load(epoch, chunks) if load is not None else (chunk.to(device) for chunk in chunks)
        sums: dict[str, torch.Tensor] = {}
        for b, item in enumerate(items):
            if group.any(stop(), device):
                emit(events.cancelled(epoch=epoch + 1, checkpoint=str(checkpoint.path) if checkpoint.path.exists()
                                      else None))
                raise CancelledError(f"training cancelled in epoch {epoch + 1}; the checkpoint of epoch {epoch} is kept")
            parts = step(item, epoch, b)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            emit(events.batch(epoch + 1, b + 1, n_batches))
        means = group.mean({k: float(v) / n_batches for k, v in sums.items()}, device)
        record = {"epoch": epoch + 1, **means, **(revised or {})}
        if epoch_info is not None:
            record.update(epoch_info(epoch, epoch + 1 == settings.epochs))
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        if group.main:
            atomic_torch_save(checkpoint.path, {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                                                "epoch": epoch + 1, "history": history,
                                                "config": checkpoint.fingerprint, "rng": _rng_state(device),
                                                **({"hooks": hooks.state_dict()} if hooks is not None else {})})
        emit(events.epoch(record, settings.epochs))
    return history

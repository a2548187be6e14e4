"""Distributed data-parallel training under PyTorch's own launcher (``torchrun``).

``torchrun --nproc_per_node N -m WeakSegLib train …`` starts N processes and tells each its place
through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``). :func:`join` reads it and joins the process group — NCCL on CUDA
GPUs (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU — with a timeout, so ranks whose peer
died exit instead of waiting forever. A training started with ``WORLD_SIZE`` > 1 always joins: N
processes never train N separate models into one folder.

What a rank does (:mod:`WeakSegLib.engine.train.training`, :mod:`WeakSegLib.engine.train.loop`): every rank
reads the cohort and draws the same global batch of ``batch_size`` samples per step
(:func:`~WeakSegLib.engine.train.loop.epoch_order` depends on the seed and epoch only) and trains on its
share (:meth:`Distributed.shard`); ``DistributedDataParallel`` averages the gradients, so a step sees
the whole global batch and the learning rate stays as it is. Batch normalisation is synchronised over
the ranks on GPUs (``SyncBatchNorm``); PyTorch has no CPU implementation of it, so on the CPU (gloo)
each rank normalises its own share. Rank 0 alone writes the checkpoint, the model folder and the
events; every rank resumes from the same checkpoint, and as the sample order does not depend on the
number of ranks, a run started on one process resumes on two and the other way round.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from WeakSegLib.config import DEFAULT_DEVICE, DIST_BACKENDS, DIST_TIMEOUT_S
from WeakSegLib.engine.predict.devices import resolve_device
from WeakSegLib.errors import InputError
from WeakSegLib.options import AUTO


def launched() -> bool:
    """Whether this process was started by a distributed launcher with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's global rank as the launcher set it (0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


def check_batch_split(batch_size: int, processes: int) -> None:
    """Raise :class:`InputError` unless a global batch of ``batch_size`` samples splits evenly over
    ``processes`` training processes (each takes the same share)."""
    if batch_size % processes:
        raise InputError(f"the batch size {batch_size} cannot be split evenly over {processes} processes; "
                         f"use a multiple of {processes}")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a distributed run (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    nodes: int = 1
    backend: str | None = None
    #: whether :func:`join` created the process group (and :meth:`leave` destroys it)
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and events."""
        return self.rank == 0

    def info(self) -> dict:
        """What the ``start`` event and the model card record."""
        return {"world_size": self.world_size, "backend": self.backend, "nodes": self.nodes}

    def check_batch(self, batch_size: int) -> None:
        """Raise :class:`InputError` unless the global ``batch_size`` splits evenly over the ranks."""
        check_batch_split(batch_size, self.world_size)

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's consecutive share of a global batch's sample indices (all of them on one process)."""
        return index.tensor_split(self.world_size)[self.rank] if self.active else index

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` for training steps: ``DistributedDataParallel`` over the ranks (batch norm synchronised
        on GPUs), or ``module`` itself on one process. The returned wrapper shares ``module``'s parameters."""
        if not self.active:
            return module
        if device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            return nn.parallel.DistributedDataParallel(module, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(module)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is True on any rank (every rank gets the same answer)."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean over ranks of each value (the same keys on every rank)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return {k: float(v) / self.world_size for k, v in zip(keys, total.tolist())}

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable) on every rank."""
        if not self.active:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def leave(self) -> None:
        """Destroy the process group if :func:`join` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Distributed()


def join(device: str = DEFAULT_DEVICE, backend: str = AUTO) -> tuple[Distributed, torch.device]:
    """This process's :class:`Distributed` and training device: a single process unless a launcher
    started several (``WORLD_SIZE`` > 1), in which case the process group is joined (or the one the
    calling script already joined is used).

    Raises:
        InputError: an unknown backend, NCCL without CUDA GPUs, more processes on a machine than it has
            GPUs, Apple GPUs (no backend supports them).
    """
    if backend not in DIST_BACKENDS:
        raise InputError(f"unknown distributed backend {backend!r}; choose one of {', '.join(DIST_BACKENDS)}")
    if not launched():
        return SINGLE, resolve_device(device)
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    chosen = resolve_device(device)
    if chosen.type == "mps":
        raise InputError("distributed training does not run on Apple GPUs; use --device cpu")
    if backend == "nccl" and chosen.type != "cuda":
        raise InputError("the NCCL backend needs CUDA GPUs; use --backend gloo (or auto) to train on the CPU")
    if chosen.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_world > gpus:
            raise InputError(f"{local_world} processes were started on this machine but it has {gpus} CUDA GPU(s); "
                             f"start at most {gpus} (--nproc_per_node / --gpus)")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    name = ("nccl" if chosen.type == "cuda" else "gloo") if backend == AUTO else backend
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(name, timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S),
                                **({"device_id": chosen} if chosen.type == "cuda" else {}))
    else:
        name = dist.get_backend()
    return Distributed(rank, world, local_rank, max(1, world // max(local_world, 1)), name, owns), chosen

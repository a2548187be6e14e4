"""``weakseg train --gpus N`` and a worker job with ``"gpus": N``: the same command in N processes on this
machine, started by PyTorch's elastic launcher exactly as ``torchrun --standalone --nproc_per_node N -m
WeakSegLib train …`` starts them (:mod:`WeakSegLib.engine.train.distributed` is what each process then does).

The launcher forwards SIGTERM to every process (each stops at the next batch, keeping the last
checkpoint) and stops the others when one fails; the exit code is that of the first process to end
(e.g. 3, cancelled, or 2, bad input), or 1 when it died of a signal.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from WeakSegLib.app.jobs import EXIT_CANCELLED, EXIT_INTERNAL_ERROR, EXIT_OK
from WeakSegLib.engine.train.distributed import check_batch_split
from WeakSegLib.errors import InputError
from WeakSegLib.options import AUTO


def check_processes(n: int, device: str, batch_size: int) -> None:
    """Raise :class:`InputError` unless this machine can run ``n`` training processes on ``device`` (one
    CUDA GPU each, or CPU processes with ``device`` ``cpu``) and ``batch_size`` splits over them: checked
    once, before any process starts."""
    if n < 1:
        raise InputError(f"--gpus must be ≥ 1, got {n}")
    check_batch_split(batch_size, n)
    if device == "cpu":
        return
    if device not in (AUTO, "cuda"):
        raise InputError(f"--gpus runs one process per CUDA GPU; device {device!r} cannot (use --device cpu for "
                         "CPU processes)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        raise InputError(f"--gpus {n}: this machine has no CUDA GPU (--device cpu --gpus {n} runs {n} CPU processes)")
    if n > gpus:
        raise InputError(f"--gpus {n}: this machine has {gpus} CUDA GPU(s)")


def launch(n: int, argv: Sequence[str], module: str = "WeakSegLib") -> int:
    """Run ``python -m module *argv`` in ``n`` processes under the elastic launcher; the exit code."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # the cores shared out
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={n}", "--max-restarts=0",
                                         "--module", module, *argv])
    try:
        run(args)
    except ChildFailedError as exc:  # the first process to end says why (the launcher stops the others)
        _, first = exc.get_first_failure()
        return first.exitcode if first.exitcode > 0 else EXIT_INTERNAL_ERROR
    except SignalException:  # the launcher was told to stop: it sent the signal on to every process
        return EXIT_CANCELLED
    return EXIT_OK

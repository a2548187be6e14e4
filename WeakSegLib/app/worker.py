"""Background worker: ``python -m WeakSegLib.app.worker JOB.json`` (job format and exit codes:
:mod:`WeakSegLib.app.jobs`). Prints JSON events on stdout, logs on stderr."""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from WeakSegLib import events
from WeakSegLib.app.job_types import Job, JobFileError, TrainJob, parse_job
from WeakSegLib.app.jobs import (
    EXIT_BAD_INPUT,
    EXIT_BAD_JOB,
    EXIT_CANCELLED,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    child_of_launcher,
    exit_process,
)
from WeakSegLib.app.launch import check_processes, launch
from WeakSegLib.engine.train.distributed import env_rank
from WeakSegLib.errors import CancelledError, WeakSegError
from WeakSegLib.io.fields import read_json


def emit(event: dict) -> None:
    if env_rank() == 0:  # the other processes of a distributed job stay silent
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def read_job(path: str) -> Job:
    """The typed job of a job file (:func:`WeakSegLib.app.job_types.parse_job`): a file that is not a job
    is a :class:`JobFileError`, a bad setting or case inside it an :class:`~WeakSegLib.errors.InputError`."""
    return parse_job(read_json(Path(path), "job file", JobFileError), f"job file {path}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m WeakSegLib.app.worker JOB.json", file=sys.stderr)
        return EXIT_BAD_JOB
    stop = {"requested": False}

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        stop["requested"] = True
        print("worker: cancel requested (SIGTERM)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_term)
    try:
        job = read_job(argv[0])
        if isinstance(job, TrainJob) and job.gpus > 1 and not child_of_launcher():
            check_processes(job.gpus, job.config.device, job.config.batch_size)
            return launch(job.gpus, argv, "WeakSegLib.app.worker")
    except JobFileError as exc:
        emit(events.error(EXIT_BAD_JOB, str(exc)))
        return EXIT_BAD_JOB
    except WeakSegError as exc:
        emit(events.error(EXIT_BAD_INPUT, str(exc)))
        return EXIT_BAD_INPUT
    try:
        job.run(emit, lambda: stop["requested"])
    except CancelledError as exc:
        emit(events.cancelled(message=str(exc)))
        return EXIT_CANCELLED
    except WeakSegError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        emit(events.error(EXIT_BAD_INPUT, str(exc)))
        return EXIT_BAD_INPUT
    except Exception as exc:  # a fault of WeakSeg itself: its traceback goes to the log
        traceback.print_exc()
        emit(events.error(EXIT_INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))
        return EXIT_INTERNAL_ERROR
    return EXIT_OK


if __name__ == "__main__":
    exit_process(main())

"""Background worker: ``python -m WeakSegLib.worker JOB.json`` (job format and exit codes:
:mod:`WeakSegLib.jobs`). Prints JSON events on stdout, logs on stderr."""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from WeakSegLib.errors import CancelledError, WeakSegError
from WeakSegLib.jobs import (EXIT_BAD_INPUT, EXIT_BAD_JOB, EXIT_CANCELLED, EXIT_INTERNAL_ERROR, EXIT_OK,
                             JOB_KINDS)


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def read_job(path: str) -> dict:
    try:
        job = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"job file {path} not found") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"job file {path} is not valid JSON ({exc})") from exc
    if not isinstance(job, dict) or job.get("kind") not in JOB_KINDS:
        raise ValueError(f"job file {path}: 'kind' must be one of {JOB_KINDS}")
    return job


def _config(cls: type, job: dict, key: str = "config"):
    """``cls(**job[key])``; unknown settings are a ValueError naming them."""
    given = job.get(key) or {}
    unknown = sorted(set(given) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"job {key} has unknown settings: {', '.join(unknown)}")
    return cls(**given)


def run_job(job: dict, should_stop) -> dict:
    """Run a parsed job in this process; returns the final payload."""
    if job["kind"] == "train":
        from WeakSegLib.training import TrainCase, TrainConfig, train

        config = _config(TrainConfig, job)
        cases = [TrainCase(**c) for c in job["cases"]]
        card = train(cases, config, job["out"], on_event=emit, should_stop=should_stop,
                     resume=bool(job.get("resume", True)))
        return {"model": job["out"], "metrics": card.get("metrics", {})}
    if job["kind"] == "tighten-train":
        from WeakSegLib.tightening import TightenerCase, TightenerConfig, train_tightener

        config = _config(TightenerConfig, job)
        card = train_tightener([TightenerCase(**c) for c in job["cases"]], config, job["out"], on_event=emit,
                               should_stop=should_stop, resume=bool(job.get("resume", True)))
        return {"model": job["out"], "metrics": card.get("metrics", {})}
    if job["kind"] == "tighten":
        from WeakSegLib.tightening import TightenSettings, tighten_file

        settings = _config(TightenSettings, job, "settings")
        report = tighten_file(job["model"], job["image"], job["boxes"], job["out"], settings,
                              device=job.get("device", "auto"), on_event=emit, should_stop=should_stop)
        emit({"event": "done", **report})
        return report
    from WeakSegLib.inference import predict_file

    result = predict_file(job["model"], job["image"], job["out"], prob_out=job.get("prob_out"),
                          device=job.get("device", "auto"), on_event=emit, should_stop=should_stop)
    emit({"event": "done", **result})
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m WeakSegLib.worker JOB.json", file=sys.stderr)
        return EXIT_BAD_JOB
    stop = {"requested": False}

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        stop["requested"] = True
        print("worker: cancel requested (SIGTERM)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_term)
    try:
        job = read_job(argv[0])
    except ValueError as exc:
        emit({"event": "error", "code": EXIT_BAD_JOB, "message": str(exc)})
        return EXIT_BAD_JOB
    try:
        run_job(job, lambda: stop["requested"])
    except CancelledError as exc:
        emit({"event": "cancelled", "message": str(exc)})
        return EXIT_CANCELLED
    except (WeakSegError, ValueError, KeyError, TypeError) as exc:
        traceback.print_exc()
        emit({"event": "error", "code": EXIT_BAD_INPUT, "message": str(exc)})
        return EXIT_BAD_INPUT
    except Exception as exc:  # report anything else with its traceback in the log
        traceback.print_exc()
        emit({"event": "error", "code": EXIT_INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"})
        return EXIT_INTERNAL_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

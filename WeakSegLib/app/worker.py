"""Background worker: ``python -m WeakSegLib.app.worker JOB.json`` (job format and exit codes:
:mod:`WeakSegLib.app.jobs`). Prints JSON events on stdout, logs on stderr."""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from WeakSegLib import events
from WeakSegLib.app.jobs import (
    EXIT_BAD_INPUT,
    EXIT_BAD_JOB,
    EXIT_CANCELLED,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    JobFileError,
    check_job,
    child_of_launcher,
    exit_process,
)
from WeakSegLib.app.launch import check_processes, launch
from WeakSegLib.config import TightenerCase, TightenerConfig, TightenSettings, TrainCase, TrainConfig
from WeakSegLib.engine.train.distributed import env_rank
from WeakSegLib.errors import CancelledError, WeakSegError
from WeakSegLib.io.fields import read_json
from WeakSegLib.options import from_dict


def emit(event: dict) -> None:
    if env_rank() == 0:  # the other processes of a distributed job stay silent
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def read_job(path: str) -> dict:
    """The job of a job file, checked (:func:`WeakSegLib.app.jobs.check_job`); raises JobFileError."""
    return check_job(read_json(Path(path), "job file", JobFileError), f"job file {path}")


def _train(job: dict, should_stop, config_class: type, case_class: type, trainer) -> dict:
    """A training job (segmentation or tightener): settings and cases checked, then ``trainer``."""
    config = from_dict(config_class, job.get("config"), "job config")
    cases = [from_dict(case_class, c, "job case") for c in job["cases"]]
    card = trainer(cases, config, job["out"], on_event=emit, should_stop=should_stop,
                   resume=bool(job.get("resume", True)))
    return {"model": job["out"], "metrics": card.metrics}


def _predict_cases(job: dict, should_stop) -> dict:
    """A ``predict-cases`` job: every case predicted into ``out_dir``; scored when cases give masks."""
    from WeakSegLib.engine.predict.evaluation import SCORES_FILE, evaluate_cases
    from WeakSegLib.engine.predict.inference import PREDICTION_SUFFIX, predict_cases
    from WeakSegLib.io.atomic import atomic_write_json

    cases = job["cases"]
    for i, case in enumerate(cases):
        if not (isinstance(case, dict) and isinstance(case.get("name"), str) and isinstance(case.get("image"), str)):
            raise JobFileError(f"job case {i}: needs a 'name' and an 'image' (texts), got {case!r}")
    results = predict_cases(job["model"], [(c["name"], c["image"]) for c in cases], job["out_dir"],
                            device=job.get("device") or "auto", on_event=emit, should_stop=should_stop,
                            suffix=job.get("suffix") or PREDICTION_SUFFIX, postprocess=job.get("postprocess", True))
    payload: dict = {"out_dir": job["out_dir"], "predictions": {r.name: r.prediction for r in results},
                     "failed": {r.name: r.error for r in results if r.error}}
    references = [(c["name"], c["mask"]) for c in cases if c.get("mask")]
    if references:
        scores = evaluate_cases(job["out_dir"], references)  # as `weakseg evaluate` scores them
        payload["scores"] = str(atomic_write_json(Path(job["out_dir"]) / SCORES_FILE, scores.to_dict()))
    emit(events.done(**payload))
    return payload


def _rank(job: dict, should_stop) -> dict:
    """A ``rank`` job: the dataset's cases without a mask or a decision predicted and ranked for review."""
    from WeakSegLib.engine.predict.ranking import rank_dataset, ranking_file
    from WeakSegLib.io.dataset import load_dataset

    dataset = load_dataset(job["dataset"])
    out = str(ranking_file(dataset, job.get("out")))
    ranked, failed = rank_dataset(job["model"], dataset, out, job.get("pred_dir"), split=job.get("split"),
                                  device=job.get("device") or "auto", on_event=emit, should_stop=should_stop)
    payload = {"ranking": out, "ranked": [[r.name, r.score] for r in ranked], "failed": dict(failed)}
    emit(events.done(**payload))
    return payload


def run_job(job: dict, should_stop) -> dict:
    """Run a parsed job in this process; returns the final payload."""
    if job["kind"] == "train":
        from WeakSegLib.engine.train.training import train

        return _train(job, should_stop, TrainConfig, TrainCase, train)
    if job["kind"] == "tighten-train":
        from WeakSegLib.tightener.training import train_tightener

        return _train(job, should_stop, TightenerConfig, TightenerCase, train_tightener)
    if job["kind"] == "tighten":
        from WeakSegLib.tightener.tighten import tighten_file

        settings = from_dict(TightenSettings, job.get("settings"), "job settings")
        report = tighten_file(job["model"], job["image"], job["boxes"], job["out"], settings,
                              device=job.get("device", "auto"), on_event=emit, should_stop=should_stop)
        emit(events.done(**report))
        return report
    if job["kind"] == "predict-cases":
        return _predict_cases(job, should_stop)
    if job["kind"] == "rank":
        return _rank(job, should_stop)
    from WeakSegLib.engine.predict.inference import predict_file

    result = predict_file(job["model"], job["image"], job["out"], prob_out=job.get("prob_out"),
                          device=job.get("device", "auto"), on_event=emit, should_stop=should_stop,
                          postprocess=job.get("postprocess", True))
    emit(events.done(**result))
    return result


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
    except JobFileError as exc:
        emit(events.error(EXIT_BAD_JOB, str(exc)))
        return EXIT_BAD_JOB
    gpus = job.get("gpus") or 1
    if job["kind"] == "train" and gpus > 1 and not child_of_launcher():
        try:
            config = from_dict(TrainConfig, job.get("config"), "job config")
            check_processes(gpus, config.device, config.batch_size)
        except WeakSegError as exc:
            emit(events.error(EXIT_BAD_INPUT, str(exc)))
            return EXIT_BAD_INPUT
        return launch(gpus, argv, "WeakSegLib.app.worker")
    try:
        run_job(job, lambda: stop["requested"])
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

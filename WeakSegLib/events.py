"""The progress events of every long job, in one torch-free module.

Training, tightener training, tightening and prediction report through an :data:`EventSink`: a
callable given one plain dict per event, ``{"event": KIND, ...}``. The worker prints them as JSON
lines; the progress bar, the Slicer job watcher and the training-curve nodes read them. The
constructors below are the only places an event is made, so their fields are listed once:

=============  =====================================================================================
``start``      training: ``epochs``, ``first_epoch`` (1-based, > 1 after a resume), ``samples``,
               ``batches``, ``device``, plus the trainer's own fields (``recipe``, ``out``, ``labels``,
               …); tightening: ``kind`` (``"tighten"``), ``boxes``
``batch``      ``epoch`` (1-based), ``batch`` (1-based), ``of`` (batches per epoch)
``epoch``      ``epoch``, ``of`` (epochs), ``loss``, each loss term, ``seconds``, and what the trainer
               adds (``dice``, ``dice_per_case``, ``t``, ``lr``, ``val_accuracy``, …)
``predict``    ``done``, ``of``: slices (or windows) predicted
``progress``   ``done``, ``of``: boxes tightened
``case``       ``done``, ``of``: cases of a batch prediction finished; ``name``, and ``prediction``
               (the file written) or ``error`` (why the case was skipped)
``warning``    ``message``
``cancelled``  ``epoch`` and ``checkpoint`` (training) or ``message`` (worker)
``error``      ``code`` (the worker's exit code), ``message``
``done``       the job's result (``model``, ``card``, ``metrics`` / ``prediction`` / ``out``, …)
=============  =====================================================================================
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

START, BATCH, EPOCH, PREDICT, PROGRESS, CASE = "start", "batch", "epoch", "predict", "progress", "case"
WARNING, CANCELLED, ERROR, DONE = "warning", "cancelled", "error", "done"
#: a line of worker output that was not JSON (kept, so that nothing is lost)
OUTPUT = "output"

EventSink = Callable[[dict], None]


def ignore(event: dict) -> None:
    """The sink of a caller who wants no events."""


def start(**info: Any) -> dict:
    """Training: ``epochs``, ``first_epoch``, ``samples``, ``batches``, ``device`` and the trainer's own
    fields; tightening: ``kind`` (``"tighten"``) and ``boxes``."""
    return {"event": START, **info}


def batch(epoch: int, index: int, of: int) -> dict:
    return {"event": BATCH, "epoch": epoch, "batch": index, "of": of}


def epoch(record: dict, of: int) -> dict:
    """``record``: the epoch's history entry (``epoch``, ``loss``, terms, ``seconds``, …)."""
    return {"event": EPOCH, "of": of, **record}


def predict(done: int, of: int) -> dict:
    return {"event": PREDICT, "done": done, "of": of}


def progress(done: int, of: int) -> dict:
    return {"event": PROGRESS, "done": done, "of": of}


def case(done: int, of: int, name: str, **result: Any) -> dict:
    """One case of a batch prediction finished: ``prediction`` (path) or ``error`` (message)."""
    return {"event": CASE, "done": done, "of": of, "name": name, **result}


def warning(message: str) -> dict:
    return {"event": WARNING, "message": message}


def cancelled(**info: Any) -> dict:
    return {"event": CANCELLED, **info}


def error(code: int, message: str) -> dict:
    return {"event": ERROR, "code": code, "message": message}


def done(**result: Any) -> dict:
    return {"event": DONE, **result}


def fraction_done(events: Iterable[dict]) -> float | None:
    """How far a job is (0–1), from the latest event that tells: a ``batch`` (with the ``start``
    event's epoch count), an ``epoch``, a ``predict``, ``progress`` or ``case`` event; None before any."""
    events = list(events)
    for event in reversed(events):
        kind, of = event.get("event"), event.get("of")
        if not of:
            continue
        if kind == BATCH:
            epochs = next((e.get("epochs") for e in events if e.get("event") == START), None)
            if epochs:
                return min(1.0, ((event["epoch"] - 1) + event["batch"] / of) / epochs)
        elif kind == EPOCH:
            return min(1.0, event["epoch"] / of)
        elif kind in (PREDICT, PROGRESS, CASE):
            return min(1.0, event.get("done", 0) / of)
    return None

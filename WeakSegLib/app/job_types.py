"""The work the command line and the background worker do, as typed jobs: one dataclass per kind, checked
when it is built from a job file's JSON (:func:`parse_job`), written back as that JSON (:meth:`Job.to_dict`)
and done by its one :meth:`Job.run`. ``weakseg train|predict|rank|tighten-train|tighten`` build the same
jobs from their options and run them in their own process; the worker (:mod:`WeakSegLib.app.worker`)
reads them from a file (format: :mod:`WeakSegLib.app.jobs`).

Importing this module imports no torch: :meth:`Job.run` imports the engine when it starts.
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from WeakSegLib import config as cfg
from WeakSegLib import events
from WeakSegLib.errors import WeakSegError
from WeakSegLib.events import EventSink
from WeakSegLib.io.volume import PREDICTION_SUFFIX
from WeakSegLib.options import AUTO, from_dict, non_optional

StopFn = Callable[[], bool] | None


class JobFileError(WeakSegError):
    """A job file that is missing, not JSON, or not shaped as its kind requires (exit code 4)."""


@dataclass
class PredictCase:
    """One case of a ``predict-cases`` job: its name (the prediction's file name), image and, to be
    scored, its reference mask."""

    name: str
    image: str
    mask: str | None = None


def _done(on_event: EventSink, result: dict) -> dict:
    """``result``, sent first as the ``done`` event (the result of the jobs whose engine call sends none)."""
    on_event(events.done(**result))
    return result


@dataclass
class Job(abc.ABC):
    """A unit of work: its fields are the job file's (``kind`` besides); :meth:`run` does it."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def run(self, on_event: EventSink, should_stop: StopFn = None) -> dict:
        """Do the work, sending progress to ``on_event``; returns the result (the worker's payload)."""

    def to_dict(self) -> dict:
        """The job file's JSON object."""
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass
class TrainJob(Job):
    """Train a segmentation model into ``out`` (:func:`WeakSegLib.engine.train.training.train`); ``gpus`` > 1:
    that many processes under PyTorch's launcher (:mod:`WeakSegLib.app.launch`)."""

    kind: ClassVar[str] = "train"
    out: str
    cases: list[cfg.TrainCase]
    config: cfg.TrainConfig = field(default_factory=cfg.TrainConfig)
    resume: bool = True
    gpus: int = 1
    backend: str = AUTO

    def run(self, on_event: EventSink, should_stop: StopFn = None) -> dict:
        from WeakSegLib.engine.train.training import train

        card = train(self.cases, self.config, self.out, on_event=on_event, should_stop=should_stop,
                     resume=self.resume, backend=self.backend)
        return {"model": self.out, "metrics": card.metrics}


@dataclass
class TightenTrainJob(Job):
    """Train a box tightener into ``out`` (:func:`WeakSegLib.tightener.training.train_tightener`)."""

    kind: ClassVar[str] = "tighten-train"
    out: str
    cases: list[cfg.TightenerCase]
    config: cfg.TightenerConfig = field(default_factory=cfg.TightenerConfig)
    resume: bool = True

    def run(self, on_event: EventSink, should_stop: StopFn = None) -> dict:
        from WeakSegLib.tightener.training import train_tightener

        card = train_tightener(self.cases, self.config, self.out, on_event=on_event, should_stop=should_stop,
                               resume=self.resume)
        return {"model": self.out, "metrics": card.metrics, "patches": card.training["patches"]["total"]}


@dataclass
class TightenJob(cfg.DeviceOption, Job):
    """Tighten the slice boxes cut from the 3D boxes of ``boxes`` into ``out``
    (:func:`WeakSegLib.tightener.tighten.tighten_file`; ``report_out``: the per-box report as JSON)."""

    kind: ClassVar[str] = "tighten"
    model: str
    image: str
    boxes: str
    out: str
    settings: cfg.TightenSettings = field(default_factory=cfg.TightenSettings)
    report_out: str | None = None

    def run(self, on_event: EventSink, should_stop: StopFn = None) -> dict:
        from WeakSegLib.tightener.tighten import tighten_file

        report = tighten_file(self.model, self.image, self.boxes, self.out, self.settings, device=self.device,
                              on_event=on_event, should_stop=should_stop, report_out=self.report_out)
        return _done(on_event, report)


@dataclass
class PredictJob(cfg.PredictOptions, Job):
    """Predict one scan into ``out`` (and its foreground probability into ``prob_out``)."""

    kind: ClassVar[str] = "predict"
    model: str
    image: str
    out: str
    prob_out: str | None = None

    def run(self, on_event: EventSink, should_stop: StopFn = None) -> dict:
        from WeakSegLib.engine.predict.inference import predict_file

        result = predict_file(self.model, self.image, self.out, prob_out=self.prob_out, device=self.device,
                              on_event=on_event, should_stop=should_stop, postprocess=self.postprocess)
        return _done(on_event, result)


@dataclass
class PredictCasesJob(cfg.PredictOptions, Job):
    """Predict every case into ``out_dir/<name><suffix>`` (a failing case is reported and skipped); with
    reference masks, their scores (as ``weakseg evaluate`` gives them) into ``out_dir``'s scores file."""

    kind: ClassVar[str] = "predict-cases"
    model: str
    cases: list[PredictCase]
    out_dir: str
    suffix: str = PREDICTION_SUFFIX

    def run(self, on_event: EventSink, should_stop: StopFn = None) -> dict:
        from WeakSegLib.engine.predict.evaluation import SCORES_FILE, evaluate_cases
        from WeakSegLib.engine.predict.inference import predict_cases
        from WeakSegLib.io.atomic import atomic_write_json

        results = predict_cases(self.model, [(c.name, c.image) for c in self.cases], self.out_dir,
                                device=self.device, on_event=on_event, should_stop=should_stop, suffix=self.suffix,
                                postprocess=self.postprocess)
        payload: dict = {"out_dir": self.out_dir, "predictions": {r.name: r.prediction for r in results},
                         "failed": {r.name: r.error for r in results if r.error}}
        references = [(c.name, c.mask) for c in self.cases if c.mask]
        if references:
            scores = evaluate_cases(self.out_dir, references)
            payload["scores"] = str(atomic_write_json(Path(self.out_dir) / SCORES_FILE, scores.to_dict()))
        return _done(on_event, payload)


@dataclass
class RankJob(cfg.DeviceOption, Job):
    """Predict the dataset's cases without a mask, boxes or decision and rank them for review
    (:func:`WeakSegLib.engine.predict.ranking.rank_dataset`; ``out``: the table, default beside the
    dataset file)."""

    kind: ClassVar[str] = "rank"
    model: str
    dataset: str
    out: str | None = None
    pred_dir: str | None = None
    split: str | None = None

    def run(self, on_event: EventSink, should_stop: StopFn = None) -> dict:
        from WeakSegLib.engine.predict.ranking import rank_dataset, ranking_file
        from WeakSegLib.io.dataset import load_dataset

        dataset = load_dataset(self.dataset)
        out = str(ranking_file(dataset, self.out))
        ranked, failed = rank_dataset(self.model, dataset, out, self.pred_dir, split=self.split, device=self.device,
                                      on_event=on_event, should_stop=should_stop)
        payload = {"ranking": out, "ranked": [[r.name, r.score] for r in ranked], "failed": dict(failed),
                   "volumes_mm3": {r.name: sum(r.volume_mm3) for r in ranked}}
        return _done(on_event, payload)


#: every job kind: name → class
JOBS: dict[str, type[Job]] = {cls.kind: cls for cls in (TrainJob, TightenTrainJob, TightenJob, PredictJob,
                                                          PredictCasesJob, RankJob)}


def _json_type(hint: Any) -> type:
    """The JSON type a field of type ``hint`` is written as: an object for a settings class, a list, or
    the value's own type (``X | None``: X's)."""
    hint = non_optional(hint)
    return dict if dataclasses.is_dataclass(hint) else typing.get_origin(hint) or hint


def check_job(job: object, where: str = "job") -> dict:
    """``job`` (a job file's JSON object) with its shape checked: a known kind, no unknown field, every
    required one, each of its JSON type (None stands for an absent optional field), cases not empty;
    a :class:`JobFileError` otherwise. What its settings and cases hold is checked by :func:`parse_job`."""
    if not isinstance(job, dict) or job.get("kind") not in JOBS:
        kind = job.get("kind") if isinstance(job, dict) else None
        raise JobFileError(f"{where}: 'kind' must be one of {', '.join(JOBS)}, got {kind!r}")
    cls = JOBS[job["kind"]]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(job) - set(fields) - {"kind"})
    if unknown:
        raise JobFileError(f"{where}: unknown field(s) {', '.join(unknown)} for a {cls.kind} job")
    hints = typing.get_type_hints(cls)
    for name, f in fields.items():
        value = job.get(name)
        if value is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise JobFileError(f"{where}: a {cls.kind} job needs {name!r}")
            continue
        kind = _json_type(hints[name])
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise JobFileError(f"{where}: {name!r} is {value!r}, not {kind.__name__}")
    if "cases" in fields and not job["cases"]:
        raise JobFileError(f"{where}: 'cases' is empty")
    return job


def parse_job(job: object, where: str = "job") -> Job:
    """The typed job of a job file's JSON object: its shape checked (:func:`check_job`), then each settings
    object and case built and type-checked (:func:`WeakSegLib.options.from_dict`: a bad one is an
    :class:`~WeakSegLib.errors.InputError` naming it)."""
    cls = JOBS[check_job(job, where)["kind"]]
    hints = typing.get_type_hints(cls)
    typed = {}
    for name in (f.name for f in dataclasses.fields(cls)):
        value, hint = job.get(name), hints[name]
        if value is None:  # an optional field left out
            continue
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if item is not None and dataclasses.is_dataclass(item):
            typed[name] = [from_dict(item, case, "job case") for case in value]
        elif dataclasses.is_dataclass(hint):
            typed[name] = from_dict(hint, value, f"job {name}")
        else:
            typed[name] = value
    return cls(**typed)

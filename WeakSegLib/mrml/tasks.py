"""Background jobs started from MRML nodes, with their results put back into nodes.

Each ``start_*`` function writes its inputs (volume nodes as NRRD through SimpleITK, boxes as box JSON)
into a work folder, starts ``python -m WeakSegLib.app.worker`` on them (:func:`WeakSegLib.app.jobs.start_job`)
and returns a :class:`NodeJob`. The caller polls it (a Qt timer in the GUI; :meth:`NodeJob.wait` in a
script); when the worker has finished, the job reads the worker's output back into the scene once.

Work folders: training and tightener training use ``<model folder>/.job`` (stable paths, so running the
same job again resumes from its checkpoint); tightening and prediction use a fresh temporary folder,
removed when they succeed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from WeakSegLib import config as cfg
from WeakSegLib import events
from WeakSegLib.app import job_types
from WeakSegLib.app.jobs import EXIT_CANCELLED, EXIT_CODES, EXIT_OK, JobHandle, start_job
from WeakSegLib.errors import InputError, WeakSegError
from WeakSegLib.io.boxes import BoxSet, load_boxes, save_boxes
from WeakSegLib.io.card import TightenerCard, read_card
from WeakSegLib.io.segfile import SEGMENTATION_SUFFIX
from WeakSegLib.io.volume import Volume, read_label_volume, write_volume
from WeakSegLib.mrml.nodes import (
    labelmap_from_segmentation,
    segmentation_from_labelmap,
    volume_from_node,
    volume_from_node_geometry,
)
from WeakSegLib.options import from_dict

JOB_FOLDER = ".job"


class JobFailed(WeakSegError):
    """A background job ended without a result (error, cancel or killed worker); the message says why."""


class NodeJob:
    """A worker started from nodes. Poll it; once it has ended, ``result`` or ``error`` is set.

    Polling never blocks (a GUI polls from a timer): the job has ended when every process of the worker
    has (:meth:`WeakSegLib.app.jobs.JobHandle.finished`). When ``scene`` closes, a job whose result goes
    into its nodes (prediction, tightening) is cancelled, and any other (training: the result is a folder)
    is detached: it runs on, but gives its events to no listener and its end touches no node.

    Attributes:
        kind: the job kind (``train``, ``predict``, ``tighten-train``, ``tighten``, ``predict-cases``).
        events: every event seen so far (dicts, in order).
        result: what ``finish`` made of the worker's output (a segmentation node, boxes, a model folder).
        error: why the job gave no result, or None.
        listeners: callables given each new event by :meth:`poll` (e.g. :meth:`TrainingCurves.add`).
        detached: the scene it was started from has closed (see above).
    """

    def __init__(self, kind: str, handle: JobHandle, workdir: Path, finish: Callable[[], Any],
                 cleanup: bool = False, scene: Any = None, on_scene_close: str = "cancel") -> None:
        self.kind = kind
        self.handle = handle
        self.workdir = workdir
        self.events: list[dict] = []
        self.result: Any = None
        self.error: str | None = None
        self.listeners: list[Callable[[dict], Any]] = []
        self.detached = False
        self._finish = finish
        self._cleanup = cleanup
        self._done = False
        self._scene, self._scene_tag = scene, None
        if scene is not None:
            job = weakref.ref(self)  # the scene's observer must not keep the job alive

            def closing(caller: Any, event: Any) -> None:
                if job() is not None:
                    job()._scene_closing(on_scene_close)

            self._scene_tag = scene.AddObserver(scene.StartCloseEvent, closing)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def cancelled(self) -> bool:
        return self._done and self.handle.exit_code == EXIT_CANCELLED

    def status(self) -> str:
        """``running``, ``finished``, ``cancelled``, ``bad input``, …"""
        return self.handle.status

    def then(self, step: Callable[[Any], Any]) -> "NodeJob":
        """Run ``step(result)`` after the job's own finishing step; its return value becomes the result."""
        finish = self._finish
        self._finish = lambda: step(finish())
        return self

    def poll(self) -> list[dict]:
        """New events since the last call (also given to the listeners); once every process of the job
        has ended, read its output back (once). Never blocks."""
        ended = not self._done and self.handle.finished()
        new = self.handle.events()  # after finished(): every event of an ended job is queued by now
        self.events.extend(new)
        for event in new:
            for listener in list(self.listeners):
                listener(event)
        if ended:
            self._end()
        return new

    def _end(self) -> None:
        self._done = True
        self._forget_scene()
        code = self.handle.exit_code
        if code == EXIT_OK:
            try:
                self.result = self._finish()
            except WeakSegError as exc:
                self.error = str(exc)
            except Exception as exc:  # a fault of WeakSeg itself: the job ends with its traceback, never half-done
                self.error = (f"{self.kind} finished but its result could not be read back: {type(exc).__name__}: "
                              f"{exc}\n{traceback.format_exc()}")
            else:
                if self._cleanup:
                    shutil.rmtree(self.workdir, ignore_errors=True)
            return
        messages = [e.get("message") for e in self.events if e.get("event") in (events.ERROR, events.CANCELLED)]
        reason = next((m for m in reversed(messages) if m), None)
        self.error = f"{self.kind} {EXIT_CODES.get(code, f'exited with code {code}')}" + (f": {reason}" if reason
                                                                                            else "")
        if code not in EXIT_CODES or code == 1:
            self.error += f"\n--- worker log ({self.handle.log_path}) ---\n{self.handle.log()[-4000:]}"

    def wait(self, timeout: float | None = None, on_event: Callable[[dict], None] | None = None,
             interval: float = 0.2) -> Any:
        """Block until the job ends; call ``on_event`` for each event; return ``result``.

        Raises :class:`JobFailed` when the job ended without a result, :class:`TimeoutError` after
        ``timeout`` seconds (the job keeps running; cancel it if you no longer want it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if on_event is not None:
            self.listeners.append(on_event)
        try:
            while not self._done:
                self.poll()
                if self._done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{self.kind} job still running after {timeout} s")
                time.sleep(interval)
        finally:
            if on_event is not None and on_event in self.listeners:
                self.listeners.remove(on_event)
        if self.error is not None:
            raise JobFailed(self.error)
        return self.result

    def cancel(self) -> None:
        """Ask the worker to stop (at its next batch; a training checkpoint stays); returns at once. The job
        ends, cancelled, on a later :meth:`poll` (:meth:`wait` to block until then)."""
        if not self._done:
            self.handle.request_cancel()

    def progress(self) -> float | None:
        """Fraction done (0–1) from the latest progress event, or None before the first one."""
        return events.fraction_done(self.events)

    def _scene_closing(self, policy: str) -> None:
        self._forget_scene()
        if self._done:
            return
        self.detached = True
        self.listeners.clear()
        if policy == "cancel":
            self.cancel()
            self._finish = lambda: None  # a worker that ended just before must not fill the next scene

    def _forget_scene(self) -> None:
        if self._scene is not None and self._scene_tag is not None:
            self._scene.RemoveObserver(self._scene_tag)
        self._scene, self._scene_tag = None, None


def _write_volume(node: Any, path: Path) -> str:
    write_volume(volume_from_node(node), path)
    return str(path)


def _write_labels(node: Any, reference_node: Any, path: Path) -> str:
    """A label volume node, or a segmentation node exported on ``reference_node``'s grid, as a label file."""
    if not node.IsA("vtkMRMLSegmentationNode"):
        return _write_volume(node, path)
    array, _ = labelmap_from_segmentation(node, reference_node)
    grid = volume_from_node_geometry(reference_node)
    write_volume(Volume(array.astype(np.uint8 if array.max() < 256 else np.int16), grid.spacing, grid.origin,
                        grid.direction), path)
    return str(path)


def chosen_folder(value: str | Path | None, what: str) -> Path:
    """``value`` as a folder path; an empty one (a path field left blank in a panel) is an
    :class:`~WeakSegLib.errors.InputError` naming ``what``, never the working directory."""
    if value is None or not str(value).strip():
        raise InputError(f"choose the {what} first")
    return Path(value)


def _job_folder(workdir: str | Path | None, model_folder: Path) -> Path:
    """``workdir``, or the model folder's stable job folder (so a job run again resumes); created."""
    folder = Path(workdir) if workdir is not None else model_folder / JOB_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_training(volume_node: Any, boxset: BoxSet, out_folder: str | Path, config: dict | None = None,
                   reference_node: Any = None, resume: bool = True, python: str | Sequence[str] | None = None,
                   workdir: str | Path | None = None, gpus: int = 1) -> NodeJob:
    """Train a segmentation model from the boxes on one volume; the result is the model folder (Path).
    ``gpus`` > 1 trains in that many processes, one GPU each (:mod:`WeakSegLib.app.launch`).

    ``config`` holds :class:`~WeakSegLib.config.TrainConfig` fields (``recipe``, ``epochs``, ...), checked
    before any file is written. ``reference_node`` (a label volume or segmentation node, optional) is only
    used to report Dice per epoch.
    """
    settings = from_dict(cfg.TrainConfig, config, "training settings").validate()
    out = chosen_folder(out_folder, "output model folder")
    folder = _job_folder(workdir, out)
    case = cfg.TrainCase(_write_volume(volume_node, folder / "image.nrrd"),
                     boxes=str(save_boxes(boxset, folder / "boxes.json")))
    if reference_node is not None:
        case.eval_mask = _write_labels(reference_node, volume_node, folder / "reference.nrrd")
    job = job_types.TrainJob(str(out), [case], settings, resume=bool(resume), gpus=int(gpus))
    return NodeJob("train", start_job(job, folder, python), folder, lambda: out, scene=volume_node.GetScene(),
                   on_scene_close="detach")


def start_dataset_training(cases: Sequence[cfg.TrainCase], out_folder: str | Path, config: dict | None = None,
                           resume: bool = True, python: str | Sequence[str] | None = None,
                           workdir: str | Path | None = None, gpus: int = 1) -> NodeJob:
    """Train one model on the files of several cases (a worklist's boxed cases); the result is the model
    folder (Path). ``config``: :class:`~WeakSegLib.config.TrainConfig` fields, checked first."""
    settings = from_dict(cfg.TrainConfig, config, "training settings").validate()
    if not cases:
        raise WeakSegError("no case has a box yet: box at least one case to train")
    out = chosen_folder(out_folder, "output model folder")
    folder = _job_folder(workdir, out)
    job = job_types.TrainJob(str(out), list(cases), settings, resume=bool(resume), gpus=int(gpus))
    return NodeJob("train", start_job(job, folder, python), folder, lambda: out)


def _payload_job(kind: str, job: job_types.Job, python: str | Sequence[str] | None) -> NodeJob:
    """Start ``job`` in a temporary folder (removed afterwards); its result is the worker's ``done`` event."""
    folder = Path(tempfile.mkdtemp(prefix="weakseg-"))
    handle = start_job(job, folder, python)

    def finish() -> dict:
        return next(e for e in reversed(handle.history) if e.get("event") == events.DONE)

    return NodeJob(kind, handle, folder, finish, cleanup=True)


def start_dataset_prediction(model_folder: str | Path, cases: Sequence[tuple[str, str, str | None]],
                             out_dir: str | Path, options: cfg.PredictOptions | None = None,
                             python: str | Sequence[str] | None = None, suffix: str = SEGMENTATION_SUFFIX) -> NodeJob:
    """Predict every ``(name, image, reference mask or None)`` into ``out_dir/<name>.seg.nrrd`` (Slicer
    segmentation files, segments named and coloured from the card; a failing case is skipped). The
    result is the worker's ``done`` payload: ``predictions`` (name → file or None), ``failed``
    (name → message) and, when references were given, ``scores`` (the scores file of ``weakseg
    evaluate``). ``options``: how to predict (device, post-processing)."""
    read_card(chosen_folder(model_folder, "model folder"))  # a wrong folder fails here, not in the worker
    out = chosen_folder(out_dir, "output folder")
    out.mkdir(parents=True, exist_ok=True)
    named = [job_types.PredictCase(n, str(i), str(m) if m else None) for n, i, m in cases]
    job = job_types.PredictCasesJob(str(model_folder), named, str(out), suffix=suffix,
                                    **vars(options or cfg.PredictOptions()))
    return _payload_job("predict-cases", job, python)


def start_ranking(model_folder: str | Path, dataset: str | Path, device: str = cfg.DEFAULT_DEVICE,
                  python: str | Sequence[str] | None = None) -> NodeJob:
    """Rank a dataset's cases for review (``weakseg rank``: predictions beside the dataset file, each
    prediction and score into it). The result is the worker's ``done`` payload: ``ranking`` (the table),
    ``ranked`` ([name, score], most uncertain first) and ``failed`` (name → message)."""
    read_card(chosen_folder(model_folder, "model folder"))  # a wrong folder fails here, not in the worker
    job = job_types.RankJob(str(model_folder), str(dataset), device=device)
    return _payload_job("rank", job, python)


def start_tightener_training(cases: Sequence[tuple[Any, Any]], out_folder: str | Path, config: dict | None = None,
                             resume: bool = True, python: str | Sequence[str] | None = None,
                             workdir: str | Path | None = None) -> NodeJob:
    """Train a box tightener on fully labelled cases ``[(volume node, label volume or segmentation node)]``.

    ``config`` holds :class:`~WeakSegLib.config.TightenerConfig` fields, checked before any file is
    written. The result is the tightener folder (Path).
    """
    settings = from_dict(cfg.TightenerConfig, config, "tightener settings").validate()
    out = chosen_folder(out_folder, "tightener folder")
    folder = _job_folder(workdir, out)
    files = []
    for index, (image_node, label_node) in enumerate(cases):
        image = _write_volume(image_node, folder / f"case{index}-image.nrrd")
        labels = _write_labels(label_node, image_node, folder / f"case{index}-labels.nrrd")
        files.append(cfg.TightenerCase(image, labels))
    job = job_types.TightenTrainJob(str(out), files, settings, resume=bool(resume))
    return NodeJob("tighten-train", start_job(job, folder, python), folder, lambda: out,
                   scene=cases[0][0].GetScene() if cases else None, on_scene_close="detach")


def start_tightening(tightener_folder: str | Path, volume_node: Any, boxset: BoxSet, settings: dict | None = None,
                     device: str = cfg.DEFAULT_DEVICE, python: str | Sequence[str] | None = None) -> NodeJob:
    """Tighten the per-slice boxes cut from ``boxset``'s 3D boxes (``settings``: :class:`cfg.TightenSettings`
    fields, checked first); the result is ``(BoxSet, report)``."""
    # a wrong folder or setting fails here, not in the worker
    read_card(chosen_folder(tightener_folder, "tightener folder"), TightenerCard)
    typed = from_dict(cfg.TightenSettings, settings, "tightening settings")
    folder = Path(tempfile.mkdtemp(prefix="weakseg-"))
    job = job_types.TightenJob(str(tightener_folder), _write_volume(volume_node, folder / "image.nrrd"),
                     str(save_boxes(boxset, folder / "boxes3d.json")), str(folder / "boxes2d.json"), typed,
                     device=device)
    handle = start_job(job, folder, python)

    def finish() -> tuple[BoxSet, dict]:
        report = next((e for e in reversed(handle.history) if e.get("event") == events.DONE), {})
        return load_boxes(folder / "boxes2d.json"), report

    return NodeJob("tighten", handle, folder, finish, cleanup=True, scene=volume_node.GetScene())


def start_prediction(model_folder: str | Path, volume_node: Any, segmentation_node: Any = None,
                     options: cfg.PredictOptions | None = None, python: str | Sequence[str] | None = None) -> NodeJob:
    """Predict a label map for ``volume_node`` and put it into a segmentation node (new when None).

    Segments are named and coloured from the model card; the segmentation references the input
    volume's geometry; ``options``: how to predict (the card's post-processing is applied unless
    ``options.postprocess`` is False). The result is the segmentation node.
    """
    card = read_card(chosen_folder(model_folder, "model folder"))
    folder = Path(tempfile.mkdtemp(prefix="weakseg-"))
    job = job_types.PredictJob(str(model_folder), _write_volume(volume_node, folder / "image.nrrd"),
                     str(folder / "prediction.nrrd"), **vars(options or cfg.PredictOptions()))
    handle = start_job(job, folder, python)
    scene = volume_node.GetScene()

    def finish() -> Any:
        labels = read_label_volume(folder / "prediction.nrrd").array
        return segmentation_from_labelmap(labels, volume_node, card.label_table(), segmentation_node,
                                          name=f"{volume_node.GetName()} {card.recipe}", scene=scene)

    return NodeJob("predict", handle, folder, finish, cleanup=True, scene=scene)


def model_summary(folder: str | Path) -> str:
    """A few lines describing a model folder's card (recipe, labels, input, metrics), for the GUI."""
    card = read_card(folder)
    labels = ", ".join(f"{e.value}: {e.name}" for e in card.labels)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in card.metrics.items() if isinstance(v, (int, float)))
    spacing = " × ".join(f"{s:.2f}" for s in card.input.preprocessing.spacing or [])
    steps = ", ".join(f"{value}: {step}" for value, step in card.postprocess_steps().items() if step != "none")
    return "\n".join(line for line in (
        f"recipe: {card.recipe}    network: {card.network.name} ({card.input.mode})",
        f"labels: {labels}",
        f"trained on spacing {spacing} mm" if spacing else "",
        f"metrics: {metrics}" if metrics else "",
        f"post-processing: {steps}" if steps else "") if line)

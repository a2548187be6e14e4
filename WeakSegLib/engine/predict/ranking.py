"""Which cases need a person first: a trained model predicts the cases of a dataset that have neither a
mask nor a review decision and scores how much each prediction needs review (``weakseg rank``).

Each case is predicted twice, from the image and from its mirror image (mirrored back: nnU-Net's
test-time mirroring, :func:`WeakSegLib.engine.predict.inference.input_probabilities`); the prediction written
is the argmax of the two probability maps' mean. The **review score** in [0, 1] (higher: look first) is

    score = 1 − mean over classes c of  a_c · v_c

- **agreement** ``a_c = 2 Σ p·q / (Σ p + Σ q)``: the soft Dice of class c's probabilities ``p`` (plain)
  and ``q`` (mirrored) over the voxels. It is 1 only when both maps are certain (0 or 1) and equal: it
  falls where the network hesitates (a map of 0.5s scores 0.5 even against itself) and where mirroring
  changes its answer — the test-time-augmentation uncertainty of Wang et al. (Neurocomputing 2019),
  which tracks the error of a prediction. No object in either map gives 0: a model that finds
  nothing in a scan of the cohort is as unsure as it can be.
- **plausibility** ``v_c = min(V/M, M/V)``: the class's predicted volume V (mm³) against the median M of
  the volumes predicted for it over the ranked cases; 0 for an empty prediction. A confident prediction
  of twice or half the usual size is a likely miss or leak (the volume check of quality-control
  pipelines) that the agreement alone does not see.

Both factors are 1 for a certain, mirror-stable, typical-sized prediction. The benchmark
``Testing/benchmarks/bench_review.py`` reports the score's Spearman correlation with 1 − Dice.

The predictions go to a folder (locked while written, every file atomic), the table to a CSV file
sorted most uncertain first, and each case's prediction and score into the dataset file as its
``predicted`` review (:mod:`WeakSegLib.io.review`), which the Slicer case list shows.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from WeakSegLib import events
from WeakSegLib.config import DEFAULT_DEVICE
from WeakSegLib.engine.predict.devices import resolve_device
from WeakSegLib.engine.predict.inference import input_probabilities, label_volume, prediction_path
from WeakSegLib.engine.predict.model import load_model
from WeakSegLib.errors import CancelledError, InputError, WeakSegError
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import atomic_write_bytes, check_output_folder, check_writable
from WeakSegLib.io.card import ModelCard
from WeakSegLib.io.dataset import Dataset, DatasetCase, load_dataset, save_dataset
from WeakSegLib.io.lock import FolderLock
from WeakSegLib.io.review import record_prediction
from WeakSegLib.io.volume import read_volume, write_volume

#: the statuses of the cases ``rank`` predicts: the unlabelled ones (no mask, no box, no decision; or predicted before)
RANKED_STATUSES = ("new", "predicted")
#: the ranking table's file name beside the dataset file, unless told otherwise
RANKING_FILE = "ranking.csv"
#: the predictions' folder beside the dataset file, unless told otherwise
PREDICTIONS_FOLDER = "predictions"
#: the ranking table's columns
COLUMNS = ("case", "score", "agreement", "plausibility", "volume_ml", "prediction")


@dataclass
class Ranked:
    """One ranked case: what the score is made of, per foreground class (card order)."""

    name: str
    prediction: str
    agreement: list[float]
    volume_mm3: list[float]
    plausibility: list[float] | None = None
    score: float | None = None


def agreement(p: torch.Tensor, q: torch.Tensor) -> list[float]:
    """Soft Dice ``2 Σ p·q / (Σ p + Σ q)`` per class of two probability maps ``(C, *S)`` (0 where both
    are empty)."""
    p, q = p.flatten(1).double(), q.flatten(1).double()
    total = p.sum(1) + q.sum(1)
    return torch.where(total > 0, 2 * (p * q).sum(1) / total.clamp(min=1e-12), 0.0).tolist()


def plausibility(volumes: np.ndarray) -> np.ndarray:
    """``min(V/M, M/V)`` of each case's class volume ``(cases, C)`` against the class's median M over
    the cases; 0 where V or M is 0."""
    median = np.median(volumes, axis=0, keepdims=True)
    low, high = np.minimum(volumes, median), np.maximum(volumes, median)
    return np.divide(low, high, out=np.zeros_like(volumes, dtype=float), where=high > 0)


def score_cases(ranked: Sequence[Ranked]) -> None:
    """Fill in each case's plausibility and score (module docstring), over all of ``ranked`` at once."""
    if not ranked:
        return
    plaus = plausibility(np.array([r.volume_mm3 for r in ranked], float))
    for r, v in zip(ranked, plaus):
        r.plausibility = v.tolist()
        r.score = float(1.0 - np.mean(np.asarray(r.agreement) * v))


def rank_one(model: tuple[torch.nn.Module, ModelCard], image: str, out: Path, name: str,
             device: torch.device, should_stop: Callable[[], bool] | None = None) -> Ranked:
    """Predict ``image`` plain and mirrored, write the prediction to ``out``, and measure its agreement
    and class volumes."""
    network, card = model
    volume = read_volume(image)
    plain = input_probabilities(network, card, volume, device, should_stop=should_stop, name=image)
    mirrored = input_probabilities(network, card, volume, device, should_stop=should_stop, name=image, mirror=True)
    labels = label_volume(card, (plain + mirrored) / 2)
    write_volume(volume.with_array(labels), out)
    voxel = float(np.prod(volume.spacing))
    volumes = [float((labels == entry.value).sum()) * voxel for entry in card.labels]
    return Ranked(name, str(out), agreement(plain[1:], mirrored[1:]), volumes)


def ranking_file(dataset: Dataset, out: str | os.PathLike | None = None) -> Path:
    """Where the ranking table goes: ``out``, or :data:`RANKING_FILE` beside the dataset file."""
    return Path(out) if out else dataset.path.parent / RANKING_FILE


def ranked_cases(dataset: Dataset, split: str | None = None) -> list[DatasetCase]:
    """The cases ``rank`` predicts (:data:`RANKED_STATUSES`), of ``split`` when given."""
    cases = dataset.cases if split is None else dataset.split(split)
    return [c for c in cases if c.status in RANKED_STATUSES]


def ranking_csv(ranked: Sequence[Ranked]) -> str:
    """The table of :data:`COLUMNS`, one row per case in the given order."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in ranked:
        writer.writerow([r.name, f"{r.score:.4f}", f"{np.mean(r.agreement):.4f}", f"{np.mean(r.plausibility):.4f}",
                         f"{sum(r.volume_mm3) / 1000:.3f}", r.prediction])
    return text.getvalue()


def rank_dataset(model_dir: str | os.PathLike, dataset: Dataset, out_csv: str | os.PathLike,
                 pred_dir: str | os.PathLike | None = None, *, split: str | None = None, device: str = DEFAULT_DEVICE,
                 on_event: EventSink | None = None,
                 should_stop: Callable[[], bool] | None = None) -> tuple[list[Ranked], list[tuple[str, str]]]:
    """Rank the cases of ``dataset`` that need one (:func:`ranked_cases`): predictions into ``pred_dir``
    (default: :data:`PREDICTIONS_FOLDER` beside the dataset file), the table into ``out_csv``, each
    prediction and score into the dataset file (module docstring). The dataset file is read again just
    before it is written and only the ranked cases' reviews change, so boxes saved meanwhile (the Slicer
    panel saves as the user draws) are kept; a case boxed or decided meanwhile keeps its new state.

    Every output is checked before the first case; a case that fails (unreadable image) is reported
    (a ``case`` event with its ``error``) and left out, the others are ranked.

    Returns:
        The ranked cases, most uncertain first, and ``(name, error)`` of the cases left out.

    Raises:
        InputError: no case to rank.
    """
    cases = ranked_cases(dataset, split)
    if not cases:
        raise InputError(f"{dataset.path}: no case to rank (every case{'' if split is None else ' of ' + split} "
                         "has a mask, boxes or a review decision)")
    out = check_output_folder(pred_dir or dataset.path.parent / PREDICTIONS_FOLDER, "prediction folder")
    check_writable(out_csv, "ranking table")
    check_writable(dataset.path, "dataset file")
    network, card = load_model(model_dir)
    dev = resolve_device(device)
    network = network.to(dev)
    emit = on_event or events.ignore
    ranked, failed = [], []
    with FolderLock(out, "prediction"):
        for done, case in enumerate(cases, 1):
            try:
                r = rank_one((network, card), case.image, prediction_path(out, case.name), case.name, dev,
                             should_stop)
                ranked.append(r)
                emit(events.case(done, len(cases), case.name, prediction=r.prediction))
            except CancelledError:
                raise
            except WeakSegError as exc:
                failed.append((case.name, str(exc)))
                emit(events.case(done, len(cases), case.name, error=str(exc)))
    score_cases(ranked)
    ranked.sort(key=lambda r: -r.score)
    atomic_write_bytes(out_csv, ranking_csv(ranked).encode())
    fresh = load_dataset(dataset.path)
    waiting = {c.name: c for c in fresh.cases if c.status in RANKED_STATUSES}
    for r in ranked:
        if r.name in waiting:
            record_prediction(waiting[r.name], r.prediction, r.score)
    save_dataset(fresh, fresh.path)
    return ranked, failed

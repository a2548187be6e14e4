"""Predictions scored against reference masks: per case and label, and over a test set.

Each row of an :class:`Evaluation` is one case and one label value: Dice, IoU, HD95 (mm; None when
the prediction or the reference of that label is empty), the two volumes and their difference (mL,
and % of the reference). The summary gives mean ± sd over the cases of each label; the cases with no
prediction file and those that could not be scored are listed, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from WeakSegLib.engine.predict.metrics import dice, hd95, iou
from WeakSegLib.errors import WeakSegError
from WeakSegLib.io.names import case_file
from WeakSegLib.io.segfile import SEGMENTATION_SUFFIX
from WeakSegLib.io.volume import READ_SUFFIXES, Volume, check_same_grid, read_label_volume

#: the per-row numbers of an evaluation, in column order
METRICS = ("dice", "iou", "hd95", "volume_ml", "reference_ml", "volume_difference_ml", "volume_difference_pct")


@dataclass
class Score:
    """One case and label: overlap, surface distance (mm) and volumes (mL)."""

    case: str
    label: int
    dice: float
    iou: float
    hd95: float | None
    volume_ml: float
    reference_ml: float
    volume_difference_ml: float
    volume_difference_pct: float | None


def score_volumes(case: str, pred: Volume, ref: Volume, labels: Sequence[int] | None = None) -> list[Score]:
    """One :class:`Score` per label of ``labels`` (default: every non-zero value of either volume).

    Raises:
        InputError: the two volumes are not on one grid.
    """
    check_same_grid(ref, pred, f"{case}: reference", "prediction")
    if labels is None:
        labels = sorted((set(np.unique(ref.array).tolist()) | set(np.unique(pred.array).tolist())) - {0})
    voxel_ml = float(np.prod(ref.spacing)) / 1000.0
    rows = []
    for value in labels:
        p, r = pred.array == value, ref.array == value
        distance = hd95(p, r, tuple(ref.spacing)[::-1]) if p.any() and r.any() else None
        vp, vr = float(p.sum()) * voxel_ml, float(r.sum()) * voxel_ml
        rows.append(Score(case, int(value), dice(p, r), iou(p, r), distance, vp, vr, vp - vr,
                          100.0 * (vp - vr) / vr if vr > 0 else None))
    return rows


def label_difference(predicted: set[int], reference: set[int]) -> str | None:
    """What differs between the label values of a prediction and of its reference, or None."""
    parts = [f"label(s) {sorted(a - b)} only in the {where}" for a, b, where in
             ((predicted, reference, "prediction"), (reference, predicted, "reference")) if a - b]
    return "; ".join(parts) or None


def _mean_sd(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None and math.isfinite(v)]
    if not got:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(np.mean(got)), "sd": float(np.std(got, ddof=1)) if len(got) > 1 else 0.0, "n": len(got)}


@dataclass
class Evaluation:
    """The scores of a set of cases (module docstring).

    Attributes:
        scores: one row per case and label.
        missing: cases with no prediction file.
        failed: ``{case: why}`` for predictions or references that could not be read or compared.
    """

    scores: list[Score] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[int, dict[str, dict]]:
        """``{label: {metric: {"mean", "sd", "n"}}}`` over the scored cases (sd with n − 1; HD95 over the
        cases where it is defined)."""
        out = {}
        for label in sorted({s.label for s in self.scores}):
            rows = [s for s in self.scores if s.label == label]
            out[label] = {m: _mean_sd([getattr(s, m) for s in rows]) for m in METRICS}
        return out

    def to_dict(self) -> dict:
        return {"cases": [asdict(s) for s in self.scores],
                "summary": {str(k): v for k, v in self.summary().items()},
                "missing": self.missing, "failed": self.failed}

    def label_mismatches(self) -> dict[str, str]:
        """``{case: what differs}`` for the cases whose prediction and reference hold different label
        values (a class predicted that the reference lacks, or the reverse: :func:`label_difference`)."""
        cases = dict.fromkeys(s.case for s in self.scores)
        found = {case: label_difference({s.label for s in self.scores if s.case == case and s.volume_ml > 0},
                                        {s.label for s in self.scores if s.case == case and s.reference_ml > 0})
                 for case in cases}
        return {case: why for case, why in found.items() if why}

    def to_csv(self) -> str:
        """One row per case and label; the cases without a score follow with their reason."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "label", *METRICS, "note"])
        for s in self.scores:
            writer.writerow([s.case, s.label, *("" if getattr(s, m) is None else f"{getattr(s, m):.6g}" for m in METRICS),
                             ""])
        for name in self.missing:
            writer.writerow([name, "", *[""] * len(METRICS), "no prediction"])
        for name, why in self.failed.items():
            writer.writerow([name, "", *[""] * len(METRICS), why])
        return buffer.getvalue()


#: the scores of a batch prediction written beside the predictions (:meth:`Evaluation.to_dict`)
SCORES_FILE = "scores.json"


def find_prediction(pred_dir: str | os.PathLike, name: str) -> Path | None:
    """The prediction of case ``name`` in ``pred_dir`` (``<name>`` with an image or segmentation file
    ending), or None."""
    for suffix in (*READ_SUFFIXES, SEGMENTATION_SUFFIX):
        path = case_file(pred_dir, name, suffix)
        if path.is_file():
            return path
    return None


def evaluate_cases(pred_dir: str | os.PathLike, cases: Sequence[tuple[str, str]],
                   labels: Sequence[int] | None = None) -> Evaluation:
    """Score the prediction of each ``(name, reference mask path)`` found in ``pred_dir``
    (:func:`find_prediction`) against its reference."""
    result = Evaluation()
    for name, reference in cases:
        path = find_prediction(pred_dir, name)
        if path is None:
            result.missing.append(name)
            continue
        try:
            result.scores += score_volumes(name, read_label_volume(path), read_label_volume(reference), labels)
        except WeakSegError as exc:
            result.failed[name] = str(exc)
    return result

"""A dataset being boxed case by case: the case list of the Slicer Train panel, on disk.

A :class:`Worklist` is a dataset file (:mod:`WeakSegLib.io.dataset`) plus the rule of where each case's
boxes live: the box file its entry names, else ``<case name>.boxes.json`` beside the dataset file
(boxes are written only inside the dataset's folder: a box file named elsewhere is read, and saving
writes ``<case name>.boxes.json`` instead).
Saving a case's boxes writes that file (atomically) and, the first time, names it in the dataset file
and makes the case a training case (also written atomically), so what the user drew is on disk
whenever the panel saves — closing Slicer loses nothing, and ``weakseg train --dataset`` trains on the
same cases as the panel. A case whose last box is deleted loses its box file and is not trained on.
The review loop's decisions (:mod:`WeakSegLib.io.review`) go through it too: boxing a case that waits
for a review or was rejected ends its review, and an accepted case trains on its accepted mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from WeakSegLib.config import TrainCase
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import BoxSet, load_boxes, save_boxes
from WeakSegLib.io.dataset import Dataset, DatasetCase, init_dataset, load_dataset, save_dataset
from WeakSegLib.io.names import case_file, check_case_name, inside
from WeakSegLib.io.review import accept, reject

#: the dataset file a folder opened as a worklist gets
DATASET_FILE = "dataset.json"
#: the ending of the box files the worklist writes, ``<case>.boxes.json``
BOXES_SUFFIX = ".boxes.json"


@dataclass
class CaseRow:
    """What the panel's case table shows of one case."""

    name: str
    image: str
    boxes: int  # boxes in its box file (0: none yet)
    reference: bool  # it has a mask (reference for Dice per epoch and evaluation, or accepted)
    split: str
    status: str  # :data:`WeakSegLib.io.dataset.STATUSES`
    score: float | None  # review score of its ranked prediction (higher: review first), or None


class Worklist:
    """The cases of a dataset file and their box files (module docstring)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._counts: dict[int, int] = {}  # boxes per case, read once and kept up to date by save_boxes

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Worklist":
        """A dataset file, or a folder of images (its ``dataset.json``, written by the rules of
        ``weakseg dataset init`` when the folder has none)."""
        path = Path(path)
        if path.is_dir():
            if not (path / DATASET_FILE).is_file():
                dataset, _ = init_dataset(path)
                save_dataset(dataset, path / DATASET_FILE)
            path = path / DATASET_FILE
        return cls(load_dataset(path))

    @staticmethod
    def check_new_names(path: str | os.PathLike, names: list[str]) -> None:
        """Raise :class:`InputError` if the dataset file ``path`` (when it exists) already has a case of one
        of ``names``, or ``names`` repeat one."""
        path = Path(path)
        for name in names:
            check_case_name(name)
        taken = {c.name for c in load_dataset(path).cases} if path.is_file() else set()
        clash = sorted({n for n in names if n in taken or names.count(n) > 1})
        if clash:
            raise InputError(f"{path} already has case(s) named {', '.join(clash)}")

    @classmethod
    def create(cls, path: str | os.PathLike, cases: list[DatasetCase]) -> "Worklist":
        """A new dataset file at ``path`` holding ``cases`` (its cases are added to those of an existing one)."""
        path = Path(path)
        cls.check_new_names(path, [c.name for c in cases])
        old = load_dataset(path).cases if path.is_file() else []
        dataset = Dataset(path, old + list(cases), path.parent.name)
        save_dataset(dataset, path)
        return cls(load_dataset(path))

    @property
    def path(self) -> Path:
        return self.dataset.path

    @property
    def cases(self) -> list[DatasetCase]:
        return self.dataset.cases

    def index(self, name: str) -> int:
        """The position of case ``name``."""
        for i, case in enumerate(self.cases):
            if case.name == name:
                return i
        raise InputError(f"{self.path} has no case named {name!r}")

    def boxes_path(self, index: int) -> Path:
        """Where case ``index``'s boxes are read from (module docstring)."""
        case = self.cases[index]
        return Path(case.files["boxes"]) if "boxes" in case.files else self._own_boxes_path(index)

    def _own_boxes_path(self, index: int) -> Path:
        return case_file(self.path.parent, self.cases[index].name, BOXES_SUFFIX)

    def _writable_boxes_path(self, index: int) -> Path:
        """Where case ``index``'s boxes are written: the box file the dataset names when it lies in the
        dataset's folder (or below), else ``<case>.boxes.json`` beside the dataset file — a dataset file
        never makes WeakSeg write or delete outside its folder."""
        named = self.boxes_path(index)
        return named if inside(named, self.path.parent) else self._own_boxes_path(index)

    def boxes(self, index: int) -> BoxSet | None:
        """Case ``index``'s boxes, or None before any were saved."""
        path = self.boxes_path(index)
        return load_boxes(path) if path.is_file() else None

    def rows(self) -> list[CaseRow]:
        """One row per case, in the dataset's order."""
        rows = []
        for i, case in enumerate(self.cases):
            if i not in self._counts:
                boxes = self.boxes(i)
                self._counts[i] = 0 if boxes is None else len(boxes.boxes)
            rows.append(CaseRow(case.name, case.image, self._counts[i], "mask" in case.files, case.split, case.status,
                                None if case.review is None else case.review.score))
        return rows

    def save_boxes(self, index: int, boxset: BoxSet) -> Path:
        """Write case ``index``'s boxes; the first time, the dataset file names the box file and the case
        becomes a training case (a pending or rejected review ends: the case is boxed)."""
        path = save_boxes(boxset, self._writable_boxes_path(index))
        self._counts[index] = len(boxset.boxes)
        case = self.cases[index]
        pending = case.review is not None and case.review.state != "accepted"
        if case.files.get("boxes") != str(path) or case.split != "training" or pending:
            case.files["boxes"] = str(path)
            case.split = "training"
            case.review = None if pending else case.review
            save_dataset(self.dataset, self.path)
        return path

    def clear_boxes(self, index: int) -> Path:
        """Case ``index`` has no box any more: its box file is removed, the dataset file no longer names it,
        and the case is a test case again unless other labels (sizes, partial labels) train it."""
        path = self._writable_boxes_path(index)
        path.unlink(missing_ok=True)
        self._counts[index] = 0
        case = self.cases[index]
        split = "training" if set(case.files) & {"sizes", "partial"} else "test"
        if "boxes" in case.files or case.split != split:
            case.files.pop("boxes", None)
            case.split = split
            save_dataset(self.dataset, self.path)
        return path

    def accept(self, index: int, mask: str | os.PathLike | None = None, by: str | None = None) -> Path:
        """Accept case ``index``'s prediction, or the edited ``mask``, as its mask
        (:func:`WeakSegLib.io.review.accept`)."""
        return accept(self.dataset, self.cases[index].name, mask, by)

    def reject(self, index: int) -> None:
        """Send case ``index`` back to boxing (:func:`WeakSegLib.io.review.reject`)."""
        reject(self.dataset, self.cases[index].name)

    def review_order(self) -> list[int]:
        """The cases waiting for a review (``predicted``), highest score first."""
        waiting = [i for i, c in enumerate(self.cases) if c.status == "predicted"]
        return sorted(waiting, key=lambda i: -(self.cases[i].review.score or 0.0))

    def training_cases(self) -> tuple[list[TrainCase], list[str]]:
        """The accepted cases (trained on their accepted masks) and the cases with at least one box (their
        masks as the reference of the Dice per epoch) as training cases, and the names of the cases left
        out for having neither."""
        cases, skipped = [], []
        for i, case in enumerate(self.cases):
            if case.status == "accepted":
                cases.append(case.train_case())
                continue
            boxes = self.boxes(i)
            if boxes is None or not boxes.boxes:
                skipped.append(case.name)
                continue
            cases.append(TrainCase(case.image, boxes=str(self.boxes_path(i)), eval_mask=case.files.get("mask")))
        return cases, skipped

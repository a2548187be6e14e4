"""Dataset files: the cases of a cohort, in MONAI's datalist convention (``monai.data.load_decathlon_datalist``
reads them).

A dataset file is JSON; paths are relative to the file's folder (absolute paths are kept)::

    {"name": "vertebrae",
     "training": [{"image": "images/case01.nii.gz", "boxes": "images/case01.boxes.json",
                   "mask": "images/case01_mask.nii.gz"}, ...],
     "test": [{"image": "images/case07.nii.gz", "mask": "images/case07_mask.nii.gz"}, "images/case08.nii.gz"]}

A training case gives ``image`` and any of ``boxes``, ``mask``, ``sizes``, ``partial``, ``reference``,
``eval_mask`` (the inputs of :class:`WeakSegLib.config.TrainCase`); a test case gives ``image`` and
optionally ``mask`` (the reference ``evaluate`` scores against), or is just the image's path. An
optional ``name`` names a case (default: its image file's name without the ending); a case's name
becomes the name of its files in output folders, so it must be a safe file name
(:mod:`WeakSegLib.io.names`), or the dataset file is refused. ``label`` is read
as ``mask``, so a Medical Segmentation Decathlon ``dataset.json`` is a dataset file of fully labelled
training cases.

A case may carry a ``review`` object, the state of the review loop (:mod:`WeakSegLib.io.review`):
``{"state": "predicted", "prediction": "predictions/case08.nii.gz", "score": 0.31}`` after
``weakseg rank``, ``"accepted"`` once the (edited) prediction became the case's ``mask`` (it then trains
on that mask, not on its boxes), ``"rejected"`` while it waits for boxes. A case's :attr:`DatasetCase.status`
follows from it and from the inputs the case gives (:data:`STATUSES`).

:func:`init_dataset` writes one from a folder of files named after their image (:data:`COMPANIONS`);
:func:`check_dataset` reads every file of every case and reports all problems of each.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from WeakSegLib.config import SPLITS, TrainCase
from WeakSegLib.errors import InputError
from WeakSegLib.io.atomic import atomic_write_json
from WeakSegLib.io.fields import Fields, read_json
from WeakSegLib.io.names import check_case_name
from WeakSegLib.io.volume import READ_SUFFIXES, image_stem

#: the inputs a training case may name besides its image
TRAINING_INPUTS = ("boxes", "mask", "sizes", "partial", "reference", "eval_mask")
#: companion files of image ``<stem>.<ending>`` in a folder, by input: the name patterns ``init`` looks for
COMPANIONS = {"boxes": ("{stem}.boxes.json", "{stem}_boxes.json"),
              "sizes": ("{stem}.sizes.json", "{stem}_sizes.json"),
              "mask": ("{stem}_mask{ext}", "{stem}_label{ext}", "{stem}_labels{ext}", "{stem}_seg{ext}"),
              "partial": ("{stem}_partial{ext}", "{stem}_scribbles{ext}")}
#: the review states an entry records (module docstring)
REVIEW_STATES = ("predicted", "accepted", "rejected")
#: a case's status: ``new`` (nothing drawn), ``boxed``, a review state, or ``labelled`` (a mask given by hand)
STATUSES = ("new", "boxed", *REVIEW_STATES, "labelled")
_NOT_IMAGES = re.compile(r"_(mask|label|labels|seg|partial|scribbles|reference)$")


@dataclass
class Review:
    """Where a case stands in the review loop (module docstring).

    Attributes:
        state: one of :data:`REVIEW_STATES`.
        prediction: the ranked prediction's path (absolute), or None.
        score: its review score (:mod:`WeakSegLib.engine.predict.ranking`; higher: look first), or None.
    """

    state: str
    prediction: str | None = None
    score: float | None = None


@dataclass
class DatasetCase:
    """One case: its name, split, file paths (absolute) and review state."""

    name: str
    split: str
    image: str
    files: dict[str, str] = field(default_factory=dict)
    review: Review | None = None

    @property
    def status(self) -> str:
        """One of :data:`STATUSES`: the review state, else ``boxed`` / ``labelled`` / ``new`` by its inputs."""
        if self.review is not None:
            return self.review.state
        return "boxed" if "boxes" in self.files else "labelled" if "mask" in self.files else "new"

    def train_case(self) -> TrainCase:
        """The case as :class:`~WeakSegLib.config.TrainCase` (every input it names); an accepted case
        trains on its accepted mask alone (its boxes are left out)."""
        if self.status == "accepted":
            return TrainCase(self.image, **{k: v for k, v in self.files.items() if k != "boxes"})
        return TrainCase(self.image, **self.files)


@dataclass
class Dataset:
    """A dataset file's cases (paths resolved) and its name."""

    path: Path
    cases: list[DatasetCase]
    name: str = ""

    def split(self, name: str) -> list[DatasetCase]:
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return [c for c in self.cases if c.split == name]


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a dataset file (module docstring); paths resolved against its folder.

    Raises:
        InputError: missing or invalid file, no case, a case without an image, unknown inputs,
            two cases of one name.
    """
    path = Path(path)
    fields = Fields(read_json(path, "dataset file"), str(path))
    base = path.parent
    cases: list[DatasetCase] = []
    for split in SPLITS:
        for i, entry in enumerate(fields.items(split, [])):
            where = f"{path}: {split}[{i}]"
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict):
                raise InputError(f"{where} must be an object with an 'image' (or an image's path), got {entry!r}")
            if "label" in entry and "mask" not in entry:  # the Medical Segmentation Decathlon's name of the mask
                entry = {("mask" if k == "label" else k): v for k, v in entry.items()}
            f = Fields(entry, where)
            allowed = TRAINING_INPUTS if split == "training" else ("mask",)
            unknown = sorted(set(entry) - set(allowed) - {"image", "name", "fold", "review"})
            if unknown:
                raise InputError(f"{where} has unknown input(s) {', '.join(unknown)}; a {split} case gives image, "
                                 f"{', '.join(allowed)}")
            files = {k: str(base / f.text(k)) for k in allowed if entry.get(k) is not None}
            image = str(base / f.text("image"))
            review = _review(f, base, where) if entry.get("review") is not None else None
            if review is not None and review.state == "accepted" and "mask" not in files:
                raise InputError(f"{where}: an accepted case gives its accepted 'mask'")
            cases.append(DatasetCase(check_case_name(f.text("name", image_stem(image)), where), split, image, files,
                                     review))
    if not cases:
        raise InputError(f"{path}: the dataset lists no case (give 'training' and/or 'test' lists)")
    names = [c.name for c in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{path}: two cases are named {', '.join(twice)}; give them 'name's")
    return Dataset(path, cases, fields.text("name", ""))


def _review(entry: Fields, base: Path, where: str) -> Review:
    """A case entry's ``review`` object (module docstring)."""
    f = entry.sub("review")
    state = f.text("state")
    if state not in REVIEW_STATES:
        raise InputError(f"{where}: review state {state!r} is not one of {', '.join(REVIEW_STATES)}")
    prediction = f.text("prediction", None)
    return Review(state, None if prediction is None else str(base / prediction), f.number("score", None))


def _review_entry(review: Review, rel) -> dict:
    out: dict = {"state": review.state}
    if review.prediction is not None:
        out["prediction"] = rel(review.prediction)
    if review.score is not None:
        out["score"] = review.score
    return out


def save_dataset(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a dataset file, its paths relative to the file's folder."""
    path = Path(path).resolve()

    def rel(p: str) -> str:
        return os.path.relpath(p, path.parent)

    out: dict = {"name": dataset.name} if dataset.name else {}
    for split in SPLITS:
        entries = [{"name": c.name, "image": rel(c.image), **{k: rel(v) for k, v in c.files.items()},
                    **({"review": _review_entry(c.review, rel)} if c.review is not None else {})}
                   for c in dataset.split(split)]
        if entries:
            out[split] = entries
    return atomic_write_json(path, out)


def init_dataset(folder: str | os.PathLike, masks_for_training: bool = False) -> tuple[Dataset, list[str]]:
    """A dataset of the images in ``folder`` (and its sub-folders) with the companion files named after
    them (:data:`COMPANIONS`), and one line per case saying what was found.

    A case with boxes, sizes or partial labels is a training case (a mask beside them is its
    reference); a case with only a mask is a test case (the mask: the reference to score against),
    or a training case with ``masks_for_training``; a case with nothing is a test case.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())  # by path: a folder's files, then its sub-folders
    images = [p for p in files if p.name.lower().endswith(READ_SUFFIXES) and not _NOT_IMAGES.search(image_stem(str(p)))]
    if not images:
        raise InputError(f"{folder}: no image ({', '.join(READ_SUFFIXES)}) found")
    present = {str(p) for p in files}
    stems = [image_stem(p) for p in images]
    cases, report = [], []
    for image, stem in zip(images, stems):
        ext = image.name[len(stem):]
        found = {}
        for kind, patterns in COMPANIONS.items():
            for pattern in patterns:
                candidate = image.parent / pattern.format(stem=stem, ext=ext)
                if str(candidate) in present:
                    found[kind] = str(candidate)
                    break
        weak = {"boxes", "sizes", "partial"} & set(found)
        split = "training" if weak or (masks_for_training and "mask" in found) else "test"
        relative = image.relative_to(folder)
        name = stem if stems.count(stem) == 1 else "-".join((*relative.parent.parts, stem))
        cases.append(DatasetCase(name, split, str(image), found))
        report.append(f"{name}: {split}, image {relative}" +
                      "".join(f", {k} {Path(v).relative_to(folder)}" for k, v in found.items()))
    return Dataset(folder / "dataset.json", cases, folder.name), report


def check_dataset(dataset: Dataset) -> list[tuple[str, list[str]]]:
    """Every case's problems (an empty list: the case is fine): each file readable, the image a 3D
    volume, the boxes, sizes, label volumes and ranked prediction on the image's grid, the boxes inside
    it (the review states themselves are checked when the file is read)."""
    from WeakSegLib.io.boxes import check_boxes_fit, load_boxes
    from WeakSegLib.io.sizes import load_sizes
    from WeakSegLib.io.volume import check_same_grid, read_label_volume, read_volume

    results = []
    for case in dataset.cases:
        problems: list[str] = []

        def attempt(action) -> object:
            try:
                return action()
            except InputError as exc:
                problems.append(str(exc))
                return None

        image = attempt(lambda: read_volume(case.image))
        for kind, path in case.files.items():
            if kind == "boxes":
                boxset = attempt(lambda: load_boxes(path))
                if boxset is not None and image is not None:
                    attempt(lambda: check_boxes_fit(boxset, image.geometry(), case.image))
            elif kind == "sizes":
                sizes = attempt(lambda: load_sizes(path))
                if sizes is not None and image is not None:
                    from WeakSegLib.io.boxes import check_drawn_grid

                    attempt(lambda: check_drawn_grid({**(sizes.geometry or {}), "shape": list(sizes.shape)},
                                                     image.geometry(), "size", case.image))
            else:
                labels = attempt(lambda: read_label_volume(path))
                if labels is not None and image is not None and kind != "reference":
                    attempt(lambda: check_same_grid(image, labels, case.image, f"{kind} {path}"))
        prediction = case.review.prediction if case.review is not None else None
        if prediction is not None:
            labels = attempt(lambda: read_label_volume(prediction))
            if labels is not None and image is not None:
                attempt(lambda: check_same_grid(image, labels, case.image, f"prediction {prediction}"))
        results.append((case.name, problems))
    return results

"""The review loop's decisions on a dataset file: a ranked prediction accepted as a case's mask, or
rejected (the case goes back to boxing).

``weakseg rank`` (:mod:`WeakSegLib.engine.predict.ranking`) predicts the cases that have neither a mask nor a
review decision and records each prediction and its score as the case's ``predicted`` review
(:func:`record_prediction`). A person then looks at them, most uncertain first, and

- **accepts** one (:func:`accept`): the prediction, or the edited segmentation given instead, is
  written as ``<case>.accepted.nii.gz`` beside the dataset file, with a sidecar
  ``<case>.accepted.json`` saying who accepted what and when; the case's ``mask`` names it, the case
  becomes a training case and trains on that mask (cross-entropy, beside the box cases: mixed
  supervision);
- **rejects** one (:func:`reject`): the prediction is dropped from the case (the file stays), an
  accepted mask is given up for the mask the case had before, and the case waits for boxes; boxing
  it ends the review (:meth:`WeakSegLib.io.worklist.Worklist.save_boxes`).

Each decision writes the new files first and the dataset file last, every one atomically, so a crash
at any point leaves the dataset file as it was (or as it should be), the prediction where it was and
a case's earlier mask untouched. Files are written only inside the dataset's folder, named after the
checked case name.
"""

from __future__ import annotations

import getpass
import os
from datetime import datetime, timezone
from pathlib import Path

from WeakSegLib.errors import InputError
from WeakSegLib.io.atomic import atomic_write_json, check_writable
from WeakSegLib.io.dataset import Dataset, DatasetCase, Review, save_dataset
from WeakSegLib.io.fields import Fields, read_json
from WeakSegLib.io.names import case_file
from WeakSegLib.io.volume import Volume, check_same_grid, read_header, read_label_volume, write_volume

#: the accepted mask of case ``<name>``: ``<name>`` + this, beside the dataset file
ACCEPTED_SUFFIX = ".accepted.nii.gz"
#: its sidecar: who accepted what, when, and the case's earlier mask
SIDECAR_SUFFIX = ".accepted.json"


def find_case(dataset: Dataset, name: str) -> DatasetCase:
    """The case called ``name``; an :class:`InputError` naming the dataset otherwise."""
    for case in dataset.cases:
        if case.name == name:
            return case
    raise InputError(f"{dataset.path} has no case named {name!r}")


def accepted_paths(dataset: Dataset, case: DatasetCase) -> tuple[Path, Path]:
    """Where ``case``'s accepted mask and its sidecar are written (inside the dataset's folder)."""
    folder = dataset.path.parent
    return case_file(folder, case.name, ACCEPTED_SUFFIX), case_file(folder, case.name, SIDECAR_SUFFIX)


def record_prediction(case: DatasetCase, prediction: str | os.PathLike, score: float) -> None:
    """``case`` (in memory) now has ``prediction`` with review ``score`` waiting for a person."""
    case.review = Review("predicted", str(prediction), float(score))


def _earlier_mask(dataset: Dataset, case: DatasetCase) -> str | None:
    """The mask ``case`` had before its first acceptance (the sidecar keeps it across re-acceptances)."""
    mask_path, sidecar = accepted_paths(dataset, case)
    if case.status == "accepted" and sidecar.is_file():
        return Fields(read_json(sidecar, "review sidecar"), str(sidecar)).text("earlier_mask", None)
    mask = case.files.get("mask")
    return None if mask is None or Path(mask) == mask_path else mask


def accept(dataset: Dataset, name: str, mask: str | os.PathLike | Volume | None = None,
           by: str | None = None) -> Path:
    """Accept case ``name``'s prediction — or ``mask``, the segmentation a person edited from it (a label
    file, or a label volume in memory) — as the case's training mask (module docstring); returns the
    accepted mask's path. The sidecar records how many voxels differ from the prediction.

    Raises:
        InputError: no such case, nothing to accept (no prediction and no ``mask``), or a mask that is
            unreadable or not on the image's grid; nothing is written then.
    """
    case = find_case(dataset, name)
    prediction = case.review.prediction if case.review is not None else None
    source = mask if mask is not None else prediction
    if source is None:
        raise InputError(f"case {name!r} has no prediction to accept: run weakseg rank, or give the mask to accept")
    labels = source if isinstance(source, Volume) else read_label_volume(source)
    what = "edited mask" if isinstance(source, Volume) else f"mask {source}"
    check_same_grid(read_header(case.image), labels, case.image, what)
    mask_path, sidecar = accepted_paths(dataset, case)
    for path in (mask_path, sidecar, dataset.path):
        check_writable(path, "review output")
    earlier = _earlier_mask(dataset, case)
    changed = 0 if mask is None else _changed_voxels(labels, prediction)  # the prediction itself: read once
    write_volume(labels, mask_path)
    atomic_write_json(sidecar, {"case": name, "by": by or getpass.getuser(),
                                "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "source": None if isinstance(source, Volume) else str(Path(source).resolve()),
                                "prediction": prediction, "edited": changed != 0, "changed_voxels": changed,
                                "earlier_mask": earlier})
    case.files["mask"] = str(mask_path)
    case.split = "training"
    case.review = Review("accepted", prediction, case.review.score if case.review is not None else None)
    save_dataset(dataset, dataset.path)
    return mask_path


def _changed_voxels(labels: Volume, prediction: str | None) -> int | None:
    """Voxels whose label differs from the prediction's (None without a readable prediction on this grid)."""
    if prediction is None or not Path(prediction).is_file():
        return None
    predicted = read_label_volume(prediction)
    if predicted.shape != labels.shape:
        return None
    return int((predicted.array != labels.array).sum())


def reject(dataset: Dataset, name: str) -> DatasetCase:
    """Reject case ``name``'s prediction or accepted mask: the case waits for boxes (module docstring).
    Its files stay on disk; an accepted case gets back the mask it had before (or none)."""
    case = find_case(dataset, name)
    check_writable(dataset.path, "dataset file")
    if case.status == "accepted":
        earlier = _earlier_mask(dataset, case)
        if earlier is None:
            case.files.pop("mask", None)
        else:
            case.files["mask"] = earlier
    case.review = Review("rejected")
    if not set(case.files) & {"boxes", "sizes", "partial"}:
        case.split = "test"
    save_dataset(dataset, dataset.path)
    return case

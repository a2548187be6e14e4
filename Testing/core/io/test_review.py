"""The review loop's states in the dataset file: accept and reject through the library and the command
line, what a crash in the middle leaves, and how boxing a case ends its review."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from synthetic import oblique_volume, two_ellipsoids

from WeakSegLib.app.cli import main
from WeakSegLib.errors import InputError
from WeakSegLib.io import atomic, review
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask
from WeakSegLib.io.dataset import DatasetCase, check_dataset, load_dataset, save_dataset
from WeakSegLib.io.volume import read_label_volume, write_volume
from WeakSegLib.io.worklist import Worklist


@pytest.fixture
def folder(tmp_path):
    """A dataset of three cases: ``a`` boxed, ``b`` ranked (its prediction in predictions/, score 0.4) with a
    mask it had before, ``c`` ranked (score 0.7) with none."""
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        image, mask = two_ellipsoids((12, 40, 48), seed)
        write_volume(oblique_volume(image), tmp_path / f"{name}.nrrd")
        write_volume(oblique_volume(mask), tmp_path / f"{name}_truth.nrrd")
        write_volume(oblique_volume((mask == 1).astype(np.uint8)), tmp_path / "predictions" / f"{name}.nii.gz")
    worklist = Worklist.create(tmp_path / "dataset.json",
                               [DatasetCase(n, "test", str(tmp_path / f"{n}.nrrd")) for n in ("a", "b", "c")])
    mask = read_label_volume(tmp_path / "a_truth.nrrd")
    worklist.save_boxes(worklist.index("a"), BoxSet(boxes_from_mask(mask.array, "slice", 0), mask.shape, {1: "l", 2: "r"},
                                                    mask.geometry()))
    dataset = load_dataset(tmp_path / "dataset.json")
    for name, score in (("b", 0.4), ("c", 0.7)):
        review.record_prediction(review.find_case(dataset, name), tmp_path / "predictions" / f"{name}.nii.gz", score)
    review.find_case(dataset, "b").files["mask"] = str(tmp_path / "b_truth.nrrd")
    save_dataset(dataset, dataset.path)
    return tmp_path


def statuses(path: Path) -> dict[str, str]:
    return {c.name: c.status for c in load_dataset(path / "dataset.json").cases}


def test_review_states_round_trip_through_the_dataset_file(folder):
    dataset = load_dataset(folder / "dataset.json")
    assert statuses(folder) == {"a": "boxed", "b": "predicted", "c": "predicted"}
    c = review.find_case(dataset, "c")
    assert (c.review.prediction, c.review.score) == (str(folder / "predictions" / "c.nii.gz"), 0.7)
    entry = next(e for e in json.loads((folder / "dataset.json").read_text())["test"] if e["name"] == "c")
    assert entry["review"] == {"state": "predicted", "prediction": "predictions/c.nii.gz", "score": 0.7}
    assert [Worklist(dataset).cases[i].name for i in Worklist(dataset).review_order()] == ["c", "b"]
    assert all(not problems for _, problems in check_dataset(dataset))


@pytest.mark.parametrize("bad, match", [({"state": "approved"}, "review state 'approved'"),
                                        ({"state": "accepted"}, "accepted case gives its accepted 'mask'"),
                                        ({"state": "predicted", "score": "high"}, "score")])
def test_a_bad_review_entry_is_refused_in_one_line(folder, bad, match):
    data = json.loads((folder / "dataset.json").read_text())
    next(e for e in data["test"] if e["name"] == "c")["review"] = bad
    (folder / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=match):
        load_dataset(folder / "dataset.json")


def test_dataset_check_reports_a_prediction_on_another_grid(folder):
    write_volume(oblique_volume(np.zeros((5, 40, 48), np.uint8)), folder / "predictions" / "c.nii.gz")
    problems = dict(check_dataset(load_dataset(folder / "dataset.json")))
    assert problems["c"] and "prediction" in problems["c"][0] and not problems["b"]


def test_accepting_a_prediction_makes_it_the_training_mask_with_who_and_when(folder):
    dataset = load_dataset(folder / "dataset.json")
    path = review.accept(dataset, "c", by="dr. a")
    assert path == folder / "c.accepted.nii.gz"
    predicted = read_label_volume(folder / "predictions" / "c.nii.gz")
    assert np.array_equal(read_label_volume(path).array, predicted.array)
    again = load_dataset(folder / "dataset.json")
    c = review.find_case(again, "c")
    assert (c.status, c.split, c.files["mask"]) == ("accepted", "training", str(path))
    sidecar = json.loads((folder / "c.accepted.json").read_text())
    assert sidecar["by"] == "dr. a" and sidecar["edited"] is False and sidecar["changed_voxels"] == 0
    assert sidecar["earlier_mask"] is None
    assert sidecar["at"].endswith("+00:00") and sidecar["prediction"] == str(folder / "predictions" / "c.nii.gz")
    case = c.train_case()
    assert case.mask == str(path) and case.boxes is None
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~atomic.umask())


def test_an_edited_mask_is_accepted_instead_and_a_boxed_accepted_case_trains_on_the_mask(folder):
    edited = read_label_volume(folder / "a_truth.nrrd")
    write_volume(edited, folder / "edited.nii.gz")
    worklist = Worklist.open(folder / "dataset.json")
    worklist.accept(worklist.index("a"), folder / "edited.nii.gz", by="me")
    sidecar = json.loads((folder / "a.accepted.json").read_text())
    assert sidecar["edited"] is True and sidecar["changed_voxels"] is None  # a had no prediction
    assert np.array_equal(read_label_volume(folder / "a.accepted.nii.gz").array, edited.array)
    cases, skipped = Worklist.open(folder / "dataset.json").training_cases()
    a = next(c for c in cases if c.image.endswith("a.nrrd"))
    assert a.mask == str(folder / "a.accepted.nii.gz") and a.boxes is None and skipped == ["b", "c"]


def test_accepting_nothing_or_a_mask_of_another_grid_writes_nothing(folder):
    before = (folder / "dataset.json").read_bytes()
    with pytest.raises(InputError, match="no prediction to accept"):
        review.accept(load_dataset(folder / "dataset.json"), "a")
    write_volume(oblique_volume(np.zeros((5, 40, 48), np.uint8)), folder / "small.nii.gz")
    with pytest.raises(InputError, match="not the same grid"):
        review.accept(load_dataset(folder / "dataset.json"), "c", folder / "small.nii.gz")
    with pytest.raises(InputError, match="no case named 'z'"):
        review.accept(load_dataset(folder / "dataset.json"), "z")
    assert (folder / "dataset.json").read_bytes() == before and not list(folder.glob("*.accepted.*"))


@pytest.mark.parametrize("fail_on", ["c.accepted.nii.gz", "c.accepted.json", "dataset.json"])
def test_a_crash_during_accept_loses_neither_the_prediction_nor_the_earlier_mask(folder, monkeypatch, fail_on):
    prediction_before = (folder / "predictions" / "c.nii.gz").read_bytes()
    dataset = load_dataset(folder / "dataset.json")
    review.find_case(dataset, "c").files["mask"] = str(folder / "c_truth.nrrd")  # the mask it had before
    save_dataset(dataset, dataset.path)
    dataset_before = (folder / "dataset.json").read_bytes()
    truth_before = (folder / "c_truth.nrrd").read_bytes()
    real_replace = os.replace

    def crash(src, dst, *args, **kwargs):
        if Path(dst).name == fail_on:
            raise OSError("power cut")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Exception, match="power cut"):
        review.accept(load_dataset(folder / "dataset.json"), "c")
    monkeypatch.undo()
    assert (folder / "dataset.json").read_bytes() == dataset_before
    assert (folder / "predictions" / "c.nii.gz").read_bytes() == prediction_before
    assert (folder / "c_truth.nrrd").read_bytes() == truth_before
    assert statuses(folder)["c"] == "predicted"
    review.accept(load_dataset(folder / "dataset.json"), "c")  # the retry goes through
    assert statuses(folder)["c"] == "accepted"


def test_rejecting_an_accepted_case_gives_back_its_earlier_mask_and_keeps_every_file(folder):
    review.accept(load_dataset(folder / "dataset.json"), "b")
    review.accept(load_dataset(folder / "dataset.json"), "b")  # re-accepting keeps the first earlier mask
    assert json.loads((folder / "b.accepted.json").read_text())["earlier_mask"] == str(folder / "b_truth.nrrd")
    case = review.reject(load_dataset(folder / "dataset.json"), "b")
    again = review.find_case(load_dataset(folder / "dataset.json"), "b")
    assert (again.status, again.split, again.files["mask"]) == ("rejected", "test", str(folder / "b_truth.nrrd"))
    assert again.review.prediction is None and case.status == "rejected"
    assert (folder / "b.accepted.nii.gz").is_file() and (folder / "predictions" / "b.nii.gz").is_file()
    review.reject(load_dataset(folder / "dataset.json"), "c")
    assert "mask" not in review.find_case(load_dataset(folder / "dataset.json"), "c").files


def test_boxing_a_rejected_or_ranked_case_ends_its_review_but_not_an_acceptance(folder):
    review.reject(load_dataset(folder / "dataset.json"), "c")
    review.accept(load_dataset(folder / "dataset.json"), "b")
    worklist = Worklist.open(folder / "dataset.json")
    mask = read_label_volume(folder / "c_truth.nrrd")
    boxes = BoxSet(boxes_from_mask(mask.array, "slice", 0), mask.shape, {1: "l", 2: "r"}, mask.geometry())
    for name in ("b", "c"):
        worklist.save_boxes(worklist.index(name), boxes)
    assert statuses(folder) == {"a": "boxed", "b": "accepted", "c": "boxed"}
    rows = {r.name: (r.status, r.score) for r in Worklist.open(folder / "dataset.json").rows()}
    assert rows == {"a": ("boxed", None), "b": ("accepted", 0.4), "c": ("boxed", None)}


def test_accept_reject_and_list_from_the_command_line(folder, capsys):
    data = str(folder / "dataset.json")
    assert main(["review", "list", "--dataset", data]) == 0
    listed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[:2] for row in listed] == [["c", "predicted"], ["b", "predicted"], ["a", "boxed"]]
    assert main(["review", "accept", "c", "--dataset", data, "--by", "cli"]) == 0
    assert main(["review", "reject", "b", "--dataset", data]) == 0
    assert statuses(folder) == {"a": "boxed", "b": "rejected", "c": "accepted"}
    assert json.loads((folder / "c.accepted.json").read_text())["by"] == "cli"
    assert main(["review", "accept", "a", "--dataset", data]) == 2
    assert "weakseg: error: case 'a' has no prediction to accept" in capsys.readouterr().err

"""The cohort from the command line: dataset files (init, check, MONAI's reader), training from a
dataset, batch prediction that skips a corrupt scan, and the evaluation table with its figures."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
from test_cli import weakseg

from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.dataset import check_dataset, init_dataset, load_dataset
from WeakSegLib.io.volume import Volume, read_label_volume, read_volume, write_volume


def cube_case(folder, name, shift=0, boxes=True, mask=True, shape=(12, 24, 24), spacing=(1.5, 1.5, 1.5),
              suffix=".nii.gz"):
    """A bright cube in noise, with its box file and mask named after the image."""
    array = np.zeros(shape, np.uint8)
    array[2:10, 5 + shift:17 + shift, 6:18] = 1
    image = Volume((100.0 * array + np.random.default_rng(shift).normal(0, 10, shape)).astype(np.float32), spacing)
    write_volume(image, folder / f"{name}{suffix}")
    if mask:
        write_volume(image.with_array(array), folder / f"{name}_mask{suffix}")
    if boxes:
        save_boxes(BoxSet(boxes_from_mask(array, "slice", 0), shape, {1: "cube"}, image.geometry()),
                   folder / f"{name}.boxes.json")
    return image


@pytest.fixture
def cohort(tmp_path):
    folder = tmp_path / "cases"
    (folder / "more").mkdir(parents=True)
    cube_case(folder, "a", 0)
    cube_case(folder, "b", 2, mask=False)
    cube_case(folder / "more", "c", 3, boxes=False, suffix=".nrrd")
    cube_case(folder, "d", 1, boxes=False, mask=False)
    return folder


def test_dataset_init_pairs_files_by_name_and_monai_reads_the_file(cohort):
    dataset, report = init_dataset(cohort)
    split = {c.name: (c.split, sorted(c.files)) for c in dataset.cases}
    assert split == {"a": ("training", ["boxes", "mask"]), "b": ("training", ["boxes"]), "c": ("test", ["mask"]),
                     "d": ("test", [])}
    assert report == ["a: training, image a.nii.gz, boxes a.boxes.json, mask a_mask.nii.gz",
                      "b: training, image b.nii.gz, boxes b.boxes.json", "d: test, image d.nii.gz",
                      "c: test, image more/c.nrrd, mask more/c_mask.nrrd"]
    out = weakseg("dataset", "init", cohort, "--masks-for-training").stdout
    assert "c: training" in out and "4 cases (3 training, 1 test)" in out
    from monai.data import load_decathlon_datalist

    training = load_decathlon_datalist(cohort / "dataset.json", is_segmentation=False, data_list_key="training")
    assert [(e["image"], e.get("mask")) for e in training] == \
        [(str(cohort / "a.nii.gz"), str(cohort / "a_mask.nii.gz")), (str(cohort / "b.nii.gz"), None),
         (str(cohort / "more" / "c.nrrd"), str(cohort / "more" / "c_mask.nrrd"))]
    again = load_dataset(cohort / "dataset.json")
    assert sorted((c.name, c.split, c.image, c.files) for c in again.cases) == \
        sorted((c.name, "training" if c.name == "c" else c.split, c.image, c.files) for c in dataset.cases)


def test_a_decathlon_datalist_is_a_dataset(cohort):
    (cohort / "msd.json").write_text(json.dumps({"name": "cubes", "labels": {"0": "background", "1": "cube"},
                                                 "training": [{"image": "a.nii.gz", "label": "a_mask.nii.gz"}],
                                                 "test": ["d.nii.gz"]}))
    dataset = load_dataset(cohort / "msd.json")
    assert [(c.name, c.split, c.files) for c in dataset.cases] == \
        [("a", "training", {"mask": str(cohort / "a_mask.nii.gz")}), ("d", "test", {})]


def test_dataset_check_names_every_problem_of_every_case(cohort, tmp_path):
    (cohort / "b.nii.gz").write_bytes(b"not an image at all")  # unreadable image
    other = Volume(np.zeros((12, 20, 24), np.uint8), (1.5, 1.5, 1.5))
    write_volume(other, cohort / "more" / "c_mask.nrrd")  # mask on another grid
    big = np.zeros((30, 30, 30), np.uint8)
    big[20:28, 20:28, 20:28] = 1
    save_boxes(BoxSet(boxes_from_mask(big, "3d"), big.shape, {1: "cube"}, None), cohort / "a.boxes.json")  # outside
    write_volume(Volume(np.zeros((12, 24, 24), np.uint8), (1.5, 1.5, 1.5), (9.0, 0.0, 0.0)), cohort / "a_mask.nii.gz")
    dataset, _ = init_dataset(cohort, masks_for_training=True)
    problems = dict(check_dataset(dataset))
    assert len(problems["a"]) == 2  # both problems of one case, not the first one only
    assert "outside" in problems["a"][0] or "grid" in problems["a"][0]
    assert any("origin" in p for p in problems["a"])
    assert len(problems["b"]) == 1 and "b.nii.gz" in problems["b"][0]
    assert len(problems["c"]) == 1 and "c_mask.nrrd" in problems["c"][0] and "shape" in problems["c"][0]
    assert problems["d"] == []
    from WeakSegLib.io.dataset import save_dataset

    save_dataset(dataset, tmp_path / "data.json")
    proc = weakseg("dataset", "check", tmp_path / "data.json", check=False)
    assert proc.returncode == 2 and "3 of 4 cases have problems" in proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a", "b", "c", "d"] and lines[3] == "d: ok"  # training first
    assert lines[0].count(";") == 1


def test_train_on_a_dataset_predict_its_test_cases_skipping_a_corrupt_one_and_evaluate(cohort, tmp_path):
    data = tmp_path / "data.json"
    weakseg("dataset", "init", cohort, "--out", data)
    shutil.copy(cohort / "more" / "c.nrrd", cohort / "e.nrrd")  # another test case …
    entries = json.loads(data.read_text())
    entries["test"].append({"name": "e", "image": str(cohort / "e.nrrd"), "mask": str(cohort / "more" / "c_mask.nrrd")})
    entries["test"].append({"name": "broken", "image": str(cohort / "broken.nii.gz")})  # … and a corrupt one
    (cohort / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    data.write_text(json.dumps(entries))
    model = tmp_path / "model"
    out = weakseg("train", "--dataset", data, "--out", model, "--epochs", 1, "--epoch-batches", 2, "--quiet").stdout
    card = json.loads((model / "model.json").read_text())
    assert card["training"]["dataset"]["cases"] == 2 and card["recipe"] == "boxsup"  # auto: per-slice boxes
    assert "dice" in out  # a's mask became the reference of the Dice per epoch
    preds = tmp_path / "preds"
    proc = weakseg("predict", "--model", model, "--dataset", data, "--out-dir", preds, "--device", "cpu", check=False)
    assert proc.returncode == 2 and "1 of 4 cases failed (broken)" in proc.stderr
    assert "[4/4] broken skipped:" in proc.stdout and "[2/4] c →" in proc.stdout
    for name, image in (("c", cohort / "more" / "c.nrrd"), ("d", cohort / "d.nii.gz"), ("e", cohort / "e.nrrd")):
        pred, img = read_label_volume(preds / f"{name}.nii.gz"), read_volume(image)
        assert pred.shape == img.shape and np.allclose(pred.spacing, img.spacing)
    assert not (preds / "broken.nii.gz").exists()
    (preds / "e.nii.gz").unlink()  # e has no prediction now: listed, not dropped
    proc = weakseg("evaluate", "--pred-dir", preds, "--dataset", data, "--csv", tmp_path / "scores.csv", "--json",
                   tmp_path / "scores.json", "--figures", tmp_path / "figures")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "scores.csv").read_text())))
    assert [(r["case"], r["note"]) for r in rows] == [("c", ""), ("e", "no prediction")]
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["missing"] == ["e"] and report["no_reference"] == ["d", "broken"]
    ref = read_label_volume(cohort / "more" / "c_mask.nrrd").array
    pred = read_label_volume(preds / "c.nii.gz").array
    want = 2 * ((pred == 1) & (ref == 1)).sum() / ((pred == 1).sum() + (ref == 1).sum())
    assert float(rows[0]["dice"]) == pytest.approx(want, rel=1e-5)
    assert "e: no prediction" in proc.stderr and "d: the dataset gives no mask" in proc.stderr
    assert (tmp_path / "figures" / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "figures" / "e.png").exists()

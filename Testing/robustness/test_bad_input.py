"""Bad input to every command: exit code 2, exactly one line on stderr that names the file, box or
setting at fault, no traceback, and nothing new or changed anywhere (inputs and outputs alike).

Each case builds its bad file(s) from the good ones of ``conftest.good`` and runs the command in this
process (``weakseg`` through :func:`WeakSegLib.app.cli.main`, jobs through the worker's ``main``),
capturing the process's file descriptors, so output of the C++ libraries counts too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from WeakSegLib.app import worker
from WeakSegLib.app.cli import main
from WeakSegLib.app.jobs import EXIT_BAD_INPUT, EXIT_BAD_JOB

SMALL = ["--channels", "4", "8", "16", "32", "64"]


# ---- bad files, each made in the test's folder ----------------------------------------------------

def truncated(src: str, tmp: Path, name: str) -> str:
    """The volume ``src`` written as ``name`` (its format) and cut to half its bytes."""
    path = tmp / name
    sitk.WriteImage(sitk.ReadImage(src), str(path), useCompression=name.endswith((".gz", ".mha")))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def array_file(tmp: Path, name: str, array: np.ndarray, spacing=(1.5, 1.5, 1.5), direction=None) -> str:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(tmp / name))
    return str(tmp / name)


def nan_image(good, tmp):
    array = good["volume"].array.copy()
    array[3, 4, 5] = np.nan
    return array_file(tmp, "nan.nii", array)


def image_4d(good, tmp):
    return array_file(tmp, "4d.nii.gz", np.zeros((2, 12, 24, 24), np.float32), spacing=(1.5, 1.5, 1.5, 1.0))


def image_2d(good, tmp):
    return array_file(tmp, "2d.nrrd", np.zeros((24, 24), np.float32), spacing=(1.5, 1.5))


def text_file(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def folder(tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return str(tmp / name)


def mask_with(good, tmp, name, transform):
    return array_file(tmp, name, transform(good["array"].astype(np.float32)))


def mirrored_mask(good, tmp):
    return array_file(tmp, "mirrored.nii.gz", good["array"], direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))


def box_file(good, tmp, edit) -> str:
    """The good slice-box file with ``edit`` applied to its JSON object."""
    d = json.loads(Path(good["boxes"]).read_text())
    edit(d)
    return text_file(tmp, "bad-boxes.json", json.dumps(d))


def size_file(good, tmp, edit) -> str:
    d = json.loads(Path(good["sizes"]).read_text())
    edit(d)
    return text_file(tmp, "bad-sizes.json", json.dumps(d))


def model_copy(good, tmp, edit_card=None, weights=None, source="model") -> str:
    """A copy of the good model (or tightener) folder with its card edited or its weights replaced."""
    copy = tmp / f"{source}-copy"
    shutil.copytree(good[source], copy)
    if edit_card is not None:
        card = json.loads((copy / "model.json").read_text())
        edit_card(card)
        (copy / "model.json").write_text(json.dumps(card))
    if weights is not None:
        (copy / "model.pt").write_bytes(weights(copy / "model.pt"))
    return str(copy)


def dataset_file(good, tmp, name: str, split: str = "test") -> str:
    """A dataset file with one case of the good image and mask, named ``name``."""
    entry = {"name": name, "image": good["image"], "mask": good["mask"]}
    if split == "training":
        entry["boxes"] = good["boxes"]
    return text_file(tmp, "data.json", json.dumps({split: [entry]}))


def constant_image(tmp: Path) -> str:
    return array_file(tmp, "flat.nii.gz", np.full((12, 24, 24), 7, np.float32))


def pickled_object(path: Path) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"payload": Path("/etc/passwd")}, buffer)
    return buffer.getvalue()


def set_in(d: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        d = d[key][0] if key == "labels" else d[key]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value


# ---- commands ------------------------------------------------------------------------------------

def train(image, boxes, out, *extra):
    return ["train", "--image", image, "--boxes", boxes, "--out", out, "--epochs", "1", *SMALL, "--device", "cpu",
            "--quiet", *extra]


def train_full(image, mask, out, *extra):
    return ["train", "--image", image, "--mask", mask, "--out", out, "--epochs", "1", *SMALL, "--device", "cpu",
            "--quiet", *extra]


def predict(model, image, out, *extra):
    return ["predict", "--model", model, "--image", image, "--out", out, "--device", "cpu", "--quiet", *extra]


def tighten_train(image, mask, out, *extra):
    return ["tighten-train", "--image", image, "--mask", mask, "--out", out, "--patch-size", "8", "--epochs", "1",
            "--device", "cpu", "--quiet", *extra]


def tighten(model, image, boxes, out, *extra):
    return ["tighten", "--model", model, "--image", image, "--boxes", boxes, "--out", out, "--device", "cpu", *extra]


# Each case: (id, builder(good, tmp, out) → argv, text the one line must contain). ``out`` is the output
# location (a folder inside the test's folder; files there are outputs).
CASES = [
    # images
    ("train-missing-image", lambda g, t, o: train(str(t / "none.nii.gz"), g["boxes"], o / "m"), "none.nii.gz: file not found"),
    ("train-folder-as-image", lambda g, t, o: train(folder(t, "scan.nii.gz"), g["boxes"], o / "m"), "is a folder, not an image"),
    ("train-truncated-nii", lambda g, t, o: train(truncated(g["image"], t, "cut.nii"), g["boxes"], o / "m"), "cut.nii: the file is truncated"),
    ("train-truncated-nii-gz", lambda g, t, o: train(truncated(g["image"], t, "cut.nii.gz"), g["boxes"], o / "m"), "cut.nii.gz: the file is truncated"),
    ("train-nan-nii", lambda g, t, o: train(nan_image(g, t), g["boxes"], o / "m"), "nan.nii: 1 voxels are NaN or infinite"),
    ("train-4d-image", lambda g, t, o: train(image_4d(g, t), g["boxes"], o / "m"), "4d.nii.gz: 4D image"),
    ("train-2d-image", lambda g, t, o: train(image_2d(g, t), g["boxes"], o / "m"), "2d.nrrd: 2D image"),
    ("train-constant-image", lambda g, t, o: train(constant_image(t), g["boxes"], o / "m"), "every voxel has the value 7: nothing to learn from"),
    ("predict-constant-image", lambda g, t, o: predict(g["model"], constant_image(t), o / "p.nii.gz"), "flat.nii.gz: every voxel has the value 7: nothing to segment"),
    ("tighten-constant-image", lambda g, t, o: tighten(g["tightener"], constant_image(t), g["boxes3d"], o / "b.json"), "flat.nii.gz: every voxel has the value 7: nothing to tighten boxes on"),
    ("train-text-as-image", lambda g, t, o: train(text_file(t, "notes.nrrd", "hello"), g["boxes"], o / "m"), "notes.nrrd: cannot be read as an image"),
    ("train-unknown-ending", lambda g, t, o: train(text_file(t, "photo.png", "x"), g["boxes"], o / "m"), "photo.png: unknown image file ending"),
    ("predict-truncated-mha", lambda g, t, o: predict(g["model"], truncated(g["image"], t, "cut.mha"), o / "p.nii.gz"), "cut.mha: cannot be read as an image: the file is truncated"),
    ("predict-folder-as-image", lambda g, t, o: predict(g["model"], folder(t, "dicom"), o / "p.nii.gz"), "dicom: is a folder"),
    ("predict-nan-nii", lambda g, t, o: predict(g["model"], nan_image(g, t), o / "p.nii.gz"), "NaN or infinite"),
    ("predict-2d-image", lambda g, t, o: predict(g["model"], image_2d(g, t), o / "p.nii.gz"), "2D image"),
    ("tighten-truncated-image", lambda g, t, o: tighten(g["tightener"], truncated(g["image"], t, "cut.nii.gz"), g["boxes3d"], o / "b.json"), "cut.nii.gz: the file is truncated"),
    ("tighten-train-4d-image", lambda g, t, o: tighten_train(image_4d(g, t), g["mask"], o / "t"), "4D image"),
    ("tighten-train-missing-image", lambda g, t, o: tighten_train(str(t / "gone.nrrd"), g["mask"], o / "t"), "gone.nrrd: file not found"),
    # masks
    ("train-mask-label-70000", lambda g, t, o: train_full(g["image"], mask_with(g, t, "big.nrrd", lambda m: m * 70000), o / "m"), "big.nrrd: label volume holds label 70000"),
    ("train-mask-non-integer", lambda g, t, o: train_full(g["image"], mask_with(g, t, "half.nrrd", lambda m: m * 0.5), o / "m"), "half.nrrd: label volume holds non-integer values"),
    ("train-mask-negative", lambda g, t, o: train_full(g["image"], mask_with(g, t, "neg.nrrd", lambda m: -m), o / "m"), "neg.nrrd: label volume holds negative labels"),
    ("train-empty-mask-full", lambda g, t, o: train_full(g["image"], mask_with(g, t, "empty.nrrd", lambda m: m * 0), o / "m"), "hold no label"),
    ("train-mask-truncated", lambda g, t, o: train_full(g["image"], truncated(g["mask"], t, "cut.nii.gz"), o / "m"), "cut.nii.gz: the file is truncated"),
    ("train-mask-mirrored-grid", lambda g, t, o: train_full(g["image"], mirrored_mask(g, t), o / "m"), "mirrored.nii.gz direction"),
    ("evaluate-missing-prediction", lambda g, t, o: ["evaluate", "--pred", str(t / "p.nii.gz"), "--ref", g["mask"]], "p.nii.gz: file not found"),
    ("evaluate-absent-label", lambda g, t, o: ["evaluate", "--pred", g["mask"], "--ref", g["mask"], "--label", "5"], "label 5 occurs in neither"),
    ("evaluate-other-grid", lambda g, t, o: ["evaluate", "--pred", mirrored_mask(g, t), "--ref", g["mask"]], "direction"),
    ("evaluate-label-70000", lambda g, t, o: ["evaluate", "--pred", mask_with(g, t, "big.nrrd", lambda m: m * 70000), "--ref", g["mask"]], "above the largest label"),
    ("boxes-from-mask-negative-margin", lambda g, t, o: ["boxes-from-mask", g["mask"], "--out", str(o / "b.json"), "--margin", "-3"], "margin must be ≥ 0 voxels, got -3"),
    ("boxes-from-mask-non-integer", lambda g, t, o: ["boxes-from-mask", mask_with(g, t, "half.nrrd", lambda m: m * 0.5), "--out", str(o / "b.json")], "non-integer"),
    ("boxes-from-mask-empty", lambda g, t, o: ["boxes-from-mask", mask_with(g, t, "empty.nrrd", lambda m: m * 0), "--out", str(o / "b.json")], "holds no object"),
    ("sizes-from-mask-truncated", lambda g, t, o: ["sizes-from-mask", truncated(g["mask"], t, "cut.nii"), "--out", str(o / "s.json")], "cut.nii: the file is truncated"),
    ("sizes-from-mask-absent-label", lambda g, t, o: ["sizes-from-mask", g["mask"], "--out", str(o / "s.json"), "--label", "9"], "no object with label(s) [9]"),
    ("partial-from-mask-4d", lambda g, t, o: ["partial-from-mask", image_4d(g, t), "--out", str(o / "p.nii.gz")], "4D image"),
    ("partial-from-mask-negative", lambda g, t, o: ["partial-from-mask", mask_with(g, t, "neg.nrrd", lambda m: -m), "--out", str(o / "p.nii.gz")], "negative labels"),
    ("tighten-train-mask-label-70000", lambda g, t, o: tighten_train(g["image"], mask_with(g, t, "big.nrrd", lambda m: m * 70000), o / "t"), "label 70000"),
    # case names: a dataset file names files in output folders
    ("dataset-check-name-climbs-out", lambda g, t, o: ["dataset", "check", dataset_file(g, t, "../x")], "test[0]: the case name '../x' cannot be a file name (it contains '/'"),
    ("dataset-check-name-too-long", lambda g, t, o: ["dataset", "check", dataset_file(g, t, "c" * 200)], "cannot be a file name (it is longer than 128 characters)"),
    ("predict-dataset-absolute-name", lambda g, t, o: ["predict", "--model", g["model"], "--dataset", dataset_file(g, t, str(t / "x")), "--out-dir", str(o / "p"), "--device", "cpu", "--quiet"], "cannot be a file name (it contains '/'"),
    ("predict-dataset-name-climbs-out", lambda g, t, o: ["predict", "--model", g["model"], "--dataset", dataset_file(g, t, ".."), "--out-dir", str(o / "p"), "--device", "cpu", "--quiet"], "the case name '..' cannot be a file name (it starts with a dot)"),
    ("train-dataset-hidden-name", lambda g, t, o: ["train", "--dataset", dataset_file(g, t, ".bashrc", "training"), "--out", str(o / "m"), "--quiet"], "the case name '.bashrc' cannot be a file name (it starts with a dot)"),
    ("evaluate-dataset-control-character", lambda g, t, o: ["evaluate", "--pred-dir", folder(o, "p"), "--dataset", dataset_file(g, t, "a\nb")], "cannot be a file name (it contains '\\n'"),
    ("evaluate-empty-prediction-folder", lambda g, t, o: ["evaluate", "--pred-dir", folder(o, "p"), "--dataset", dataset_file(g, t, "case")], "nothing to score: none of the 1 test case(s) with a mask has a prediction there"),
    ("evaluate-missing-prediction-folder", lambda g, t, o: ["evaluate", "--pred-dir", str(o / "none"), "--dataset", dataset_file(g, t, "case")], "none: prediction folder not found"),
    # box and size files
    ("train-boxes-version-text", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d.update(version="abc")), o / "m"), "version is 'abc', not a finite number"),
    ("train-boxes-null", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d.update(boxes=None)), o / "m"), "box list is empty"),
    ("train-boxes-labels-list", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d.update(labels=["cube"])), o / "m"), "labels is ['cube'], not an object"),
    ("train-boxes-spacing-text", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d["geometry"].update(spacing="abc")), o / "m"), "geometry.spacing is 'abc', not a list"),
    ("train-boxes-float-index", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d["boxes"][0]["start"].__setitem__(1, 1.7)), o / "m"), "box #0.start[1] is 1.7, not a whole number"),
    ("train-boxes-label-1e20", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d["boxes"][0].update(label=1e20)), o / "m"), "box #0.label is 1e+20, outside 1..65535"),
    ("train-box-outside", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d["boxes"][0].update(stop=[3, 99, 18])), o / "m"), "outside the volume"),
    ("train-boxes-not-json", lambda g, t, o: train(g["image"], text_file(t, "b.json", "{oops"), o / "m"), "b.json: WeakSeg box file is corrupt"),
    ("train-gmil-on-a-3d-box", lambda g, t, o: train(g["image"], g["boxes3d"], o / "m", "--recipe", "gmil"), "recipe 'gmil' learns from boxes tight on every slice, and the slices of a 3D box are not"),
    ("train-box-covers-everything", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d.update(boxes=[{"label": 1, "kind": "3d", "axis": None, "start": [0, 0, 0], "stop": d["geometry"]["shape"]}])), o / "m", "--recipe", "box-mask"), "the boxes cover every voxel of every training image"),
    ("train-boxes-other-grid", lambda g, t, o: train(g["image"], box_file(g, t, lambda d: d["geometry"].update(spacing=[1, 1, 1])), o / "m"), "mismatched image/box geometry"),
    ("tighten-boxes-float-index", lambda g, t, o: tighten(g["tightener"], g["image"], box_file(g, t, lambda d: d["boxes"][0]["stop"].__setitem__(2, 9.5)), o / "b.json"), "not a whole number"),
    ("tighten-boxes-missing", lambda g, t, o: tighten(g["tightener"], g["image"], str(t / "nope.json"), o / "b.json"), "nope.json: WeakSeg box file not found"),
    ("train-sizes-text-size", lambda g, t, o: ["train", "--image", g["image"], "--sizes", size_file(g, t, lambda d: d["sizes"][0].update(size="big")), "--out", str(o / "m"), "--quiet"], "size #0.size is 'big', not a finite number"),
    ("train-sizes-float-slice", lambda g, t, o: ["train", "--image", g["image"], "--sizes", size_file(g, t, lambda d: d["sizes"][0].update(slice=1.5)), "--out", str(o / "m"), "--quiet"], "size #0.slice is 1.5, not a whole number"),
    # settings
    ("train-size-bounds-reversed", lambda g, t, o: train(g["image"], g["boxes"], o / "m", "--size-bounds", "0.9", "0.1"), "size_bounds must satisfy 0 ≤ lower ≤ upper ≤ 1"),
    ("train-band-width-negative", lambda g, t, o: train(g["image"], g["boxes"], o / "m", "--band-width", "-3"), "band_width must be ≥ 1"),
    ("train-epochs-zero", lambda g, t, o: train(g["image"], g["boxes"], o / "m", "--epochs", "0"), "epochs and batch_size must be ≥ 1"),
    ("train-even-context", lambda g, t, o: train(g["image"], g["boxes"], o / "m", "--context", "2"), "context (slices per input) must be an odd number"),
    ("train-unknown-crf-setting", lambda g, t, o: train(g["image"], g["boxes"], o / "m", "--recipe", "deepcut", "--crf", "sxy=3"), "unknown CRF setting(s) sxy"),
    ("tighten-train-odd-patch", lambda g, t, o: tighten_train(g["image"], g["mask"], o / "t", "--patch-size", "5"), "patch size must be an even number"),
    ("tighten-train-negative-margin", lambda g, t, o: tighten_train(g["image"], g["mask"], o / "t", "--margin", "-2"), "margin must be ≥ 0"),
    ("train-truncated-checkpoint", lambda g, t, o: train(g["image"], g["boxes"], model_with_garbage_checkpoint(o)), "; delete it or start over (--no-resume)"),
    ("train-gpus-odd-batch", lambda g, t, o: train(g["image"], g["boxes"], o / "m", "--gpus", "2", "--batch-size", "3"), "the batch size 3 cannot be split evenly over 2 processes"),
    # output locations
    ("train-out-is-a-file", lambda g, t, o: train(g["image"], g["boxes"], Path(text_file(o, "model", "not a folder"))), "model: the model folder is a file"),
    ("train-out-under-a-file", lambda g, t, o: train(g["image"], g["boxes"], Path(text_file(o, "f", "x")) / "model"), "f is a file, not a folder"),
    ("tighten-train-out-is-a-file", lambda g, t, o: tighten_train(g["image"], g["mask"], Path(text_file(o, "t", "x"))), "t: the tightener folder is a file"),
    ("predict-out-two-file-format", lambda g, t, o: predict(g["model"], g["image"], o / "p.mhd"), "p.mhd: cannot write this file ending (a header and a separate data file"),
    ("predict-out-is-a-folder", lambda g, t, o: predict(g["model"], g["image"], Path(folder(o, "p.nii.gz"))), "the output volume is a folder"),
    ("predict-prob-same-as-out", lambda g, t, o: predict(g["model"], g["image"], o / "p.nii.gz", "--prob", str(o / "p.nii.gz")), "need two different files"),
    ("predict-prob-bad-ending", lambda g, t, o: predict(g["model"], g["image"], o / "p.nii.gz", "--prob", str(o / "prob.tif")), "prob.tif: cannot write this file ending"),
    ("tighten-report-is-a-folder", lambda g, t, o: tighten(g["tightener"], g["image"], g["boxes3d"], o / "b.json", "--report", folder(o, "r")), "the output file is a folder"),
    ("partial-from-mask-out-ending", lambda g, t, o: ["partial-from-mask", g["mask"], "--out", str(o / "p.hdr")], "p.hdr: cannot write this file ending"),
    # models
    ("predict-missing-model", lambda g, t, o: predict(str(t / "nowhere"), g["image"], o / "p.nii.gz"), "nowhere: model folder not found"),
    ("predict-model-is-a-file", lambda g, t, o: predict(g["boxes"], g["image"], o / "p.nii.gz"), "boxes.json: is a file, not a model folder"),
    ("predict-card-is-given", lambda g, t, o: predict(str(Path(g["model"]) / "model.json"), g["image"], o / "p.nii.gz"), "model.json: is a file; give the model folder that holds it"),
    ("predict-card-unknown-network", lambda g, t, o: predict(model_copy(g, t, lambda c: set_in(c, "network.name", "resnet9000")), g["image"], o / "p.nii.gz"), "model.json: the card's network 'resnet9000' (2D, channels [4, 8, 16, 32, 64]) cannot be built: unknown network"),
    ("predict-card-bad-normalisation", lambda g, t, o: predict(model_copy(g, t, lambda c: set_in(c, "input.preprocessing.normalization.method", "bogus")), g["image"], o / "p.nii.gz"), "model.json: input.preprocessing: normalization method 'bogus' is unknown"),
    ("predict-card-bad-percentiles", lambda g, t, o: predict(model_copy(g, t, lambda c: set_in(c, "input.preprocessing.normalization.percentiles", "x")), g["image"], o / "p.nii.gz"), "model.json: input.preprocessing.normalization.percentiles is 'x', not a list"),
    ("predict-card-without-label-value", lambda g, t, o: predict(model_copy(g, t, lambda c: set_in(c, "labels.value", KeyError)), g["image"], o / "p.nii.gz"), "labels[0] has no 'value'"),
    ("predict-card-without-axis", lambda g, t, o: predict(model_copy(g, t, lambda c: set_in(c, "input.axis", KeyError)), g["image"], o / "p.nii.gz"), "input has no 'axis'"),
    ("predict-card-version-text", lambda g, t, o: predict(model_copy(g, t, lambda c: c.update(version="two")), g["image"], o / "p.nii.gz"), "version is 'two', not a finite number"),
    ("predict-truncated-weights", lambda g, t, o: predict(model_copy(g, t, weights=lambda p: p.read_bytes()[:1000]), g["image"], o / "p.nii.gz"), "model weights is corrupt or not a WeakSeg file"),
    ("predict-weights-with-objects", lambda g, t, o: predict(model_copy(g, t, weights=pickled_object), g["image"], o / "p.nii.gz"), "not loaded, as that could run code"),
    ("predict-with-a-tightener", lambda g, t, o: predict(g["tightener"], g["image"], o / "p.nii.gz"), "not a weakseg-model card"),
    ("tighten-with-a-model", lambda g, t, o: tighten(g["model"], g["image"], g["boxes3d"], o / "b.json"), "not a weakseg-tightener card"),
    ("tighten-card-without-patch", lambda g, t, o: tighten(model_copy(g, t, lambda c: c.pop("patch"), source="tightener"), g["image"], g["boxes3d"], o / "b.json"), "has no 'patch'"),
]


def snapshot(root: Path) -> dict:
    """Every file (size, modification time) and folder under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in root.rglob("*")}


def model_with_garbage_checkpoint(out: Path) -> Path:
    folder = out / "m"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    return folder


@pytest.mark.parametrize("build, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(build, fragment, good, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(a) for a in build(good, tmp_path, out)]
    capfd.readouterr()
    before = snapshot(tmp_path)
    code = main(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("weakseg: error: ") and fragment in lines[0], err
    assert len(lines[0]) < 400, err  # a line a person reads, not a dump
    assert "np.float" not in lines[0] and "weights_only" not in lines[0]
    assert snapshot(tmp_path) == before


JOBS = [
    ("job-without-cases", lambda g, t, o: {"kind": "train", "out": str(o / "m")}, EXIT_BAD_JOB, "a train job needs 'cases'"),
    ("job-without-model", lambda g, t, o: {"kind": "predict", "image": g["image"], "out": str(o / "p.nii.gz")}, EXIT_BAD_JOB, "a predict job needs 'model'"),
    ("job-cases-not-a-list", lambda g, t, o: {"kind": "train", "out": str(o / "m"), "cases": {"image": g["image"]}}, EXIT_BAD_JOB, "'cases' is"),
    ("job-unknown-field", lambda g, t, o: {"kind": "tighten", "model": g["tightener"], "image": g["image"], "boxes": g["boxes3d"], "out": str(o / "b.json"), "speed": 3}, EXIT_BAD_JOB, "unknown field(s) speed"),
    ("job-unknown-kind", lambda g, t, o: {"kind": "segment"}, EXIT_BAD_JOB, "'kind' must be one of"),
    ("job-case-without-image", lambda g, t, o: {"kind": "train", "out": str(o / "m"), "cases": [{"boxes": g["boxes"]}]}, EXIT_BAD_INPUT, "job case has no image"),
    ("job-unknown-setting", lambda g, t, o: {"kind": "train", "out": str(o / "m"), "cases": [{"image": g["image"], "boxes": g["boxes"]}], "config": {"learning_speed": 3}}, EXIT_BAD_INPUT, "unknown settings: learning_speed"),
    ("job-setting-of-wrong-type", lambda g, t, o: {"kind": "train", "out": str(o / "m"), "cases": [{"image": g["image"], "boxes": g["boxes"]}], "config": {"epochs": "ten"}}, EXIT_BAD_INPUT, "epochs is 'ten', not a whole number"),
    ("job-truncated-image", lambda g, t, o: {"kind": "predict", "model": g["model"], "image": truncated(g["image"], t, "cut.nii.gz"), "out": str(o / "p.nii.gz")}, EXIT_BAD_INPUT, "the file is truncated"),
    ("job-predict-cases-name-climbs-out", lambda g, t, o: {"kind": "predict-cases", "model": g["model"], "cases": [{"name": "../escaped", "image": g["image"]}], "out_dir": str(o / "p")}, EXIT_BAD_INPUT, "the case name '../escaped' cannot be a file name"),
    ("job-tighten-train-out-is-a-file", lambda g, t, o: {"kind": "tighten-train", "out": text_file(o, "t", "x"), "cases": [{"image": g["image"], "mask": g["mask"]}], "config": {"patch": 8}}, EXIT_BAD_INPUT, "the tightener folder is a file"),
]


@pytest.mark.parametrize("build, code, fragment", [c[1:] for c in JOBS], ids=[c[0] for c in JOBS])
def test_bad_worker_job_is_one_error_event_and_changes_nothing(build, code, fragment, good, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    job = tmp_path / "job.json"
    job.write_text(json.dumps(build(good, tmp_path, out)))
    capfd.readouterr()
    before = snapshot(tmp_path)
    assert worker.main([str(job)]) == code
    captured = capfd.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == code and fragment in errors[0]["message"], captured
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) <= 1, captured.err
    assert snapshot(tmp_path) == before


def test_every_command_has_bad_input_cases():
    for command in ("train-", "predict-", "evaluate-", "boxes-from-mask-", "sizes-from-mask-", "partial-from-mask-",
                    "tighten-", "tighten-train-", "dataset-"):
        assert sum(c[0].startswith(command) for c in CASES) >= 2, command

"""The `weakseg` command line, run as a real subprocess (python -m WeakSegLib)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from WeakSegLib.app.jobs import EXIT_BAD_INPUT
from WeakSegLib.engine.predict.postprocess import apply
from WeakSegLib.io.boxes import load_boxes
from WeakSegLib.io.volume import read_label_volume, read_volume


def weakseg(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "WeakSegLib", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"weakseg {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_boxes_train_predict_evaluate(spine_ct, tmp_path):
    boxes = tmp_path / "boxes.json"
    out = weakseg("boxes-from-mask", spine_ct["mask"], "--out", boxes, "--name", "vertebrae").stdout
    assert "slice boxes (axis 1" in out  # auto → axial axis of this CT
    bs = load_boxes(boxes)
    assert bs.labels == {1: "vertebrae"} and all(b.kind == "slice" and b.axis == 1 for b in bs.boxes)
    events = tmp_path / "events.jsonl"
    weakseg("train", "--image", spine_ct["image"], "--boxes", boxes, "--eval-mask", spine_ct["mask"], "--out",
            tmp_path / "model", "--epochs", 2, "--device", "cpu", "--events", events)
    lines = [json.loads(l) for l in events.read_text().splitlines()]
    assert [l["event"] for l in lines] == ["start", "epoch", "epoch", "done"] and "dice" in lines[1]
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    assert card["recipe"] == "boxsup"  # auto: tight slice boxes on a 2D network
    pred = tmp_path / "pred.nrrd"
    weakseg("predict", "--model", tmp_path / "model", "--image", spine_ct["image"], "--out", pred, "--quiet")
    assert read_label_volume(pred).shape == read_volume(spine_ct["image"]).shape
    scores = json.loads(weakseg("evaluate", "--pred", pred, "--ref", spine_ct["mask"], "--json").stdout)
    assert set(scores) == {"dice", "iou", "hd95"} and 0 <= scores["dice"] <= 1
    text = weakseg("evaluate", "--pred", spine_ct["mask"], "--ref", spine_ct["mask"]).stdout
    assert "Dice 1.0000" in text and "HD95 0.00 mm" in text


def test_3d_boxes_with_margin_and_label_train_the_box_constraints(spine_ct, tmp_path):
    weakseg("boxes-from-mask", spine_ct["mask"], "--out", tmp_path / "b.json", "--mode", "3d", "--margin", 2,
            "--label", 1)
    (box,) = load_boxes(tmp_path / "b.json").boxes
    mask = read_label_volume(spine_ct["mask"]).array
    idx = np.argwhere(mask > 0)
    assert box.kind == "3d"
    assert box.start == tuple(np.maximum(idx.min(0) - 2, 0))
    assert box.stop == tuple(np.minimum(idx.max(0) + 3, mask.shape))
    weakseg("train", "--image", spine_ct["image"], "--boxes", tmp_path / "b.json", "--out", tmp_path / "m",
            "--epochs", 1, "--epoch-batches", 1, "--device", "cpu", "--quiet")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["recipe"] == "tightness+size+emptiness"  # auto: the slices of a 3D box are loose


def test_polar_mil_trains_on_a_3d_box_and_its_model_predicts(spine_ct, tmp_path):
    weakseg("boxes-from-mask", spine_ct["mask"], "--out", tmp_path / "b.json", "--mode", "3d")
    weakseg("train", "--image", spine_ct["image"], "--boxes", tmp_path / "b.json", "--out", tmp_path / "m",
            "--recipe", "polar-mil", "--polar-rays", 12, "--polar-centre", "box", "--polar-parallel",
            "--mil-angles", -20, 20, 20, "--mil-smoothmax", "softmax", "--epochs", 1, "--epoch-batches", 2,
            "--device", "cpu", "--quiet")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    config = card["training"]
    assert card["recipe"] == "polar-mil" and (config["lr"], config["decay_from"]) == (1e-4, 0.5)  # its own schedule
    mine = config["recipe_settings"]
    assert (mine["polar_rays"], mine["polar_centre"], mine["polar_parallel"], mine["mil_angles"],
            mine["mil_smoothmax"]) == (12, "box", True, [-20.0, 20.0, 20.0], "softmax")
    weakseg("predict", "--model", tmp_path / "m", "--image", spine_ct["image"], "--out", tmp_path / "p.nii.gz",
            "--quiet")
    assert read_label_volume(tmp_path / "p.nii.gz").shape == read_volume(spine_ct["image"]).shape


def test_full_recipe_from_masks_only(spine_ct, tmp_path):
    """``auto`` picks ``full`` for masks; a recipe setting given for the recipes it did not pick is named."""
    proc = weakseg("train", "--image", spine_ct["image"], "--mask", spine_ct["mask"], "--out", tmp_path / "m",
                   "--epochs", 1, "--boxsup-k", 3, "--quiet")
    assert json.loads((tmp_path / "m" / "model.json").read_text())["recipe"] == "full" and "model →" in proc.stdout
    assert "note: recipe auto picked full, which does not use --boxsup-k" in proc.stderr


def test_deepcut_and_semi_supervised_boxsup_from_the_command_line(spine_ct, spine_boxes, tmp_path):
    """DeepCut's CRF pool starts worker processes under `python -m WeakSegLib`; BoxSup mixes a boxed
    volume with a masked one ('-' marks a missing file)."""
    events = tmp_path / "deepcut.jsonl"
    weakseg("train", "--image", spine_ct["image"], "--boxes", spine_boxes, "--out", tmp_path / "dc", "--recipe",
            "deepcut", "--epochs", 2, "--proposal-every", 1, "--processes", 2, "--quiet", "--events", events)
    epochs = [json.loads(l) for l in events.read_text().splitlines() if '"epoch"' in l]
    assert epochs[-1]["proposal_update"] == 1 and epochs[-1]["crf_seconds"] > 0
    assert json.loads((tmp_path / "dc" / "model.json").read_text())["recipe"] == "deepcut"
    out = weakseg("train", "--image", spine_ct["image"], "--boxes", spine_boxes, "--mask", "-",
                  "--image", spine_ct["image"], "--boxes", "-", "--mask", spine_ct["mask"],
                  "--out", tmp_path / "bs", "--recipe", "boxsup", "--epochs", 1, "--boxsup-k", 3, "--quiet").stdout
    card = json.loads((tmp_path / "bs" / "model.json").read_text())
    assert "model →" in out and card["training"]["recipe_settings"]["boxsup_k"] == 3 and len(card["training"]["cases"]) == 2


def test_sizes_and_partial_labels_from_the_command_line(spine_ct, tmp_path):
    """sizes-from-mask → train --sizes (default recipe 'size'); partial-from-mask → train --recipe
    accl-unpaired with reference masks."""
    sizes = tmp_path / "sizes.json"
    out = weakseg("sizes-from-mask", spine_ct["mask"], "--out", sizes, "--name", "vertebrae").stdout
    assert "size labels on axis 1" in out and json.loads(sizes.read_text())["format"] == "weakseg-sizes"
    weakseg("train", "--image", spine_ct["image"], "--sizes", sizes, "--out", tmp_path / "s", "--epochs", 1,
            "--size-samples", 2, "--quiet")
    card = json.loads((tmp_path / "s" / "model.json").read_text())
    assert card["recipe"] == "size" and card["training"]["recipe_settings"]["size_samples"] == 2
    partial = tmp_path / "partial.nrrd"
    out = weakseg("partial-from-mask", spine_ct["mask"], "--out", partial, "--erode", 2).stdout
    assert "annotation ratio: object" in out
    values = set(np.unique(read_label_volume(partial).array).tolist())
    assert values == {0, 1, 255}
    weakseg("train", "--image", spine_ct["image"], "--partial", partial, "--reference", spine_ct["mask"],
            "--recipe", "accl-unpaired", "--adv-weight", 0.05, "--out", tmp_path / "a", "--epochs", 1, "--quiet")
    card = json.loads((tmp_path / "a" / "model.json").read_text())
    assert card["recipe"] == "accl-unpaired" and card["training"]["recipe_settings"]["adv_weight"] == 0.05


@pytest.mark.parametrize("args,message", [
    (["train", "--image", "IMG", "--sizes", "a.json", "--sizes", "b.json", "--out", "OUT"], "give one --sizes per --image"),
    (["sizes-from-mask", "MASK", "--out", "s.json", "--label", "99"], "no object with label(s) [99]"),
    (["evaluate", "--pred", "missing.nrrd", "--ref", "missing.nrrd"], "file not found"),
    (["train", "--image", "IMG", "--out", "OUT"], "give --boxes"),
    (["boxes-from-mask", "MASK", "--out", "b.json", "--label", "99"], "no object with label(s) [99]"),
])
def test_errors_are_one_clear_line_with_exit_code_2(args, message, spine_ct, tmp_path):
    names = {"IMG": spine_ct["image"], "MASK": spine_ct["mask"], "OUT": tmp_path / "o"}
    args = [names.get(a, a) for a in args]
    proc = weakseg(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_predict_with_a_missing_model_names_it(spine_ct, tmp_path):
    proc = weakseg("predict", "--model", tmp_path / "nowhere", "--image", spine_ct["image"], "--out",
                   tmp_path / "p.nrrd", check=False)
    assert proc.returncode == 2 and "model folder not found" in proc.stderr


def test_demo_writes_report_model_prediction_and_curves(tmp_path):
    out = tmp_path / "demo"
    weakseg("demo", "--out", out, "--epochs", 1, "--quiet")
    report = (out / "report.md").read_text()
    picked = json.loads((out / "model-auto" / "model.json").read_text())["recipe"]
    assert picked == "boxsup"  # auto's pick for tight slice boxes, named in the report
    for row in ("filled boxes (no training)", f"auto ({picked})", "box-mask", "full"):
        assert f"| {row} |" in report
    assert (out / "prediction.nii.gz").exists()
    for png in ("training_curves.png", "overlay.png", "cross-subject/overlay-full.png", "cross-subject/overlay-auto.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    other = report[report.index("## Another subject: trained on `spine-ct`, predicting `chest-ct-spine`"):]
    for recipe, model in ((f"auto ({picked})", "model-auto"), ("full", "model-full")):
        steps = json.loads((out / "cross-subject" / model / "model.json").read_text())["postprocess"]["steps"]
        assert f"| {recipe} |" in other and f"| {recipe}, post-processed ({steps['1']}) |" in other
    assert "| filled boxes (no training) |" in other
    raw, post = (read_label_volume(out / "cross-subject" / f"predictions-full{s}" / "chest-ct-spine.nii.gz")
                 for s in ("-raw", ""))
    assert raw.shape == read_volume(out / "cross-subject" / "chest-ct-spine" / "image.nii.gz").shape
    steps = json.loads((out / "cross-subject" / "model-full" / "model.json").read_text())["postprocess"]["steps"]
    np.testing.assert_array_equal(post.array, apply(raw.array, {1: steps["1"]}))


def test_tighten_train_then_tighten(spine_ct, tmp_path):
    events = tmp_path / "events.jsonl"
    out = weakseg("tighten-train", "--image", spine_ct["image"], "--mask", spine_ct["mask"], "--out",
                  tmp_path / "tightener", "--patch-size", 8, "--context", 4, "--epochs", 2, "--device", "cpu",
                  "--events", events, "--quiet").stdout
    assert "tightener →" in out and "val_accuracy" in out
    assert json.loads((tmp_path / "tightener" / "model.json").read_text())["network"]["context"] == 4
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds == ["start", "epoch", "epoch", "done"]
    boxes3d = tmp_path / "boxes3d.json"
    weakseg("boxes-from-mask", spine_ct["mask"], "--out", boxes3d, "--mode", "3d", "--margin", 3)
    boxes2d, report = tmp_path / "boxes2d.json", tmp_path / "report.json"
    text = weakseg("tighten", "--model", tmp_path / "tightener", "--image", spine_ct["image"], "--boxes", boxes3d,
                   "--out", boxes2d, "--report", report).stdout
    assert "box #0 (label 1):" in text and "boxes →" in text
    original = load_boxes(boxes3d).boxes[0]
    result = load_boxes(boxes2d)
    assert result.boxes and all(b.kind == "slice" and b.axis == spine_ct["axis"] for b in result.boxes)
    assert all(o0 <= s and t <= o1 for b in result.boxes for s, t, o0, o1 in zip(b.start, b.stop, original.start,
                                                                                   original.stop))
    assert json.loads(report.read_text())["boxes"][0]["slices_out"] == len(result.boxes)


def test_tighten_with_a_segmentation_model_is_refused(spine_ct, tmp_path):
    weakseg("train", "--image", spine_ct["image"], "--mask", spine_ct["mask"], "--out", tmp_path / "seg",
            "--epochs", 1, "--device", "cpu", "--quiet")
    boxes3d = tmp_path / "b.json"
    weakseg("boxes-from-mask", spine_ct["mask"], "--out", boxes3d, "--mode", "3d")
    proc = weakseg("tighten", "--model", tmp_path / "seg", "--image", spine_ct["image"], "--boxes", boxes3d,
                   "--out", tmp_path / "o.json", check=False)
    assert proc.returncode == 2 and "not a weakseg-tightener card" in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_tighten_train_progress_bar(spine_ct, tmp_path):
    proc = weakseg("tighten-train", "--image", spine_ct["image"], "--mask", spine_ct["mask"], "--out",
                   tmp_path / "t", "--patch-size", 8, "--epochs", 1, "--device", "cpu")
    assert "tighten-train" in proc.stderr and "val acc" in proc.stderr and "Traceback" not in proc.stderr


def test_a_recipe_added_through_the_registry_alone_trains_through_the_command_line(spine_ct, spine_boxes, tmp_path,
                                                                                    monkeypatch, capsys):
    """One module outside the package (Testing/helpers/toy_recipe.py: the recipe, its settings class and
    its spec) and one registry line: the command line offers the recipe and its setting in a help group
    of its own, checks the setting, trains the recipe with it and records it in the model card."""
    import toy_recipe

    from WeakSegLib.app.cli import build_parser, main
    from WeakSegLib.registry import register, spec

    monkeypatch.setattr(spec, "_REGISTRY", dict(spec._REGISTRY))  # the line lives for this test only
    register(toy_recipe.SPEC)
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "settings of toy-box-dice: --dice-weight DICE_WEIGHT weight of the soft box Dice (default: 1.0)" in help_text
    run = ["train", "--image", spine_ct["image"], "--boxes", spine_boxes, "--recipe", "toy-box-dice",
           "--out", str(tmp_path / "toy"), "--epochs", "1", "--channels", "8", "16", "32", "64", "128",
           "--device", "cpu", "--events", str(tmp_path / "events.jsonl"), "--quiet"]
    assert main([*run, "--dice-weight", "-1"]) == EXIT_BAD_INPUT
    assert "dice_weight must be positive, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()
    assert main([*run, "--dice-weight", "0.5"]) == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "toy" / "model.json").read_text())
    epoch = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()][1]
    assert card["recipe"] == "toy-box-dice" and epoch["event"] == "epoch" and 0 < epoch["box-dice"] < 0.5
    assert card["training"]["recipe_settings"] == {"dice_weight": 0.5}
    assert card["network"]["channels"] == [8, 16, 32, 64, 128]

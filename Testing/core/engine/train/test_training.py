"""Training loop, model folders, inference on the input grid, resume, cancel and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from configs import quick

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import predict_file, predict_volume
from WeakSegLib.engine.predict.model import load_model
from WeakSegLib.engine.train.training import CHECKPOINT, train
from WeakSegLib.errors import CancelledError, InputError, ModelError
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.volume import read_label_volume, read_volume
from WeakSegLib.registry import DEFAULT_RECIPE, recipe_spec


@pytest.fixture
def boxed_case(synthetic_case, tmp_path):
    mask = read_label_volume(synthetic_case["mask"])
    path = tmp_path / "boxes.json"
    save_boxes(BoxSet(boxes_from_mask(mask.array, "slice", 0), mask.shape, {1: "left", 2: "right"},
                      mask.geometry()), path)
    return dict(synthetic_case, boxes=str(path))


def test_a_recipe_that_can_end_empty_says_so_before_its_first_epoch(boxed_case, tmp_path):
    """tightness+emptiness has no term that holds the object up (docs/methods.md §1): its caveat is a
    warning before training, in the events the command line and the panels show; the default recipe has none."""
    case = TrainCase(boxed_case["image"], boxes=boxed_case["boxes"])
    caveat = recipe_spec("tightness+emptiness").caveat
    assert "size bounds" in caveat and "\n" not in caveat
    for recipe, warned in (("tightness+emptiness", True), (DEFAULT_RECIPE, False)):
        events = []
        train([case], quick(recipe=recipe, epochs=1, epoch_batches=1), tmp_path / recipe, on_event=events.append)
        kinds = [e["event"] for e in events]
        said = [i for i, e in enumerate(events) if e["event"] == "warning" and caveat in e["message"]]
        assert bool(said) == warned
        if warned:
            assert said[0] < kinds.index("epoch") and recipe in events[said[0]]["message"]


def test_train_writes_model_and_predicts_on_the_input_grid(boxed_case, tmp_path):
    events = []
    card = train([TrainCase(boxed_case["image"], boxes=boxed_case["boxes"], eval_mask=boxed_case["mask"])],
                 quick(epochs=2), tmp_path / "m", on_event=events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2
    epoch = [e for e in events if e["event"] == "epoch"][-1]
    assert {"loss", "tightness", "size", "emptiness", "dice", "t"} <= set(epoch)
    assert epoch["t"] == pytest.approx(5.0 * 1.1)
    assert [l.name for l in card.labels] == ["left", "right"]
    on_disk = json.loads((tmp_path / "m" / "model.json").read_text())
    assert on_disk["format"] == "weakseg-model" and on_disk["recipe"] == "tightness+size+emptiness"
    assert len(on_disk["history"]) == 2 and "torch" in on_disk["versions"]
    pred = tmp_path / "pred.nii.gz"
    prob = tmp_path / "prob.nii.gz"
    predict_file(tmp_path / "m", boxed_case["image"], pred, prob_out=prob)
    image, labels, p = read_volume(boxed_case["image"]), read_label_volume(pred), read_volume(prob)
    assert labels.shape == image.shape and np.allclose(labels.spacing, image.spacing)
    assert np.allclose(labels.origin, image.origin, atol=1e-4) and np.allclose(labels.direction, image.direction, atol=1e-6)
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    assert p.array.min() >= 0 and p.array.max() <= 1 and p.shape == image.shape


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(boxed_case, tmp_path):
    cases = [TrainCase(boxed_case["image"], boxes=boxed_case["boxes"])]
    train(cases, quick(epochs=2, network="enet"), tmp_path / "a")
    train(cases, quick(epochs=1, network="enet"), tmp_path / "b")
    events = []
    train(cases, quick(epochs=2, network="enet"), tmp_path / "b", on_event=events.append)
    assert events[0]["first_epoch"] == 2
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_resume_with_other_settings_is_refused(boxed_case, tmp_path):
    cases = [TrainCase(boxed_case["image"], boxes=boxed_case["boxes"])]
    train(cases, quick(), tmp_path / "m")
    with pytest.raises(ModelError, match="other settings.*recipe"):
        train(cases, quick(epochs=2, recipe="tightness+emptiness"), tmp_path / "m")


def test_checkpoint_older_than_a_setting_resumes_when_that_setting_is_default(boxed_case, tmp_path):
    """A checkpoint written before settings existed (here: augment, shared, and band_width, the
    recipe's) resumes while they keep their defaults, and is refused, naming the setting, when one is
    changed; the settings of other recipes it records are not compared."""
    from WeakSegLib.engine.predict.model import load_state
    from WeakSegLib.io.atomic import atomic_torch_save

    cases = [TrainCase(boxed_case["image"], boxes=boxed_case["boxes"])]
    train(cases, quick(), tmp_path / "m")
    ckpt = load_state(tmp_path / "m" / CHECKPOINT)
    for key in ("augment", "band_width"):
        del ckpt["config"][key]
    # written when every recipe's settings were in one class: the other recipes' are not compared
    ckpt["config"].update(size_anchors=2, proposal_every=10, crf={}, boxsup_k=5)
    atomic_torch_save(tmp_path / "m" / CHECKPOINT, ckpt)
    with pytest.raises(ModelError, match="other settings.*band_width"):
        train(cases, quick(epochs=2, band_width=3), tmp_path / "m")
    events = []
    train(cases, quick(epochs=2), tmp_path / "m", on_event=events.append)
    assert events[0]["first_epoch"] == 2


def test_cancel_stops_at_a_batch_and_keeps_the_last_checkpoint(boxed_case, tmp_path):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 4  # 3 batches per epoch: cancel in epoch 2

    cases = [TrainCase(boxed_case["image"], boxes=boxed_case["boxes"])]
    with pytest.raises(CancelledError, match="epoch 2"):
        train(cases, quick(epochs=5), tmp_path / "m", should_stop=stop)
    ckpt = torch.load(tmp_path / "m" / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 1 and not (tmp_path / "m" / "model.json").exists()
    events = []
    train(cases, quick(epochs=2), tmp_path / "m", on_event=events.append)
    assert events[0]["first_epoch"] == 2 and (tmp_path / "m" / "model.json").exists()


@pytest.mark.parametrize("config", [dict(network="enet"), dict(context=3), dict(spatial_dims=3, batch_size=1),
                                    dict(recipe="tightness+size+masked-ce"), dict(recipe="tightness+emptiness"),
                                    dict(recipe="box-mask")])
def test_networks_modes_and_recipes_train_and_predict(boxed_case, tmp_path, config):
    image = read_volume(boxed_case["image"])
    boxes = boxed_case["boxes"]
    if config.get("spatial_dims") == 3:
        mask = read_label_volume(boxed_case["mask"])
        boxes = str(tmp_path / "b3.json")
        save_boxes(BoxSet(boxes_from_mask(mask.array, "3d"), mask.shape, {1: "l", 2: "r"}, mask.geometry()), boxes)
    card = train([TrainCase(boxed_case["image"], boxes=boxes)], quick(**config), tmp_path / "m")
    assert np.isfinite(card.history[0]["loss"])
    labels, _ = predict_volume(tmp_path / "m", image, device="cpu")
    assert labels.shape == image.shape


def test_a_two_label_run_predicts_each_label_where_it_is(tmp_path):
    """Label values 3 and 7 (two bright blocks of different intensity): after a short ``full`` run every
    label value is predicted on its own object, and the per-epoch Dice is the per-label mean."""
    from synthetic import oblique_volume

    from WeakSegLib.engine.predict.metrics import dice
    from WeakSegLib.io.volume import write_volume

    mask = np.zeros((8, 32, 32), np.uint8)
    mask[1:7, 4:14, 5:15] = 3
    mask[2:7, 18:28, 16:29] = 7
    image = np.where(mask == 3, 100.0, np.where(mask == 7, 200.0, 0.0))
    image = (image + np.random.default_rng(0).normal(0, 10, mask.shape)).astype(np.float32)
    write_volume(oblique_volume(image), tmp_path / "img.nrrd")
    write_volume(oblique_volume(mask), tmp_path / "mask.nrrd")
    card = train([TrainCase(str(tmp_path / "img.nrrd"), mask=str(tmp_path / "mask.nrrd"),
                            eval_mask=str(tmp_path / "mask.nrrd"))], quick(recipe="full", epochs=20, batch_size=4, lr=3e-3),
                 tmp_path / "m")
    assert [l.value for l in card.labels] == [3, 7] and "ce" in card.history[0]
    labels, _ = predict_volume(tmp_path / "m", read_volume(tmp_path / "img.nrrd"), device="cpu")
    per_label = [dice(labels.array == v, mask == v) for v in (3, 7)]
    assert min(per_label) > 0.9, per_label
    assert card.history[-1]["dice"] == pytest.approx(np.mean(per_label), abs=1e-6)


def test_missing_labels_for_the_recipe_are_explained(boxed_case, tmp_path):
    with pytest.raises(InputError, match="trains on masks: give --mask"):
        train([TrainCase(boxed_case["image"], boxes=boxed_case["boxes"])], quick(recipe="full"), tmp_path / "m")
    with pytest.raises(InputError, match="trains on boxes or masks: give --boxes or --mask"):
        train([TrainCase(boxed_case["image"], partial=boxed_case["mask"])], quick(), tmp_path / "m")
    with pytest.raises(InputError, match="no case gives boxes: .* or train recipe 'full'"):  # masks alone: not mixed
        train([TrainCase(boxed_case["image"], mask=boxed_case["mask"])], quick(), tmp_path / "m")
    with pytest.raises(InputError, match="no training case"):
        train([], quick(), tmp_path / "m")


def test_boxes_of_another_image_are_refused(boxed_case, spine_ct, tmp_path):
    with pytest.raises(InputError, match="mismatched image/box geometry"):
        train([TrainCase(spine_ct["image"], boxes=boxed_case["boxes"])], quick(), tmp_path / "m")


def test_mask_on_another_grid_is_refused(boxed_case, spine_ct, tmp_path):
    with pytest.raises(InputError, match="not the same grid"):
        train([TrainCase(boxed_case["image"], mask=spine_ct["mask"])], quick(recipe="full"), tmp_path / "m")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_case_module):
    folder = tmp_path_factory.mktemp("model") / "m"
    train([TrainCase(synthetic_case_module["image"], mask=synthetic_case_module["mask"])], quick(recipe="full"), folder)
    return folder


@pytest.fixture(scope="module")
def synthetic_case_module(tmp_path_factory):
    from synthetic import oblique_volume

    from WeakSegLib.io.volume import write_volume

    mask = np.zeros((6, 20, 24), np.uint8)
    mask[2:5, 4:12, 5:15] = 1
    folder = tmp_path_factory.mktemp("syn")
    write_volume(oblique_volume(mask.astype(np.float32) * 50), folder / "img.nrrd")
    write_volume(oblique_volume(mask), folder / "mask.nrrd")
    return {"image": str(folder / "img.nrrd"), "mask": str(folder / "mask.nrrd")}


def copy_model(trained, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(trained, folder)
    return folder


def test_missing_model_parts(trained, tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(tmp_path / "nothing")
    folder = copy_model(trained, tmp_path)
    (folder / "model.pt").unlink()
    with pytest.raises(ModelError, match="model weights not found"):
        load_model(folder)
    (folder / "model.json").unlink()
    with pytest.raises(ModelError, match="model card not found"):
        load_model(folder)


def test_corrupt_card_and_weights(trained, tmp_path):
    folder = copy_model(trained, tmp_path)
    (folder / "model.json").write_text("{ truncated")
    with pytest.raises(ModelError, match="model card is corrupt"):
        load_model(folder)
    folder = copy_model(trained, tmp_path / "2")
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model weights is corrupt"):
        load_model(folder)


def test_weights_are_loaded_without_unpickling_code(trained, tmp_path):
    folder = copy_model(trained, tmp_path)
    torch.save({"payload": __import__("pathlib").PurePosixPath("/etc/passwd")}, folder / "model.pt")
    with pytest.raises(ModelError, match="corrupt or not a WeakSeg file"):
        load_model(folder)


def test_wrong_channel_count_in_card(trained, tmp_path):
    folder = copy_model(trained, tmp_path)
    card = json.loads((folder / "model.json").read_text())
    card["network"]["in_channels"] = 3
    card["input"]["context"] = 3
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not fit the network"):
        load_model(folder)


def test_corrupt_checkpoint_on_resume(boxed_case, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / CHECKPOINT).write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="checkpoint is corrupt"):
        train([TrainCase(boxed_case["image"], boxes=boxed_case["boxes"])], quick(), tmp_path / "m")


def test_unknown_settings_are_refused():
    with pytest.raises(InputError, match="unknown recipe"):
        TrainConfig(recipe="magic").validate()
    with pytest.raises(InputError, match="context"):
        TrainConfig(spatial_dims=3, context=3).validate()


def test_the_training_mode_has_one_vocabulary():
    """Cards and the command line's --dims come from one table (the Train panel's modes: test_panels)."""
    from WeakSegLib.app.cli import build_parser
    from WeakSegLib.config import MODES, mode_of

    assert all(mode_of(**dims) == mode for mode, dims in MODES.items())
    dims = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}["dims"]
    assert list(dims.choices) == ["2d", "3d"] and dims.default == "2d"

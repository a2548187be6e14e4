"""Connected-component post-processing: the steps against a slow flood fill, the decision on training
cases (a far fragment goes; the two lungs of one label stay), the card, and prediction with and without it."""

from __future__ import annotations

import json
import shutil
from collections import deque
from itertools import product

import numpy as np
import pytest
import torch
from synthetic import plain_card

from WeakSegLib.app.cli import main
from WeakSegLib.config import POSTPROCESS_STEPS, TrainCase
from WeakSegLib.engine.predict.model import build_from_card, save_model
from WeakSegLib.engine.predict.postprocess import SMALL_FRACTION, Decision, apply, apply_step, decide
from WeakSegLib.engine.train.training import decide_postprocessing
from WeakSegLib.errors import ModelError
from WeakSegLib.io.boxes import boxes_from_mask, rasterize
from WeakSegLib.io.card import ModelCard, read_card
from WeakSegLib.io.sample_data import materialize_objects
from WeakSegLib.io.volume import Volume, read_label_volume, write_volume


def slow_components(mask: np.ndarray) -> list[set]:
    """26-connected components by a breadth-first walk, voxel by voxel."""
    seen, found = np.zeros(mask.shape, bool), []
    offsets = [d for d in product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        part, queue = set(), deque([start])
        seen[start] = True
        while queue:
            voxel = queue.popleft()
            part.add(voxel)
            for d in offsets:
                n = tuple(v + o for v, o in zip(voxel, d))
                if all(0 <= c < s for c, s in zip(n, mask.shape)) and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        found.append(part)
    return found


@pytest.mark.parametrize("seed", range(4))
def test_the_steps_match_a_flood_fill(seed):
    mask = np.random.default_rng(seed).random((9, 11, 10)) < 0.12
    parts = sorted(slow_components(mask), key=len, reverse=True)
    assert len(parts) > 3  # several components of several sizes
    biggest = len(parts[0])
    expect_largest = np.zeros(mask.shape, bool)
    expect_largest[tuple(np.array(sorted(parts[0])).T)] = True
    expect_small = np.zeros(mask.shape, bool)
    for part in parts:
        if len(part) >= SMALL_FRACTION * biggest:
            expect_small[tuple(np.array(sorted(part)).T)] = True
    got_largest = apply_step(mask, "largest")
    assert got_largest.sum() == biggest and (got_largest & ~mask).sum() == 0
    if len(parts[1]) < biggest:  # a unique largest: exactly it
        np.testing.assert_array_equal(got_largest, expect_largest)
    np.testing.assert_array_equal(apply_step(mask, "drop-small"), expect_small)
    np.testing.assert_array_equal(apply_step(mask, "none"), mask)


def test_apply_changes_only_its_labels_voxels():
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:5, 2:8, 2:8] = 1
    labels[2, 15, 15] = 1  # a fragment of label 1
    labels[1:5, 12:18, 2:6] = 2
    labels[3, 18, 18] = 2  # and one of label 2
    out = apply(labels, {1: "largest", 2: "none"})
    assert out[2, 15, 15] == 0 and out[3, 18, 18] == 2
    assert ((out != labels) == ((labels == 1) & (out == 0))).all() and (out != labels).sum() == 1


def test_a_far_fragment_goes_and_an_object_of_several_parts_stays(tmp_path):
    """Predictions of a real label whose object has several parts — the three vertebral bodies of the
    spine CT as one label, apart from each other across the discs (as two lungs are) — with a fragment far
    from them: against the masks the decision removes the fragment and keeps every body ('largest' would
    keep one); against the filled boxes the same; a prediction without fragments is left alone."""
    from scipy import ndimage

    truth = read_label_volume(materialize_objects("vertebral-bodies-ct", tmp_path)["mask"]).array > 0
    assert ndimage.label(truth, ndimage.generate_binary_structure(3, 3))[1] == 3
    noisy = truth.copy()
    noisy[:3, :4, :4] = True  # a corner of the field of view, far from the bodies
    prediction = noisy.astype(np.uint8)
    for references, kind in (({1: truth}, "masks"),
                             ({1: rasterize(boxes_from_mask(truth.astype(np.uint8), "slice", 0), truth.shape,
                                            [1])[0].astype(bool)}, "boxes")):
        decision = decide([(prediction, references)], [1], kind)
        assert decision.steps == {1: "drop-small"}, decision
        assert decision.scores[1]["largest"] < decision.scores[1]["none"] < decision.scores[1]["drop-small"]
        kept = apply(prediction, decision.steps) > 0
        np.testing.assert_array_equal(kept, truth)
    clean = decide([(truth.astype(np.uint8), {1: truth})], [1], "masks")
    assert clean.steps == {1: "none"}  # no step helps: none is kept


def test_a_step_that_changes_nothing_is_not_kept_and_ties_go_to_the_mildest():
    truth = np.zeros((5, 30, 30), bool)
    truth[1:4, 5:25, 5:25] = True
    assert decide([(truth.astype(np.uint8), {1: truth})], [1]).steps == {1: "none"}
    prediction = truth.copy()
    prediction[0, 0, 0] = True  # one far voxel: both steps remove it, equally well
    decision = decide([(prediction.astype(np.uint8), {1: truth})], [1])
    assert decision.scores[1]["largest"] == decision.scores[1]["drop-small"] > decision.scores[1]["none"]
    assert decision.steps == {1: "drop-small"}


def test_the_card_keeps_the_decision_and_refuses_a_bad_one(good_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(good_model, folder)
    card = json.loads((folder / "model.json").read_text())
    card["postprocess"] = Decision({1: "largest"}, {1: {s: 0.5 for s in POSTPROCESS_STEPS}}, "masks", 2).to_dict()
    (folder / "model.json").write_text(json.dumps(card))
    back = read_card(folder)
    assert back.postprocess_steps() == {1: "largest"}
    assert Decision.from_dict(back.postprocess) == Decision.from_dict(card["postprocess"])
    assert ModelCard.from_dict(json.loads(json.dumps(back.to_dict()))).postprocess == back.postprocess
    card["postprocess"]["steps"] = {"1": "erode"}
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="postprocess.steps maps '1' to 'erode'"):
        read_card(folder)
    del card["postprocess"]
    (folder / "model.json").write_text(json.dumps(card))
    assert read_card(folder).postprocess_steps() == {}  # a card from before: no post-processing


@pytest.fixture(scope="module")
def good_model(spine_ct, tmp_path_factory):
    """A small network trained 6 short epochs on the spine CT's mask: its predictions have many fragments;
    its card's decision as training made it."""
    folder = tmp_path_factory.mktemp("pp") / "model"
    assert main(["train", "--image", spine_ct["image"], "--mask", spine_ct["mask"], "--out", str(folder), "--epochs",
                 "6", "--epoch-batches", "4", "--channels", "4", "8", "16", "--device", "cpu", "--quiet"]) == 0
    return folder


def test_training_decides_on_its_cases_and_predict_applies_the_decision(good_model, spine_ct, tmp_path):
    """The card records the decision made on the training case (against its mask); predict applies the
    card's steps, ``--no-postprocess`` gives the network's labels, and a card without a decision predicts
    exactly those."""
    decision = Decision.from_dict(read_card(good_model).postprocess)
    assert decision.reference == "masks" and decision.cases == 1 and set(decision.steps) == {1}
    assert set(decision.scores[1]) == set(POSTPROCESS_STEPS)
    folder = tmp_path / "m"
    shutil.copytree(good_model, folder)
    card = json.loads((folder / "model.json").read_text())
    card["postprocess"]["steps"] = {"1": "largest"}  # force a step that changes this prediction
    (folder / "model.json").write_text(json.dumps(card))
    run = {name: tmp_path / f"{name}.nii.gz" for name in ("post", "raw", "old")}
    assert main(["predict", "--model", str(folder), "--image", spine_ct["image"], "--out", str(run["post"]),
                 "--device", "cpu", "--quiet"]) == 0
    assert main(["predict", "--model", str(folder), "--image", spine_ct["image"], "--out", str(run["raw"]),
                 "--device", "cpu", "--quiet", "--no-postprocess"]) == 0
    del card["postprocess"]
    (folder / "model.json").write_text(json.dumps(card))
    assert main(["predict", "--model", str(folder), "--image", spine_ct["image"], "--out", str(run["old"]),
                 "--device", "cpu", "--quiet"]) == 0
    post, raw, old = (read_label_volume(run[n]).array for n in ("post", "raw", "old"))
    np.testing.assert_array_equal(old, raw)
    np.testing.assert_array_equal(post, apply(raw, {1: "largest"}))
    assert (post != raw).any()  # the network's labels have several components


def test_largest_keeps_the_first_of_two_equal_largest_components():
    mask = np.zeros((4, 20, 20), bool)
    mask[1:3, 2:6, 2:6] = mask[1:3, 12:16, 12:16] = True  # two equal cubes
    mask[1, 18, 2] = True  # and a small one
    kept = apply_step(mask, "largest")
    assert kept.sum() == 32 and kept[1:3, 2:6, 2:6].all() and not kept[1:3, 12:16, 12:16].any()


def test_drop_small_keeps_a_component_of_a_fifth_of_the_largest_and_drops_one_of_a_twentieth():
    """The documented rule (docs/methods.md §9): components under a tenth of the largest go."""
    mask = np.zeros((4, 30, 30), bool)
    mask[0:4, 0:10, 0:10] = True     # 400 voxels
    mask[0:4, 20:30, 20:22] = True   # 80: a fifth
    mask[0:4, 0:5, 25] = True        # 20: a twentieth
    kept = apply_step(mask, "drop-small")
    assert kept.sum() == 480 and not kept[0:4, 0:5, 25].any()


def test_a_decision_counts_its_cases_and_a_card_without_one_reads_as_none():
    truth = np.zeros((4, 12, 12), bool)
    truth[1:3, 3:9, 3:9] = True
    decision = decide([(truth.astype(np.uint8), {1: truth})] * 3, [1], "masks")
    assert decision.cases == 3
    assert Decision.from_dict(decision.to_dict()) == decision
    assert Decision.from_dict({}) == Decision()  # a card written before post-processing


def test_the_decision_uses_the_first_eight_training_cases(tmp_path):
    """Up to MAX_CASES (8) cases are predicted for the decision: the first ones with a reference."""
    card = plain_card(2, 0, 1, [1], network="unet", spacing=[1.0, 1.0, 1.0])
    save_model(tmp_path / "m", build_from_card(card), card)
    image = Volume(np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32))
    mask = np.zeros((3, 16, 16), np.uint8)
    mask[1, 4:9, 4:9] = 1
    write_volume(image, tmp_path / "i.nrrd")
    write_volume(image.with_array(mask), tmp_path / "m.nrrd")
    labelled = TrainCase(str(tmp_path / "i.nrrd"), mask=str(tmp_path / "m.nrrd"))
    cases = [TrainCase(str(tmp_path / "i.nrrd"))] + [labelled] * 9  # the first has no reference
    assert decide_postprocessing(tmp_path / "m", cases, card, torch.device("cpu")).cases == 8

"""Box tightener: patch grid against slow references, consistency rules, training (resume, cancel),
tightening of an object never seen in training (real chest CT), bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from WeakSegLib.config import TightenerCase, TightenerConfig, TightenSettings
from WeakSegLib.engine.predict.metrics import slice_box_iou
from WeakSegLib.errors import CancelledError, InputError, ModelError
from WeakSegLib.io.boxes import Box, BoxSet, boxes_from_mask, split_box
from WeakSegLib.io.sample_data import materialize_objects
from WeakSegLib.io.volume import Volume, read_label_volume, read_volume, write_volume
from WeakSegLib.tightener.model import load_tightener
from WeakSegLib.tightener.patches import (
    extract_patches,
    largest_component,
    patch_coverage,
    patch_grid,
    patch_labels,
    positive_extent,
)
from WeakSegLib.tightener.tighten import consistent_extents, tighten
from WeakSegLib.tightener.training import train_tightener

# ------------------------------------------------------------------------------- patch grid


def reference_window(plane, r, c, p, pad):
    """Slow p×p window with top-left (r, c), padded outside the plane."""
    out = np.full((p, p), pad, np.float32)
    for i in range(p):
        for j in range(p):
            if 0 <= r + i < plane.shape[0] and 0 <= c + j < plane.shape[1]:
                out[i, j] = plane[r + i, c + j]
    return out


@pytest.mark.parametrize("patch,stride", [(16, 8), (16, 4), (8, 2), (32, 16)])
def test_grid_cells_partition_the_box_and_windows_are_centred(patch, stride):
    box = (3, 30, 5, 22)
    grid = patch_grid(box, patch, stride)
    cover = np.zeros((40, 40), int)
    for r0, r1, c0, c1 in grid.cells:
        cover[r0:r1, c0:c1] += 1
    inside = np.zeros_like(cover)
    inside[3:30, 5:22] = 1
    np.testing.assert_array_equal(cover, inside)  # every box pixel in exactly one cell
    assert grid.shape[0] * grid.shape[1] == len(grid.cells)
    for (r0, _, c0, _), (wr, wc) in zip(grid.cells, grid.corners):
        assert wr + patch / 2 == r0 + stride // 2 and wc + patch / 2 == c0 + stride // 2


def test_patches_and_coverage_match_slow_references():
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(23, 31)).astype(np.float32)
    obj = rng.random((23, 31)) < 0.4
    grid = patch_grid((0, 23, 2, 31), 8, 4)  # windows reach beyond the plane on every side
    windows = extract_patches(plane, grid, -5.0)
    cover = patch_coverage(obj, grid)
    for n, (r, c) in enumerate(grid.corners):
        np.testing.assert_array_equal(windows[n], reference_window(plane, r, c, 8, -5.0))
        assert cover[n] == pytest.approx(reference_window(obj.astype(np.float32), r, c, 8, 0).mean())
    np.testing.assert_array_equal(patch_labels(obj, grid), (cover > 0.5).astype(int))


def test_context_windows_match_slow_reference_and_centre_the_patch():
    rng = np.random.default_rng(2)
    plane = rng.normal(size=(19, 26)).astype(np.float32)
    grid = patch_grid((1, 19, 0, 26), 8, 2)
    windows = extract_patches(plane, grid, -5.0, context=6)
    assert windows.shape == (len(grid.cells), 20, 20)
    for n, (r, c) in enumerate(grid.corners):
        np.testing.assert_array_equal(windows[n], reference_window(plane, r - 6, c - 6, 20, -5.0))
    np.testing.assert_array_equal(windows[:, 6:14, 6:14], extract_patches(plane, grid, -5.0))
    with pytest.raises(InputError, match="context"):
        extract_patches(plane, grid, 0.0, context=-1)


@pytest.mark.parametrize("name,patch,context,pooled", [("light", 8, 8, (2, 2)), ("light", 16, 0, (4, 4)),
                                                       ("light", 8, 4, (2, 2)), ("vgg16", 16, 8, (1, 1))])
def test_classifier_with_context_pools_only_the_central_patch(name, patch, context, pooled):
    from WeakSegLib.nets.classifier import PatchClassifier

    net = PatchClassifier(name, patch, context).eval()
    seen = []
    net.pool.register_forward_hook(lambda module, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    side = patch + 2 * context
    assert net(torch.zeros(3, 1, side, side)).shape == (3, 2)
    assert seen == [pooled]


def test_positive_extent_cells_and_patches():
    grid = patch_grid((0, 32, 0, 32), 16, 8)  # 4×4 cells of 8 px
    positive = np.zeros(16, bool)
    positive[[5, 6, 9]] = True  # cells (1,1), (1,2), (2,1)
    assert positive_extent(grid, positive, (0, 32, 0, 32), "cells") == (8, 24, 8, 24)
    # windows of those cells: corners (4,4), (4,12), (12,4) → bounds [4, 28) × [4, 28)
    assert positive_extent(grid, positive, (0, 32, 0, 32), "patches") == (4, 28, 4, 28)
    assert positive_extent(grid, positive, (0, 32, 0, 20), "patches") == (4, 28, 4, 20)  # clipped
    assert positive_extent(grid, np.zeros(16, bool), (0, 32, 0, 32)) is None


def test_largest_component_and_bridge():
    pos = np.zeros((6, 5, 5), bool)
    pos[0:2, 0:2, 0:2] = True          # 8 cells
    pos[3:6, 3:5, 3:5] = True          # 12 cells: the largest
    pos[4, 0, 0] = True                # isolated
    kept = largest_component(pos)
    np.testing.assert_array_equal(kept, pos & (np.arange(6)[:, None, None] >= 3) & (np.arange(5)[None, :, None] >= 3))
    gap = np.zeros((7, 3, 3), bool)
    gap[0:2, 1, 1] = gap[4:7, 1, 1] = True  # a gap of 2 slices
    assert largest_component(gap).sum() == 3
    np.testing.assert_array_equal(largest_component(gap, bridge=2), gap)


# ------------------------------------------------------------------------------ consistency

def test_consistency_drops_ends_rejects_outliers_fills_gaps_and_smooths():
    e = (10, 30, 10, 30)
    extents = [None, (0, 2, 0, 2), None, None, None, e, (11, 29, 10, 30), None, (12, 28, 12, 28),
               (40, 90, 40, 90), (13, 27, 13, 27), None]
    out, info = consistent_extents(extents, max_gap=2)
    assert out[:5] == [None] * 5 and out[-1] is None          # isolated far detection and empty ends
    assert info["outliers"] == 1 and info["dropped_ends"] == 5 and info["filled"] == 1
    assert out[7] is not None and 10 <= out[7][0] <= 12         # gap filled between its neighbours
    assert out[9] == (13, 28, 13, 28)                           # one-slice spike → median of 3
    ramp = [(10 + k, 40 - k, 5, 20 + 2 * k) for k in range(8)]
    assert consistent_extents(ramp)[0] == ramp                   # monotone change kept exactly
    assert consistent_extents([None, None])[0] == [None, None]


# --------------------------------------------------------------------- training and tightening

@pytest.fixture(scope="module")
def lungs(tmp_path_factory):
    """Chest CT (slicerio) with right lung (5) and left lung (6); a mask with lung 5 only for training."""
    folder = tmp_path_factory.mktemp("lungs")
    sample = materialize_objects("lungs", folder)
    mask = read_label_volume(sample["mask"])
    train_mask = str(folder / "lung5.nii.gz")
    write_volume(mask.with_array(np.where(mask.array == 5, mask.array, 0).astype(np.uint8)), train_mask)
    return {**sample, "train_mask": train_mask, "volume": read_volume(sample["image"]), "lungs": mask.array}


def small_config(**kw):
    return TightenerConfig(**{"patch": 16, "epochs": 12, "axis": 0, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def tightener(lungs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tightener")
    card = train_tightener([TightenerCase(lungs["image"], lungs["train_mask"])], small_config(), out)
    return out, card


def test_tightener_card_and_weights(tightener, lungs):
    folder, card = tightener
    network, loaded = load_tightener(folder)
    assert json.loads((folder / "model.json").read_text())["format"] == "weakseg-tightener"
    assert (loaded.network, loaded.patch) == (card.network, card.patch) and loaded.patch.size == 16
    assert loaded.input.spacing == pytest.approx(list(lungs["volume"].spacing))
    assert loaded.training["objects"] == 1 and loaded.training["patches"]["positive"] > 50
    assert 0.85 < loaded.metrics["val_accuracy"] <= 1.0 and len(loaded.history) == 12
    assert 0.0 < loaded.patch.threshold < 1.0
    assert network(torch.zeros(3, 1, 16, 16)).shape == (3, 2)


def test_context_is_trained_recorded_and_used(lungs, tmp_path):
    card = train_tightener([TightenerCase(lungs["image"], lungs["train_mask"])], small_config(epochs=2, context=8),
                           tmp_path / "t")
    network, loaded = load_tightener(tmp_path / "t")
    assert card.network.context == loaded.network.context == 8
    assert network(torch.zeros(2, 1, 32, 32)).shape == (2, 2)
    volume, axis = lungs["volume"], lungs["axis"]
    box3d = boxes_from_mask(lungs["lungs"], "3d", axis, 0, [6], False)
    result, _ = tighten(tmp_path / "t", volume, BoxSet(box3d, volume.shape, {6: "left lung"}, volume.geometry()),
                        device="cpu")
    assert result.boxes and all(b.kind == "slice" for b in result.boxes)
    with pytest.raises(InputError, match="context"):
        small_config(context=-2).validate()


def test_tightening_an_unseen_object_beats_the_raw_3d_box(tightener, lungs):
    folder, _ = tightener
    volume, axis = lungs["volume"], lungs["axis"]
    box3d = boxes_from_mask(lungs["lungs"], "3d", axis, 0, [6], False)  # the left lung: never trained on
    tight = boxes_from_mask(lungs["lungs"], "slice", axis, 0, [6], False)
    result, report = tighten(folder, volume, BoxSet(box3d, volume.shape, {6: "left lung"}, volume.geometry()),
                             device="cpu")
    raw = slice_box_iou(split_box(box3d[0], axis), tight, axis)
    tightened = slice_box_iou(result.boxes, tight, axis)
    assert tightened > raw + 0.05, (raw, tightened)
    assert report["warnings"] == [] and report["boxes"][0]["slices_in"] == box3d[0].size[axis]
    for b in result.boxes:  # inside the original box, one voxel thick
        assert b.kind == "slice" and b.axis == axis
        assert all(s0 <= s <= t <= t0 for s, t, s0, t0 in zip(b.start, b.stop, box3d[0].start, box3d[0].stop))


def test_training_resumes_bit_exactly_after_cancel(lungs, tmp_path):
    cases = [TightenerCase(lungs["image"], lungs["train_mask"])]
    config = small_config(epochs=2)
    full = train_tightener(cases, config, tmp_path / "full")
    per_epoch = -(-full.training["patches"]["train"] // config.batch_size)
    calls = {"n": 0}

    def stop_in_second_epoch():
        calls["n"] += 1
        return calls["n"] > per_epoch + 3

    with pytest.raises(CancelledError):
        train_tightener(cases, config, tmp_path / "cut", should_stop=stop_in_second_epoch)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = train_tightener(cases, config, tmp_path / "cut")
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.patch.threshold == full.patch.threshold


def test_the_threshold_rule_picks_the_cards_threshold(lungs, tmp_path):
    """Same data, seed and network; only the rule differs: each card's threshold is the best one by its
    own rule on the held-out slices."""
    cases = [TightenerCase(lungs["image"], lungs["train_mask"])]
    cards = {rule: train_tightener(cases, small_config(epochs=3, threshold_rule=rule), tmp_path / rule)
             for rule in ("balanced", "accuracy")}
    balanced, accuracy = cards["balanced"], cards["accuracy"]
    assert balanced.patch.threshold != accuracy.patch.threshold
    assert accuracy.metrics["val_accuracy_at_threshold"] > balanced.metrics["val_accuracy_at_threshold"]
    assert balanced.metrics["val_balanced_accuracy_at_threshold"] > accuracy.metrics["val_balanced_accuracy_at_threshold"]
    assert [h["loss"] for h in balanced.history] == [h["loss"] for h in accuracy.history]  # nothing else changes


def test_vgg16_option_builds_for_both_patch_sizes():
    from WeakSegLib.nets.classifier import PatchClassifier

    for p in (16, 32):
        net = PatchClassifier("vgg16", p).eval()
        assert net(torch.zeros(2, 1, p, p)).shape == (2, 2)
        assert sum(m.weight.numel() > 0 for m in net.features if isinstance(m, torch.nn.Conv2d)) == 13


# ---------------------------------------------------------------------------------- bad input

def test_box_partly_outside_the_volume_is_named(tightener, lungs):
    volume = lungs["volume"]
    z, y, x = volume.shape
    bad = Box((2, 10, 100), (10, 60, x + 7), 6, "3d")
    with pytest.raises(InputError, match=r"box #0 .*outside the volume"):
        tighten(tightener[0], volume, BoxSet([bad], volume.shape, {6: "lung"}), device="cpu")


def test_empty_box_list(tightener, lungs):
    with pytest.raises(InputError, match="empty"):
        tighten(tightener[0], lungs["volume"], BoxSet([], lungs["volume"].shape, {6: "lung"}), device="cpu")


def test_mask_without_object(lungs, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    write_volume(lungs["volume"].with_array(np.zeros(lungs["volume"].shape, np.uint8)), empty)
    with pytest.raises(InputError, match="no object"):
        train_tightener([TightenerCase(lungs["image"], str(empty))], small_config(), tmp_path / "t")
    with pytest.raises(InputError, match="at least one"):
        train_tightener([], small_config(), tmp_path / "t")


def test_other_spacing_and_modality_warn(tightener, lungs):
    volume = lungs["volume"]
    box3d = boxes_from_mask(lungs["lungs"], "3d", 0, 0, [6], False)
    finer = Volume(volume.array, (volume.spacing[0] / 2, volume.spacing[1] / 2, volume.spacing[2]),
                   volume.origin, volume.direction)
    _, report = tighten(tightener[0], finer, BoxSet(box3d, volume.shape, {6: "lung"}), device="cpu")
    assert any("spacing" in w for w in report["warnings"])
    mr_like = volume.with_array((volume.array - volume.array.min()) * 0.3)  # no air at −1000: not CT
    events = []
    _, report = tighten(tightener[0], mr_like, BoxSet(box3d, volume.shape, {6: "lung"}), device="cpu",
                        on_event=events.append)
    assert any("modality" in w for w in report["warnings"])
    assert any(e["event"] == "warning" and "modality" in e["message"] for e in events)


def test_nothing_found_keeps_the_raw_boxes_with_a_warning(tightener, lungs):
    volume = lungs["volume"]
    box3d = boxes_from_mask(lungs["lungs"], "3d", 0, 0, [6], False)
    result, report = tighten(tightener[0], volume, BoxSet(box3d, volume.shape, {6: "lung"}),
                             TightenSettings(threshold=1.0), device="cpu")
    assert report["boxes"][0]["fallback"] and "untightened" in report["warnings"][0]
    assert result.boxes == split_box(box3d[0], 0)


def test_corrupt_or_wrong_model_folder(tightener, tmp_path):
    import shutil

    folder = tmp_path / "t"
    shutil.copytree(tightener[0], folder)
    card = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**card, "format": "weakseg-model"}))
    with pytest.raises(ModelError, match="not a weakseg-tightener card"):
        load_tightener(folder)
    (folder / "model.json").write_text(json.dumps(card))
    (folder / "model.pt").write_bytes(b"truncated")
    with pytest.raises(ModelError, match="corrupt"):
        load_tightener(folder)


def test_resuming_with_other_training_cases_is_refused(lungs, tmp_path):
    train_tightener([TightenerCase(lungs["image"], lungs["train_mask"])], small_config(epochs=1), tmp_path / "t")
    with pytest.raises(ModelError, match="differ: cases"):
        train_tightener([TightenerCase(lungs["image"], lungs["mask"])], small_config(epochs=2), tmp_path / "t")


def test_config_is_checked():
    with pytest.raises(InputError, match="threshold_rule"):
        TightenerConfig(threshold_rule="f1").validate()
    with pytest.raises(InputError, match="even number"):
        TightenerConfig(patch=15).validate()
    with pytest.raises(InputError, match="unknown patch classifier"):
        TightenerConfig(network="resnet").validate()

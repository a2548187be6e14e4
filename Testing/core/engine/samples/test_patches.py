"""3D training patches: every field cut alike, box rows kept only for boxes a patch holds whole, the
foreground share placed on the boxes, and 3D training on patches end to end."""

import numpy as np
import pytest
import torch

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import predict_volume
from WeakSegLib.engine.samples.data import Case, build_samples
from WeakSegLib.engine.samples.patches import crop_patches, patch_starts
from WeakSegLib.engine.train.training import train
from WeakSegLib.io.boxes import Box, BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.volume import read_volume


def volumes_batch(seed=0):
    """Two 3D samples (32×48×64) with two boxes each (one small, one large)."""
    rng = np.random.default_rng(seed)
    cases = []
    for shift in (0, 5):
        mask = np.zeros((32, 48, 64), np.uint8)
        mask[4 + shift:12 + shift, 6:18, 8:20] = 1
        mask[10:30, 20 + shift:46, 22:60] = 2
        boxes = [Box((4 + shift, 6, 8), (12 + shift, 18, 20), 1), Box((10, 20 + shift, 22), (30, 46, 60), 2)]
        cases.append(Case(rng.normal(size=mask.shape).astype(np.float32), boxes, eval_mask=mask))
    samples = build_samples(cases, [1, 2], spatial_dims=3)
    return samples.batch(torch.arange(2))


def reference_crop(batch, starts, patch):
    """Slow, obviously right: slice every field per sample; keep a box row when the patch holds its box."""
    out = {}
    for key, first in (("image", 1), ("labels", 0), ("box_mask", 1), ("valid", 0)):
        out[key] = torch.stack([v[(slice(None),) * first + tuple(slice(s, s + p) for s, p in zip(start, patch))]
                                for v, start in zip(batch[key], starts)])
    rows = []
    for row in batch["boxes"].tolist():
        start = starts[row[0]]
        lo = [row[2 + 2 * a] - start[a] for a in range(3)]
        hi = [row[3 + 2 * a] - start[a] for a in range(3)]
        if all(l >= 0 for l in lo) and all(h <= p for h, p in zip(hi, patch)):
            rows.append([row[0], row[1], lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]])
    out["boxes"] = torch.tensor(rows, dtype=torch.long).reshape(-1, 8)
    return out


@pytest.mark.parametrize("foreground", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_patches_equal_the_slow_reference(foreground, seed):
    batch = volumes_batch()
    patch = (16, 32, 32)
    starts = patch_starts(batch, patch, torch.Generator().manual_seed(seed), foreground)
    got = crop_patches(batch, patch, torch.Generator().manual_seed(seed), foreground)
    want = reference_crop(batch, starts, patch)
    assert got["image"].shape == (2, 1, *patch)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    for start in starts:
        assert all(0 <= s <= n - p for s, n, p in zip(start, batch["image"].shape[2:], patch))


def test_foreground_patches_hold_a_box_whole_and_a_box_larger_than_the_patch_is_centred():
    batch = volumes_batch()
    patch = (16, 32, 32)  # holds the small boxes (8×12×12), not the large ones (20×26×38)
    held = 0
    for seed in range(40):
        got = crop_patches(batch, patch, torch.Generator().manual_seed(seed), foreground=1.0)
        held += len(got["boxes"])
        for b, start in enumerate(patch_starts(batch, patch, torch.Generator().manual_seed(seed), 1.0)):
            small = batch["boxes"][(batch["boxes"][:, 0] == b) & (batch["boxes"][:, 1] == 0)][0]
            large = batch["boxes"][(batch["boxes"][:, 0] == b) & (batch["boxes"][:, 1] == 1)][0]
            holds_small = all(start[a] <= small[2 + 2 * a] and small[3 + 2 * a] <= start[a] + patch[a] for a in range(3))
            centred = all(abs((start[a] + patch[a] / 2) - (large[2 + 2 * a] + large[3 + 2 * a]) / 2) <= 1
                          for a in range(3) if large[3 + 2 * a] - large[2 + 2 * a] >= patch[a])
            assert holds_small or centred
    assert held >= 30  # about half of the 80 foreground patches are on a small box
    background = [crop_patches(batch, patch, torch.Generator().manual_seed(s), 0.0) for s in range(40)]
    assert sum(len(g["boxes"]) for g in background) < held


def test_a_batch_no_larger_than_the_patch_is_left_whole():
    batch = volumes_batch()
    assert crop_patches(batch, (32, 48, 64), torch.Generator(), 1.0) is batch
    assert crop_patches(batch, (128, 128, 128), torch.Generator(), 1.0) is batch


def test_3d_training_on_patches_predicts_by_sliding_windows(synthetic_case, tmp_path):
    mask = read_volume(synthetic_case["mask"])
    save_boxes(BoxSet(boxes_from_mask(synthetic_case["array"], "3d"), mask.shape, {1: "a", 2: "b"}, mask.geometry()),
               tmp_path / "boxes.json")
    config = TrainConfig(spatial_dims=3, batch_size=2, epochs=2, epoch_batches=2, channels=(4, 8, 16, 32, 64),
                         device="cpu", patch_size=(16, 32, 32))
    events = []
    card = train([TrainCase(synthetic_case["image"], boxes=str(tmp_path / "boxes.json"), eval_mask=synthetic_case["mask"])],
                 config, tmp_path / "m", on_event=events.append)
    assert card.input.patch_size == [16, 32, 32] and card.input.mode == "3d"
    assert all(np.isfinite(e["loss"]) and "dice" in e for e in events if e["event"] == "epoch")
    labels, _ = predict_volume(tmp_path / "m", read_volume(synthetic_case["image"]), device="cpu")
    assert labels.shape == mask.shape
    with pytest.raises(Exception, match="multiples of 16"):
        TrainConfig(spatial_dims=3, patch_size=(20, 32, 32)).validate()

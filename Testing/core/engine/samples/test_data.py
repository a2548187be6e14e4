"""Sample tensors: 2.5D stacking, padding, boxes in slice coordinates."""

import numpy as np
import pytest
import torch

from WeakSegLib.engine.samples.data import Case, build_samples, stack_context
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import boxes_from_mask, rasterize


def test_stack_context_matches_reference():
    vol = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    got = stack_context(vol, 3)
    for i in range(5):
        for j, off in enumerate((-1, 0, 1)):
            np.testing.assert_array_equal(got[i, j], vol[min(max(i + off, 0), 4)])
    with pytest.raises(InputError, match="odd"):
        stack_context(vol, 2)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_2d_samples_hold_boxes_in_slice_coordinates(axis):
    mask = np.zeros((6, 9, 11), np.uint8)
    mask[1:4, 2:7, 3:9] = 1
    mask[2:5, 1:3, 1:3] = 2
    boxes = boxes_from_mask(mask, "slice", axis)
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    s = build_samples([Case(image, boxes, eval_mask=mask)], [1, 2], axis=axis, context=3)
    n = mask.shape[axis]
    assert s.images.shape[:2] == (n, 3) and all(v % 16 == 0 for v in s.images.shape[2:])
    # box rows → rasterised per-slice masks equal the slices of the 3D filled boxes
    filled = np.moveaxis(rasterize(boxes, mask.shape, [1, 2]), axis + 1, 0)
    rebuilt = torch.zeros_like(s.box_mask)
    for b, c, y0, y1, x0, x1 in s.boxes.tolist():
        rebuilt[b, c, y0:y1, x0:x1] = 1
    assert torch.equal(rebuilt, s.box_mask)
    h, w = filled.shape[2:]
    assert torch.equal(s.box_mask[:, :, :h, :w], torch.from_numpy(filled))
    assert s.box_mask[:, :, h:].sum() == 0 and s.box_mask[:, :, :, w:].sum() == 0
    assert s.valid[:, :h, :w].all() and not s.valid[:, h:].any()
    # filled boxes are the labels when no mask is given (box-mask recipe); centre channel is the slice
    assert torch.equal(s.labels[:, :h, :w] > 0, torch.from_numpy(filled.max(1) > 0))
    np.testing.assert_array_equal(s.images[:, 1, :h, :w].numpy(), np.moveaxis(image, axis, 0))


def test_each_batch_row_carries_the_boxes_of_its_own_slice():
    """Slices with different boxes (and some with none) drawn in a shuffled order: every row of the
    batch gets exactly the boxes of the slice it holds, in row coordinates."""
    mask = np.zeros((6, 16, 16), np.uint8)
    for k in range(5):  # slice k: a box of side k + 2 at (k, k); slice 5 has none
        mask[k, k:2 * k + 2, k:2 * k + 2] = 1
    mask[3, 12:15, 1:3] = 2
    s = build_samples([Case(np.zeros(mask.shape, np.float32), boxes_from_mask(mask, "slice", 0))], [1, 2])
    index = torch.tensor([3, 5, 0, 4, 1])
    batch = s.batch(index)
    for row, sample in enumerate(index.tolist()):
        got = sorted(r[1:] for r in batch["boxes"].tolist() if r[0] == row)
        want = sorted(r[1:] for r in s.boxes.tolist() if r[0] == sample)
        assert got == want, (row, sample)
        assert torch.equal(batch["box_mask"][row], s.box_mask[sample])
    assert len(batch["boxes"]) == sum(int((s.boxes[:, 0] == i).sum()) for i in index.tolist())


def test_3d_samples_and_several_cases_of_different_size():
    m1 = np.zeros((8, 10, 12), np.uint8)
    m1[2:5, 3:7, 4:9] = 1
    m2 = np.zeros((17, 5, 6), np.uint8)
    m2[1:3, 1:3, 1:3] = 1
    cases = [Case(np.ones(m.shape, np.float32), boxes_from_mask(m, "3d")) for m in (m1, m2)]
    s = build_samples(cases, [1], spatial_dims=3)
    assert tuple(s.images.shape) == (2, 1, 32, 16, 16)
    assert s.boxes.tolist() == [[0, 0, 2, 5, 3, 7, 4, 9], [1, 0, 1, 3, 1, 3, 1, 3]]
    assert s.case_index.tolist() == [0, 1]


def test_3d_box_in_2d_training_is_refused():
    m = np.zeros((4, 8, 8), np.uint8)
    m[1:3, 2:5, 2:5] = 1
    with pytest.raises(InputError, match="cut 3D boxes first"):
        build_samples([Case(np.ones(m.shape, np.float32), boxes_from_mask(m, "3d"))], [1])


@pytest.mark.parametrize("axes", [[0], [1], [0, 1]])
def test_flip_batch_moves_boxes_with_the_image(axes):
    from WeakSegLib.engine.samples.data import flip_batch

    mask = np.zeros((3, 20, 30), np.uint8)
    mask[:, 2:9, 5:21] = 1
    mask[1, 12:19, 22:29] = 2
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    s = build_samples([Case(image, boxes_from_mask(mask, "slice", 0))], [1, 2])
    batch = s.batch(torch.arange(3))
    flipped = flip_batch(batch, axes)
    rebuilt = torch.zeros_like(flipped["box_mask"])
    for b, c, y0, y1, x0, x1 in flipped["boxes"].tolist():
        rebuilt[b, c, y0:y1, x0:x1] = 1
    assert torch.equal(rebuilt, flipped["box_mask"])
    assert torch.equal(flipped["box_mask"], batch["box_mask"].flip([2 + a for a in axes]))
    assert torch.equal(flipped["image"], batch["image"].flip([2 + a for a in axes]))
    assert torch.equal(flip_batch(flipped, axes)["boxes"], batch["boxes"])

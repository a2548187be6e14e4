"""Size label files, partial labels made from masks, and the losses on them (partial CE, SCCL)."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from WeakSegLib.engine.samples.data import Case, build_samples
from WeakSegLib.errors import InputError
from WeakSegLib.io.labels import IGNORE, partial_to_labels
from WeakSegLib.io.partial import PARTIAL_BACKGROUND, partial_from_mask
from WeakSegLib.io.sizes import SizeLabel, SizeSet, load_sizes, save_sizes, sizes_from_mask
from WeakSegLib.losses.labels import PartialCrossEntropy, SoftSizePenalty, sccl_bounds


def two_objects(shape=(6, 30, 34)):
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    mask = (((y - 12) ** 2 + (x - 10) ** 2) < 49).astype(np.uint8)
    mask[((y - 18) / 5) ** 2 + ((x - 25) / 7) ** 2 < 1] = 2
    mask[0] = 0
    return mask


# ---- size labels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2])
def test_sizes_from_mask_measure_every_slice_like_scipy(axis):
    mask = two_objects()
    sizes = sizes_from_mask(mask, axis)
    planes = np.moveaxis(mask, axis, 0)
    assert len(sizes) == 2 * planes.shape[0]
    for s in sizes:
        obj = np.pad(planes[s.slice] == s.label, 1)
        expected = 2 * ndimage.distance_transform_cdt(obj, metric="chessboard").max() if obj.any() else 0
        assert s.size == expected
    assert any(s.size == 0 for s in sizes) and any(s.size >= 4 for s in sizes)
    chosen = sizes_from_mask(mask, axis, labels=[2], slices=[1, 3])
    assert [(s.slice, s.label) for s in chosen] == [(1, 2), (3, 2)]


def test_size_file_round_trip_and_format(tmp_path):
    mask = two_objects()
    sizes = SizeSet(sizes_from_mask(mask, 0), mask.shape, 0, {1: "a", 2: "b"}, {"spacing": [1, 1, 2]})
    path = save_sizes(sizes, tmp_path / "s.json")
    d = json.loads(path.read_text())
    assert d["format"] == "weakseg-sizes" and d["version"] == 1 and d["axis"] == 0
    assert d["geometry"]["shape"] == list(mask.shape) and d["labels"] == {"1": "a", "2": "b"}
    back = load_sizes(path)
    assert back.sizes == sizes.sizes and back.shape == mask.shape and back.labels == {1: "a", 2: "b"}


def size_file(tmp_path, entries, **extra):
    d = {"format": "weakseg-sizes", "version": 1, "geometry": {"shape": [4, 10, 10]}, "labels": {"1": "a"},
         "axis": 0, "sizes": entries, **extra}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("entries, message", [
    ([{"slice": 1, "label": 1, "size": -3}], "≥ 0"),
    ([{"slice": 1, "label": 1, "size": float("nan")}], "not a finite number"),
    ([{"slice": 1, "label": 1, "size": None}], "size #0 has no 'size'"),
    ([{"slice": 1, "label": 1, "size": "big"}], "size #0.size is 'big', not a finite number"),
    ([{"slice": 1.5, "label": 1, "size": 3}], "size #0.slice is 1.5, not a whole number"),
    ([{"slice": 4, "label": 1, "size": 3}], "slice outside the volume"),
    ([{"slice": 1, "label": 3, "size": 3}], "not named in the label table"),
    ([{"slice": 1, "label": 1, "size": 3}, {"slice": 1, "label": 1, "size": 4}], "two sizes"),
    ([], "empty"),
])
def test_bad_size_files_are_refused_naming_the_entry(tmp_path, entries, message):
    with pytest.raises(InputError, match=message):
        load_sizes(size_file(tmp_path, entries))


def test_size_file_of_another_format_or_newer_version(tmp_path):
    with pytest.raises(InputError, match="not a WeakSeg size file"):
        load_sizes(size_file(tmp_path, [], format="weakseg-boxes"))
    with pytest.raises(InputError, match="newer"):
        load_sizes(size_file(tmp_path, [], version=9))


def test_size_case_labels_masks_boxes_and_sizes():
    """A mixed size-labelled case: mask slices labelled, size slices unknown (boxed ones: background
    outside the box), sizes per (slice, class)."""
    from WeakSegLib.io.boxes import Box

    mask = two_objects()
    image = mask.astype(np.float32)
    few = mask.copy()
    few[2:] = 0  # slice 1 is fully labelled
    sizes = [SizeLabel(3, 1, 12.0), SizeLabel(4, 2, 9.0), SizeLabel(5, 1, 0.0)]
    box = Box((4, 10, 15), (5, 26, 34), 2, "slice", 0)
    s = build_samples([Case(image, [box], few, sizes=sizes)], [1, 2])
    labels = s.labels[:, :30, :34]
    assert torch.equal(labels[1], torch.from_numpy(few[1]))
    assert bool((labels[3] == IGNORE).all()) and bool((labels[5] == IGNORE).all())
    inside = torch.zeros(30, 34, dtype=torch.bool)
    inside[10:26, 15:34] = True
    assert bool((labels[4][inside] == IGNORE).all()) and bool((labels[4][~inside] == 0).all())
    assert s.sizes[3].tolist() == [12.0, -1.0] and s.sizes[4].tolist() == [-1.0, 9.0]
    assert s.sizes[1].tolist() == [-1.0, -1.0]
    assert s.labelled().tolist() == [False, True, False, False, True, False]


def test_a_slice_measured_empty_for_every_class_is_background():
    mask = two_objects()
    sizes = [SizeLabel(0, 1, 0.0), SizeLabel(0, 2, 0.0), SizeLabel(3, 1, 0.0), SizeLabel(3, 2, 10.0)]
    s = build_samples([Case(mask.astype(np.float32), sizes=sizes)], [1, 2])
    assert bool((s.labels[0] == 0).all()) and s.sizes[0].tolist() == [-1.0, -1.0]
    assert bool((s.labels[3, :30, :34] == IGNORE).all()) and s.sizes[3].tolist() == [0.0, 10.0]
    assert s.labelled().tolist() == [True] + [False] * 5


def test_size_label_on_a_slice_with_a_box_of_another_class_is_refused():
    from WeakSegLib.io.boxes import Box

    mask = two_objects()
    box = Box((3, 10, 15), (4, 26, 34), 2, "slice", 0)
    with pytest.raises(InputError, match="size label of label 1 on slice 3, whose boxes are of label"):
        build_samples([Case(mask.astype(np.float32), [box], sizes=[SizeLabel(3, 1, 8.0)])], [1, 2])


def test_a_slice_with_both_a_mask_and_a_size_is_refused():
    mask = two_objects()
    with pytest.raises(InputError, match="slice 2 has both a mask and a size label"):
        build_samples([Case(mask.astype(np.float32), mask=mask, sizes=[SizeLabel(2, 1, 8.0)])], [1, 2])


# ---- partial labels ---------------------------------------------------------------------------------

def slow_partial(mask, axis, erode, margin):
    out = np.zeros(mask.shape, np.uint8)
    for k in range(mask.shape[axis]):
        sl = [slice(None)] * 3
        sl[axis] = k
        m = mask[tuple(sl)]
        plane = np.zeros(m.shape, np.uint8)
        for v in np.unique(m[m > 0]):
            plane[(m == v) & (ndimage.distance_transform_edt(m == v) > erode)] = v
        bg = m == 0
        far = ndimage.distance_transform_edt(bg) > margin if (~bg).any() else bg
        plane[bg & far] = PARTIAL_BACKGROUND
        out[tuple(sl)] = plane
    return out


@pytest.mark.parametrize("axis", [0, 2])
def test_partial_from_mask_matches_slice_by_slice_erosion(axis):
    mask = two_objects()
    partial, ratio = partial_from_mask(mask, axis, erode=2, background_margin=5)
    np.testing.assert_array_equal(partial, slow_partial(mask, axis, 2, 5))
    kept = (partial > 0) & (partial < PARTIAL_BACKGROUND)
    assert ratio.object == pytest.approx(kept.sum() / (mask > 0).sum())
    assert ratio.overall == pytest.approx((partial > 0).mean())
    assert 0 < ratio.object < 1 and 0 < ratio.background < 1
    assert bool((mask[kept] == partial[kept]).all())  # scribbles never mislabel
    assert bool((mask[partial == PARTIAL_BACKGROUND] == 0).all())


def test_partial_from_mask_bad_input():
    with pytest.raises(InputError, match="no object"):
        partial_from_mask(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="3D"):
        partial_from_mask(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="≥ 0"):
        partial_from_mask(two_objects(), erode=-1)


def test_partial_labels_become_class_indices_with_ignore():
    partial = np.array([[[0, 1, 2, PARTIAL_BACKGROUND, 7]]], np.uint8)
    assert partial_to_labels(partial, [1, 2]).tolist() == [[[IGNORE, 1, 2, 0, IGNORE]]]


# ---- losses -----------------------------------------------------------------------------------------

def test_partial_cross_entropy_is_cross_entropy_over_labelled_pixels():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 8, 9)
    labels = torch.randint(0, 3, (3, 8, 9))
    labels[torch.rand(3, 8, 9) < 0.6] = IGNORE
    keep = labels != IGNORE
    expected = torch.nn.functional.cross_entropy(logits.movedim(1, -1)[keep], labels[keep])
    assert torch.allclose(PartialCrossEntropy()(logits, labels), expected)
    full = torch.randint(0, 3, (3, 8, 9))
    assert torch.allclose(PartialCrossEntropy()(logits, full), torch.nn.functional.cross_entropy(logits, full))
    none = torch.full((3, 8, 9), IGNORE)
    x = logits.clone().requires_grad_(True)
    loss = PartialCrossEntropy()(x, none)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(x.grad).all()


def test_soft_size_penalty_against_a_loop():
    torch.manual_seed(0)
    s = torch.rand(4, 2, 10, 12)
    labels = torch.full((4, 10, 12), IGNORE)
    labels[0, 2, 3] = 1
    labels[1, 4, 4] = 2
    labels[2, :2] = 0
    labels[3, 0, 0], labels[3, 5, 5] = 1, 2
    bounds = torch.tensor([[30.0, 40.0], [70.0, 90.0]])
    got = SoftSizePenalty(bounds, 0.01)(s, labels)
    total = 0.0
    for b in range(4):
        for c in range(2):
            if (labels[b] == c + 1).any():
                v = float(s[b, c].sum())
                lo, hi = bounds[c].tolist()
                total += max(0.0, lo - v) ** 2 + max(0.0, v - hi) ** 2
    assert got.item() == pytest.approx(0.01 * total / (4 * 120), rel=1e-5)
    assert total > 0


def test_sccl_bounds_from_reference_slices():
    refs = torch.zeros(3, 6, 6, dtype=torch.uint8)
    refs[0, :2, :2] = 1  # 4 pixels
    refs[1, :3, :3] = 1  # 9 pixels
    refs[1, 4:, 4:] = 2  # 4 pixels
    bounds = sccl_bounds(refs, 2)
    assert torch.allclose(bounds, torch.tensor([[0.9 * 4, 1.1 * 9], [0.9 * 4, 1.1 * 4]]))
    with pytest.raises(ValueError, match="class 3"):
        sccl_bounds(refs, 3)
    with pytest.raises(ValueError, match="lower ≤ upper"):
        SoftSizePenalty(torch.tensor([[5.0, 1.0]]))

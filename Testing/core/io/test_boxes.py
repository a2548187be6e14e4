"""Boxes: from masks (against a slow reference), cutting, margins, validation, the JSON file."""

import json
import os

import numpy as np
import pytest

from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import (
    Box,
    BoxSet,
    boxes_from_mask,
    check_boxes_fit,
    clip_box,
    expand_box,
    load_boxes,
    rasterize,
    save_boxes,
    split_box,
    validate_boxes,
)
from WeakSegLib.io.volume import read_label_volume


def ref_slice_boxes(mask, axis):
    """One box per label per slice, by scanning the slice's rows and columns."""
    out = set()
    for k in range(mask.shape[axis]):
        sl = np.take(mask, k, axis=axis)
        for v in np.unique(sl[sl > 0]):
            rows = np.where((sl == v).any(1))[0]
            cols = np.where((sl == v).any(0))[0]
            lo, hi = [rows[0], cols[0]], [rows[-1] + 1, cols[-1] + 1]
            lo.insert(axis, k)
            hi.insert(axis, k + 1)
            out.add((int(v), tuple(lo), tuple(hi)))
    return out


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_boxes_per_label_match_reference(spine_ct, axis):
    mask = read_label_volume(spine_ct["mask"]).array
    got = {(b.label, b.start, b.stop) for b in boxes_from_mask(mask, "slice", axis, per_component=False)}
    assert got == ref_slice_boxes(mask, axis)


def test_slice_boxes_per_component_split_separate_objects():
    mask = np.zeros((2, 10, 20), np.uint8)
    mask[0, 2:4, 1:5] = 1
    mask[0, 6:9, 10:18] = 1  # second component on the same slice
    mask[1, 0:10, 0:20] = 2
    boxes = boxes_from_mask(mask, "slice", 0)
    assert [(b.label, b.start, b.stop) for b in boxes] == [
        (1, (0, 2, 1), (1, 4, 5)), (1, (0, 6, 10), (1, 9, 18)), (2, (1, 0, 0), (2, 10, 20))]
    assert all(b.kind == "slice" and b.axis == 0 for b in boxes)
    merged = boxes_from_mask(mask, "slice", 0, per_component=False)
    assert (merged[0].start, merged[0].stop) == ((0, 2, 1), (1, 9, 18))


def test_3d_boxes_and_split_into_slices(spine_ct):
    mask = read_label_volume(spine_ct["mask"]).array
    (box,) = boxes_from_mask(mask, "3d", per_component=False)
    idx = np.argwhere(mask > 0)
    assert box.start == tuple(idx.min(0)) and box.stop == tuple(idx.max(0) + 1)
    axis = spine_ct["axis"]
    parts = split_box(box, axis)
    assert len(parts) == box.size[axis]
    assert all(p.kind == "slice" and p.size[axis] == 1 for p in parts)
    assert rasterize(parts, mask.shape, [1]).sum() == rasterize([box], mask.shape, [1]).sum()


def test_margin_widens_in_plane_only_and_clips():
    mask = np.zeros((3, 10, 10), np.uint8)
    mask[1, 1:3, 4:6] = 1
    (box,) = boxes_from_mask(mask, "slice", 0, margin=3)
    assert box.start == (1, 0, 1) and box.stop == (2, 6, 9)
    assert expand_box(box, 100, mask.shape).stop == (2, 10, 10)


def test_empty_mask_is_an_error():
    with pytest.raises(InputError, match="no object"):
        boxes_from_mask(np.zeros((4, 4, 4), np.uint8))


@pytest.mark.parametrize("box,message", [
    (Box((0, 2, 2), (1, 2, 5), 1, "slice", 0), "is empty"),
    (Box((0, 5, 2), (1, 3, 5), 1, "slice", 0), "is empty"),
    (Box((0, 2, 2), (1, 9, 5), 1, "slice", 0), "outside the volume"),
    (Box((-1, 0, 0), (2, 2, 2), 1, "3d"), "outside the volume"),
    (Box((0, 0, 0), (2, 2, 2), 1, "slice", 0), "1 voxel thick"),
    (Box((0, 0, 0), (1, 2, 2), 0, "slice", 0), "label must be"),
    (Box((0, 0, 0), (1, 2, 2), 1, "slab", 0), "unknown kind"),
])
def test_validation_names_the_bad_box(box, message):
    good = Box((0, 0, 0), (1, 2, 2), 1, "slice", 0)
    with pytest.raises(InputError, match=message) as info:
        validate_boxes([good, box], (4, 8, 8))
    assert "box #1" in str(info.value) and str(list(box.start)) in str(info.value)


def test_empty_box_list_is_an_error():
    with pytest.raises(InputError, match="box list is empty"):
        validate_boxes([], (4, 4, 4))


def test_clip_box_keeps_the_inside_part_or_fails():
    assert clip_box(Box((-2, 3, 4), (2, 20, 6)), (4, 8, 8)) == Box((0, 3, 4), (2, 8, 6))
    with pytest.raises(InputError, match="entirely outside"):
        clip_box(Box((5, 0, 0), (7, 2, 2)), (4, 8, 8))


def test_json_round_trip_is_versioned_and_atomic(tmp_path, spine_ct):
    vol = read_label_volume(spine_ct["mask"])
    boxes = boxes_from_mask(vol.array, "slice", spine_ct["axis"]) + boxes_from_mask(vol.array, "3d")
    path = tmp_path / "b.json"
    save_boxes(BoxSet(boxes, vol.shape, {1: "vertebrae"}, vol.geometry()), path)
    raw = json.loads(path.read_text())
    assert raw["format"] == "weakseg-boxes" and raw["version"] == 1 and raw["labels"] == {"1": "vertebrae"}
    loaded = load_boxes(path)
    assert loaded.boxes == boxes and loaded.shape == vol.shape and loaded.labels == {1: "vertebrae"}
    check_boxes_fit(loaded, vol.geometry())
    assert [f for f in os.listdir(tmp_path) if f != "b.json"] == []  # no temporary file left behind


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "b.json"
    good = BoxSet([Box((0, 0, 0), (1, 2, 2), 1, "slice", 0)], (2, 4, 4), {1: "a"})
    save_boxes(good, path)
    before = path.read_text()
    bad = BoxSet([Box((0, 0, 0), (1, 9, 2), 1, "slice", 0)], (2, 4, 4), {1: "a"})
    with pytest.raises(InputError):
        save_boxes(bad, path)
    assert path.read_text() == before


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a WeakSeg box file"),
    ('{"format": "weakseg-boxes", "version": 99, "geometry": {"shape": [1, 1, 1]}}', "newer"),
    ('{"format": "weakseg-boxes", "version": "abc", "geometry": {"shape": [1, 1, 1]}}', "version is 'abc', not a"),
    ('{"format": "weakseg-boxes", "version": 1}', "has no 'geometry'"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4]}}', "geometry.shape is"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4], "spacing": "abc"}}',
     "geometry.spacing is 'abc', not a list"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4], "spacing": [1, 0, 1]}}',
     r"spacing\[1\] is 0, not a positive number"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "labels": ["a"]}',
     "labels is \\['a'\\], not an object"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "labels": {"one": "a"}}',
     "labels maps 'one'"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "boxes": null}',
     "box list is empty"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "boxes": {"a": 1}}',
     "boxes is .*, not a list"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "boxes": [{"start": [0, 0]}]}',
     r"box #0.start is \[0, 0\], not 3 whole numbers"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, '
     '"boxes": [{"start": [0, 1.7, 0], "stop": [1, 3, 3]}]}', r"box #0.start\[1\] is 1.7, not a whole number"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, '
     '"boxes": [{"start": [0, 0, 0], "stop": [1, 3, 3], "label": 1e20}]}', r"box #0.label is 1e\+20, outside 1..65535"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "boxes": ["x"]}',
     "box #0 is a text, not an object"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "boxes": []}', "box list is empty"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, "labels": {"0": "a"}}',
     "labels maps '0'"),
    ('{"format": "weakseg-boxes", "version": 1, "geometry": {"shape": [2, 4, 4]}, '
     '"boxes": [{"start": [0, 0, 0], "stop": [1, 3, 3], "kind": "3d", "axis": 3}]}', r"box #0.axis is 3, outside 0..2"),
])
def test_bad_box_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_boxes(path)


def test_missing_box_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_boxes(tmp_path / "none.json")


def test_geometry_mismatch_is_detected(spine_ct):
    vol = read_label_volume(spine_ct["mask"])
    boxset = BoxSet([Box((0, 0, 0), (1, 2, 2), 1, "slice", 0)], vol.shape, {1: "a"}, vol.geometry())
    other = dict(vol.geometry(), shape=[10, 10, 10])
    with pytest.raises(InputError, match="mismatched image/box geometry"):
        check_boxes_fit(boxset, other)
    moved = dict(vol.geometry(), origin=[o + 5 for o in vol.origin])
    with pytest.raises(InputError, match="origin"):
        check_boxes_fit(boxset, moved)


def test_unknown_label_in_box_set():
    with pytest.raises(InputError, match="label table"):
        BoxSet([Box((0, 0, 0), (1, 2, 2), 3, "slice", 0)], (2, 4, 4), {1: "a"}).validate()


def test_slice_boxes_across_another_axis_are_refused():
    bs = BoxSet([Box((0, 0, 0), (2, 1, 2), 1, "slice", 1)], (2, 4, 4), {1: "a"})
    with pytest.raises(InputError, match="not the training axis"):
        bs.slice_boxes(0)



@pytest.mark.parametrize("axis, expect", [(0, (2, 5, 3, 9)), (1, (1, 2, 3, 9)), (2, (1, 2, 2, 5))])
def test_in_plane_bounds_of_slice_boxes(axis, expect):
    start, stop = [1, 2, 3], [2, 5, 9]
    start[axis], stop[axis] = 4, 5
    assert Box(tuple(start), tuple(stop), 1, "slice", axis).in_plane() == expect
    with pytest.raises(InputError, match="3D box"):
        Box((0, 0, 0), (2, 2, 2)).in_plane()
    with pytest.raises(InputError, match="3D box"):
        Box((0, 0, 0), (2, 2, 2), 1, "3d", 0).in_plane()  # an axis does not make a 3D box a slice box


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_slice_box_on_any_axis_is_valid_and_3d_boxes_have_none(axis):
    start, stop = [0, 1, 1], [3, 4, 4]
    stop[axis] = start[axis] + 1
    validate_boxes([Box(tuple(start), tuple(stop), 1, "slice", axis)], (3, 4, 4))
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    assert [b.axis for b in boxes_from_mask(mask, "3d", axis)] == [None]
    assert {b.axis for b in boxes_from_mask(mask, "slice", axis)} == {axis}

"""Metrics against brute-force references."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from WeakSegLib.engine.predict.metrics import _surface, box_iou, dice, dice_per_slice, evaluate, hd95, iou
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box


def test_dice_iou_conventions():
    a = np.zeros((3, 4, 4), bool)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    b = a.copy()
    b[0, 0, 0] = True
    assert dice(a, b) == 0.0 and iou(a, b) == 0.0
    c = np.zeros_like(a)
    c[0, 0, :2] = True
    assert dice(b, c) == pytest.approx(2 / 3) and iou(b, c) == pytest.approx(1 / 2)


def test_dice_per_slice_matches_loop():
    rng = np.random.default_rng(0)
    p, r = rng.random((6, 5, 7)) > 0.6, rng.random((6, 5, 7)) > 0.6
    p[2], r[2] = False, False  # empty vs empty = 1
    for axis in range(3):
        want = [dice(np.take(p, k, axis), np.take(r, k, axis)) for k in range(p.shape[axis])]
        np.testing.assert_allclose(dice_per_slice(p, r, axis), want)
    assert dice_per_slice(p, r, 0)[2] == 1.0


def test_hd95_matches_brute_force_with_anisotropic_spacing():
    rng = np.random.default_rng(1)
    p = np.zeros((8, 12, 12), bool)
    r = np.zeros_like(p)
    p[2:6, 3:9, 2:8] = True
    r[3:7, 4:11, 3:9] = True
    p[rng.random(p.shape) > 0.97] = True
    spacing = (2.5, 0.8, 1.1)
    sp, sr = np.argwhere(_surface(p)) * spacing, np.argwhere(_surface(r)) * spacing
    d = cdist(sp, sr)
    want = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
    assert hd95(p, r, spacing) == pytest.approx(want, rel=1e-6)
    assert hd95(p, np.zeros_like(p), spacing) == float("inf")
    assert hd95(np.zeros_like(p), np.zeros_like(p), spacing) == 0.0


def test_evaluate_uses_itk_spacing_order_and_label():
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 2:5, 2:5] = 2
    pred = np.zeros_like(ref)
    pred[1:3, 2:5, 3:6] = 2
    s = evaluate(pred, ref, (1.0, 1.0, 5.0), label=2)  # x, y spacing 1 mm, z 5 mm
    assert s["dice"] == pytest.approx(2 * 12 / 36) and s["hd95"] == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"label 1 occurs in neither the prediction nor the reference \(labels there: \[2\]\)"):
        evaluate(pred, ref, (1.0, 1.0, 5.0), label=1)  # not a perfect score: a wrong label


def test_box_iou():
    a, b = Box((0, 0, 0), (1, 4, 4)), Box((0, 2, 2), (1, 6, 6))
    assert box_iou(a, b) == pytest.approx(4 / 28)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, Box((0, 5, 5), (1, 6, 6))) == 0.0


def test_slice_box_iou_counts_missing_and_extra_slices():
    from WeakSegLib.engine.predict.metrics import slice_box_iou
    from WeakSegLib.io.boxes import Box

    ref = [Box((k, 0, 0), (k + 1, 10, 10), 1, "slice", 0) for k in range(4)]
    half = [Box((k, 0, 0), (k + 1, 10, 5), 1, "slice", 0) for k in range(1, 4)] + [Box((9, 0, 0), (10, 2, 2), 1, "slice", 0)]
    # slices 0 (missing) and 9 (extra) score 0, slices 1-3 score 0.5 → 1.5 / 5
    assert slice_box_iou(half, ref, 0) == pytest.approx(1.5 / 5)
    assert slice_box_iou(ref, ref, 0) == 1.0


def test_box_iou_of_two_empty_boxes_is_zero():
    empty = Box((1, 1, 1), (1, 3, 3), 1)
    assert box_iou(empty, empty) == 0.0

"""MIL losses (gmil, polar-mil) against slow loops over boxes, angles, lines and pixels: values and
gradients, on boxes at the image border, overlapping boxes (same and other class) and one-pixel boxes."""

import pytest
import torch
from reference_losses import ref_box_mask, ref_mil_unary, ref_pairwise, ref_parallel_bags, ref_polar_bags

from WeakSegLib.config import TrainConfig
from WeakSegLib.errors import InputError
from WeakSegLib.losses.mil import MILUnary, PairwiseSmoothness, angles_of, estimated_centres, parallel_bags

B, C, H, W = 3, 2, 14, 17  # three images, two classes: image and class strides cannot be confused
#: border boxes, overlapping boxes of one class and of two classes, a one-pixel box, a one-row box; the
#: third image has a box of class 1 only (its class 0 has none)
BOXES = torch.tensor([[0, 0, 0, 9, 0, 7], [0, 0, 5, 14, 4, 17], [0, 1, 3, 8, 2, 12], [1, 1, 0, 14, 12, 17],
                      [1, 0, 6, 7, 3, 4], [1, 0, 10, 11, 1, 15], [2, 1, 2, 11, 5, 13]])


def inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[1, :, 15:] = False  # padding
    return logits, ref_box_mask((B, C, H, W), BOXES).to(torch.uint8), valid


def both(fast, slow, logits):
    """Values and gradients (w.r.t. the logits) of the vectorised loss and of its reference."""
    out = []
    for fn in (fast, slow):
        logits.grad = None
        value = fn(torch.softmax(logits, 1)[:, 1:])
        value.backward()
        out.append((float(value.detach()), logits.grad.clone()))
    return out


def test_angles_of_includes_the_last_angle():
    assert angles_of((-40, 40, 20)) == (-40.0, -20.0, 0.0, 20.0, 40.0)
    assert angles_of((0, 0, 0)) == (0.0,)
    assert angles_of((-60, 60, 30)) == (-60.0, -30.0, 0.0, 30.0, 60.0)


@pytest.mark.parametrize("angles", [(0.0,), (-40.0, -20.0, 0.0, 20.0, 40.0), (-60.0, 35.0)])
def test_parallel_bags_are_the_crossing_lines(angles):
    fast = sorted((int(c), tuple(int(i) for i in idx[ok])) for bags in parallel_bags(BOXES, (B, C, H, W), angles)
                  for c, idx, ok in zip(bags.cls, bags.index, bags.valid))
    flat = [(c, tuple(((b * C + cc) * H + y) * W + x for b, cc, y, x in line))
            for c, line in ref_parallel_bags(BOXES, angles)]
    assert fast == sorted(flat)
    # rows and columns: h + w bags per box
    if angles == (0.0,):
        assert len(fast) == sum((y1 - y0) + (x1 - x0) for _, _, y0, y1, x0, x1 in BOXES.tolist())


@pytest.mark.parametrize("kind", ["softmax", "quasimax"])
def test_gmil_unary_matches_the_reference_loop(kind):
    logits, box_mask, valid = inputs(3)
    angles = angles_of((-40, 40, 20))
    fast = MILUnary([("parallel", angles, 6.0)], kind)
    (v, g), (rv, rg) = both(lambda s: fast(s, BOXES, box_mask, valid),
                            lambda s: ref_mil_unary(s, BOXES, box_mask, valid,
                                                    [(ref_parallel_bags(BOXES, angles), 6.0)], kind), logits)
    assert v == pytest.approx(rv, rel=1e-9)
    torch.testing.assert_close(g, rg, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("centre", ["estimated", "box"])
def test_polar_unary_matches_the_reference_loop(centre):
    logits, box_mask, valid = inputs(4)
    with torch.no_grad():  # a saturated plateau in box 0: ties go to the pixel nearest the box centre
        logits[0, 1, 2:6, 1:5] = 30.0
    rays, radii = 24, 9
    fast = MILUnary([("polar", (rays, radii, 0.5, centre), 1.0), ("parallel", (0.0,), 6.0)], "softmax")
    (v, g), (rv, rg) = both(
        lambda s: fast(s, BOXES, box_mask, valid),
        lambda s: ref_mil_unary(s, BOXES, box_mask, valid, [(ref_polar_bags(s, BOXES, rays, radii, 0.5, centre), 1.0),
                                                            (ref_parallel_bags(BOXES, (0.0,)), 6.0)], "softmax"),
        logits)
    assert v == pytest.approx(rv, rel=1e-9)
    torch.testing.assert_close(g, rg, rtol=1e-7, atol=1e-10)


def test_estimated_centre_is_the_most_likely_box_pixel():
    s = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    boxes = torch.tensor([[0, 0, 2, 9, 1, 8]])
    s[0, 0, 0, 0] = 1.0  # outside the box: ignored
    s[0, 0, 7, 2] = 0.9
    assert estimated_centres(s, boxes).tolist() == [[7.0, 2.0]]
    s[0, 0, 2:9, 1:8] = 1.0 - 1e-8 * torch.rand(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s[0, 0, 2, 1] = 1.0  # a saturated plateau (within 1e-6 of its top): the box's centre, not its top
    assert estimated_centres(s, boxes).tolist() == [[5.0, 4.0]]


def test_pairwise_matches_the_reference_loop():
    logits, box_mask, _ = inputs(5)
    (v, g), (rv, rg) = both(lambda s: PairwiseSmoothness()(s, box_mask), lambda s: ref_pairwise(s, box_mask), logits)
    assert v == pytest.approx(rv, rel=1e-9)
    torch.testing.assert_close(g, rg, rtol=1e-7, atol=1e-10)


def test_no_box_leaves_the_negatives_alone():
    logits, _, valid = inputs(6)
    s = torch.softmax(logits, 1)[:, 1:]
    none = torch.zeros(0, 6, dtype=torch.long)
    empty = torch.zeros(B, C, H, W, dtype=torch.uint8)
    got = MILUnary([("parallel", (0.0,), 6.0)])(s, none, empty, valid)
    want = ref_mil_unary(s, none, empty, valid, [], "quasimax")
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-9)


@pytest.mark.parametrize("setting", [{"mil_angles": (40, -40, 20)}, {"mil_angles": (-90, 0, 10)},
                                     {"mil_focal": (1.5, 2)}, {"polar_radii": 1}, {"polar_weight_min": 0},
                                     {"mil_smoothmax": "max"}, {"polar_centre": "corner"}, {"mil_alpha": 0},
                                     {"polar_alpha": 0}])
def test_bad_mil_settings_are_one_line_errors_naming_the_setting(setting):
    with pytest.raises(InputError, match=next(iter(setting))):
        TrainConfig(recipe="polar-mil", recipe_settings=setting).validate()

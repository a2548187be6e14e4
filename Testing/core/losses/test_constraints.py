"""Vectorised box constraints against slow, obviously correct reference loops."""


import pytest
import torch
from reference_losses import ref_barrier, ref_box_mask, ref_emptiness, ref_masked_ce, ref_size, ref_tightness

from WeakSegLib.losses.box_constraints import BoxSize, Emptiness, MaskedCrossEntropy, TightnessPrior, log_barrier


def random_boxes(gen, B, C, spatial, n, skip_images=()):
    """Random boxes incl. ones touching the border, overlapping, thin (partial bands) and images with none."""
    rows = []
    for _ in range(n):
        b = int(torch.randint(B, (1,), generator=gen))
        if b in skip_images:
            continue
        row = [b, int(torch.randint(C, (1,), generator=gen))]
        for size in spatial:
            lo = int(torch.randint(size, (1,), generator=gen))
            hi = int(torch.randint(lo + 1, size + 1, (1,), generator=gen))
            if torch.rand(1, generator=gen) < 0.25:  # touch the border
                lo, hi = (0, hi) if torch.rand(1, generator=gen) < 0.5 else (lo, size)
            row += [lo, hi]
        rows.append(row)
    rows.append([0, 0] + [v for size in spatial for v in (0, size)])  # a box covering the whole image
    rows.append(list(rows[0]))  # an exact duplicate (overlap)
    return torch.tensor(rows, dtype=torch.long)


@pytest.mark.parametrize("t", [0.5, 5.0, 60.0])
def test_log_barrier_matches_definition_and_is_continuous(t):
    z = torch.cat([torch.linspace(-50, 50, 1001, dtype=torch.float64),
                   torch.tensor([-1 / t**2, -1 / t**2 - 1e-9, -1 / t**2 + 1e-9], dtype=torch.float64)])
    got = log_barrier(z, t)
    want = torch.tensor([ref_barrier(v, t) for v in z.tolist()], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
    thr = -1 / t**2
    left, right = log_barrier(torch.tensor([thr - 1e-9], dtype=torch.float64), t), log_barrier(torch.tensor([thr + 1e-9], dtype=torch.float64), t)
    assert abs(float(left - right)) < 1e-6


def test_log_barrier_gradients_finite_for_every_z():
    z = torch.cat([torch.tensor([-1e9, -1e-12, 0.0, 1e-12, 1e9]), torch.linspace(-1e3, 1e3, 2001)]).requires_grad_()
    log_barrier(z, 5.0).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert (z.grad > 0).all()  # the barrier always pushes z down


@pytest.mark.parametrize("spatial,width", [((23, 31), 5), ((16, 16), 3), ((9, 11, 13), 4), ((4, 6), 5), ((3, 6, 5), 5)])
def test_tightness_matches_reference_loop(spatial, width):
    gen = torch.Generator().manual_seed(len(spatial) * 100 + width)
    B, C = 3, 2
    s = torch.rand(B, C, *spatial, generator=gen, dtype=torch.float64).requires_grad_()
    boxes = random_boxes(gen, B, C, spatial, 7, skip_images=(2,))
    loss = TightnessPrior(width, weight=1e-2)(s, boxes, 5.0)
    (g,) = torch.autograd.grad(loss, s)
    s_ref = s.detach().clone().requires_grad_()
    ref = ref_tightness(s_ref, boxes, width, 1e-2, 5.0)
    (g_ref,) = torch.autograd.grad(ref, s_ref)
    assert torch.allclose(loss, ref, rtol=1e-9)
    assert torch.allclose(g, g_ref, rtol=1e-7, atol=1e-12)
    assert g[2].abs().sum() == 0  # the image without boxes gets no tightness gradient


def test_tightness_band_bounds_include_partial_last_band():
    # one 1×7 box, w = 5: along rows one partial band of 1 line (bound 1); along columns bands of 5 and 2
    s = torch.zeros(1, 1, 4, 10, dtype=torch.float64)
    s[0, 0, 1, 2:9] = 1.0  # exactly 1 pixel per column and 7 pixels in the row
    boxes = torch.tensor([[0, 0, 1, 2, 2, 9]])
    # bands: rows → [1,2) bound 1 (sum 7, z=-6); cols → [2,7) bound 5 (sum 5, z=0 violated-edge), [7,9) bound 2 (sum 2, z=0)
    loss = TightnessPrior(5, weight=1.0)(s, boxes, 5.0)
    expected = ref_barrier(-6.0, 5.0) + 2 * ref_barrier(0.0, 5.0)
    assert float(loss) == pytest.approx(expected, rel=1e-9)


def test_tightness_float32_matches_float64():
    gen = torch.Generator().manual_seed(3)
    s = torch.rand(4, 1, 64, 64, generator=gen)
    boxes = random_boxes(gen, 4, 1, (64, 64), 6)
    a = TightnessPrior()(s, boxes, 5.0)
    b = TightnessPrior()(s.double(), boxes, 5.0)
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_tightness_without_boxes_is_zero_with_gradient_graph():
    s = torch.rand(2, 1, 8, 8, requires_grad=True)
    loss = TightnessPrior()(s, torch.zeros(0, 6, dtype=torch.long), 5.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and s.grad.abs().sum() == 0


@pytest.mark.parametrize("spatial", [(17, 21), (7, 9, 11)])
def test_emptiness_size_masked_ce_match_reference(spatial):
    gen = torch.Generator().manual_seed(7)
    B, C = 3, 2
    s = torch.rand(B, C, *spatial, generator=gen, dtype=torch.float64)
    boxes = random_boxes(gen, B, C, spatial, 5, skip_images=(1,))
    mask = ref_box_mask((B, C, *spatial), boxes)
    for t in (5.0, 40.0):
        for module, ref in ((Emptiness(), lambda x: ref_emptiness(x, mask, t)),
                            (BoxSize(0.3, 0.8), lambda x: ref_size(x, mask, t, 0.3, 0.8)),
                            (MaskedCrossEntropy(), lambda x: ref_masked_ce(x, mask))):
            x1 = s.clone().requires_grad_()
            got = module(x1, mask, t)
            (g1,) = torch.autograd.grad(got, x1)
            x2 = s.clone().requires_grad_()
            want = ref(x2)
            (g2,) = torch.autograd.grad(want, x2)
            assert torch.allclose(got, want, rtol=1e-7), type(module).__name__
            assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-12), type(module).__name__


def test_size_without_box_pushes_image_to_empty():
    s = torch.full((1, 1, 8, 8), 0.5, requires_grad=True)
    loss = BoxSize()(s, torch.zeros(1, 1, 8, 8), 5.0)
    loss.backward()
    assert float(loss.detach()) > 0 and (s.grad > 0).all()  # bounds [0, 0]: every pixel is pushed down


def test_constraint_gradients_finite_for_saturated_probabilities():
    s = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    s[1] = 1.0
    s.requires_grad_()
    boxes = torch.tensor([[0, 0, 2, 9, 3, 15], [1, 0, 0, 16, 0, 16]])
    mask = ref_box_mask((2, 1, 16, 16), boxes)
    total = (TightnessPrior()(s, boxes, 5.0) + Emptiness()(s, mask, 5.0) + BoxSize()(s, mask, 5.0)
             + MaskedCrossEntropy()(s, mask))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()


def test_bad_shapes_are_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="boxes must be"):
        TightnessPrior()(torch.rand(1, 1, 8, 8), torch.zeros(1, 8, dtype=torch.long), 5.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Emptiness()(torch.rand(8, 8), torch.zeros(8, 8), 5.0)
    with pytest.raises(ValueError, match="size bounds"):
        BoxSize(0.9, 0.5)
    with pytest.raises(ValueError, match="positive"):
        log_barrier(torch.zeros(1), 0.0)

"""Flipped object sizes (exact against brute force with SciPy) and the size-loss gradient estimator
(unbiased against the exact gradient of the expected loss, enumerated over all masks)."""

import itertools
import zlib

import numpy as np
import pytest
import torch
from scipy import ndimage

from WeakSegLib.errors import InputError
from WeakSegLib.losses.size import SizeLoss, flipped_sizes


def scipy_size(mask: np.ndarray) -> int:
    """g = 2·max chessboard distance with the image border as background (SciPy, padded image)."""
    if not mask.any():
        return 0
    d = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")
    return int(2 * d.max())


def brute_force(masks: np.ndarray) -> np.ndarray:
    out = np.zeros(masks.shape, np.int64)
    for b, i, j in itertools.product(*map(range, masks.shape)):
        flipped = masks[b].copy()
        flipped[i, j] = ~flipped[i, j]
        out[b, i, j] = scipy_size(flipped)
    return out


def random_masks(rng, shape, kind):
    b, h, w = shape
    if kind == "noise":
        return rng.random(shape) < rng.uniform(0.05, 0.95)
    masks = np.zeros(shape, bool)
    for k in range(b):
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        masks[k, r0:r0 + rng.integers(1, h + 1), c0:c0 + rng.integers(1, w + 1)] = True
        if kind == "holes":  # punch holes and add specks
            for _ in range(rng.integers(1, 4)):
                masks[k, rng.integers(0, h), rng.integers(0, w)] ^= True
    return masks


@pytest.mark.parametrize("kind", ["noise", "rectangles", "holes"])
@pytest.mark.parametrize("shape", [(4, 1, 9), (4, 9, 1), (3, 7, 7), (3, 10, 13), (2, 16, 11)])
def test_flipped_sizes_match_brute_force(kind, shape):
    rng = np.random.default_rng([zlib.crc32(kind.encode()), *shape])
    for _ in range(3):
        masks = random_masks(rng, shape, kind)
        g, flipped = flipped_sizes(torch.from_numpy(masks))
        assert g.tolist() == [scipy_size(m) for m in masks]
        np.testing.assert_array_equal(flipped.numpy(), brute_force(masks))


def test_flipped_sizes_of_empty_full_and_disk_masks():
    empty = torch.zeros(1, 6, 8, dtype=torch.bool)
    g, flipped = flipped_sizes(empty)
    assert g.item() == 0 and bool((flipped == 2).all())  # any single pixel is an object of size 2
    full = torch.ones(1, 6, 8, dtype=torch.bool)
    np.testing.assert_array_equal(flipped_sizes(full)[1].numpy(), brute_force(full.numpy()))
    yy, xx = np.mgrid[:31, :29]
    disk = (((yy - 15) ** 2 + (xx - 13) ** 2) < 100)[None]
    np.testing.assert_array_equal(flipped_sizes(torch.from_numpy(disk))[1].numpy(), brute_force(disk))


def test_flipped_sizes_rejects_wrong_shapes():
    with pytest.raises(InputError, match=r"\(B, H, W\)"):
        flipped_sizes(torch.zeros(4, 4, dtype=torch.bool))


def exact_expected_loss(p: torch.Tensor, s: float) -> torch.Tensor:
    """E over all 2^(H·W) masks of (s − g(y))², each pixel object with probability p (differentiable)."""
    h, w = p.shape
    masks = torch.tensor(list(itertools.product([0, 1], repeat=h * w)), dtype=torch.bool).view(-1, h, w)
    loss = torch.tensor([(s - scipy_size(m)) ** 2 for m in masks.numpy()], dtype=torch.float32)
    prob = torch.where(masks, p, 1 - p).flatten(1).prod(1)
    return (prob * loss).sum()


def test_gradient_estimate_is_unbiased():
    torch.manual_seed(0)
    p = (0.5 + 0.45 * torch.rand(3, 4)).requires_grad_(True)
    s = 0.0
    exact = torch.autograd.grad(exact_expected_loss(p, s), p)[0]
    q = p.detach().clone().requires_grad_(True)
    surrogate, _ = SizeLoss(samples=40000)(q.view(1, 1, 3, 4), torch.tensor([[s]]),
                                           torch.ones(1, 1, 3, 4, dtype=torch.bool))
    estimate = torch.autograd.grad(surrogate, q)[0] * 12  # the surrogate is divided by H·W
    assert exact.abs().max() > 1  # the comparison is not trivially of zeros
    assert torch.allclose(estimate, exact, atol=0.05 * float(exact.abs().max())), (estimate, exact)


def test_unlabelled_pairs_and_forbidden_pixels_get_no_gradient():
    torch.manual_seed(1)
    probs = torch.rand(2, 2, 12, 12, requires_grad=True)
    sizes = torch.tensor([[6.0, -1.0], [-1.0, -1.0]])
    allowed = torch.zeros(2, 2, 12, 12, dtype=torch.bool)
    allowed[:, :, 2:9, 3:10] = True
    surrogate, error = SizeLoss(samples=4)(probs, sizes, allowed)
    grad = torch.autograd.grad(surrogate, probs)[0]
    assert grad[0, 0].abs().sum() > 0
    assert grad[0, 1].abs().sum() == 0 and grad[1].abs().sum() == 0
    assert grad[0, 0][~allowed[0, 0]].abs().sum() == 0
    assert 0 <= error <= 14
    none, err = SizeLoss()(probs, torch.full((2, 2), -1.0), allowed)
    assert none.item() == 0 and err.item() == 0


def test_descending_the_estimate_reaches_the_labelled_size():
    torch.manual_seed(0)
    logits = torch.zeros(4, 1, 20, 20, requires_grad=True)
    target = torch.tensor([[6.0], [10.0], [0.0], [14.0]])
    allowed = torch.ones(4, 1, 20, 20, dtype=torch.bool)
    opt = torch.optim.Adam([logits], lr=0.1)
    loss_fn = SizeLoss(samples=4)
    for _ in range(300):
        surrogate, _ = loss_fn(torch.sigmoid(logits), target, allowed)
        opt.zero_grad()
        surrogate.backward()
        opt.step()
    drawn = torch.rand(64, 4, 20, 20) < torch.sigmoid(logits.detach()).squeeze(1)
    sizes = torch.stack([flipped_sizes(d)[0] for d in drawn]).float().mean(0)
    assert torch.allclose(sizes, target.squeeze(1), atol=2.5), sizes


def test_size_samples_must_be_positive():
    with pytest.raises(InputError, match="≥ 1"):
        SizeLoss(samples=0)


def test_size_anchors_must_be_positive():
    from WeakSegLib.config import TrainConfig
    with pytest.raises(InputError, match="size_anchors"):
        TrainConfig(recipe="size", recipe_settings={"size_anchors": 0}).validate()

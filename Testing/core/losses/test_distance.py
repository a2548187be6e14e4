"""Batched Chebyshev distance transform and object size, against SciPy's chessboard transform."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from WeakSegLib.errors import InputError
from WeakSegLib.losses.distance import chebyshev_distance, object_size


def random_masks(rng, n, h, w, density):
    masks = rng.random((n, h, w)) < density
    blobs = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), (0, 2, 2))
    return np.concatenate([masks, blobs > np.quantile(blobs, 1 - density)])


@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 0.5, 0.8, 0.97, 0.999, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (13, 29), (32, 17)])
def test_equals_scipy_chessboard_transform(density, shape):
    rng = np.random.default_rng([round(density * 1000), *shape])
    masks = random_masks(rng, 4, *shape, density)
    got = chebyshev_distance(torch.from_numpy(masks)).numpy()
    ref = np.stack([ndimage.distance_transform_cdt(m, metric="chessboard") for m in masks])
    np.testing.assert_array_equal(got, ref)


def test_border_as_background_equals_scipy_on_the_padded_mask():
    rng = np.random.default_rng(5)
    masks = random_masks(rng, 6, 21, 34, 0.9)
    masks[0] = True
    got = chebyshev_distance(torch.from_numpy(masks), border_is_background=True).numpy()
    ref = np.stack([ndimage.distance_transform_cdt(np.pad(m, 1), metric="chessboard")[1:-1, 1:-1] for m in masks])
    np.testing.assert_array_equal(got, ref)
    assert got[0].max() == 11  # 21 rows: the middle row is 11 from the border ring


def test_integer_masks_and_conventions():
    mask = torch.zeros(2, 6, 8, dtype=torch.uint8)
    mask[0, 1:5, 2:7] = 3
    d = chebyshev_distance(mask)
    assert d.dtype == torch.int32 and (d[0][mask[0] == 0] == 0).all() and d[0].max() == 2
    assert (d[1] == 0).all()
    assert (chebyshev_distance(torch.ones(1, 4, 4, dtype=torch.bool)) == -1).all()  # no background: as SciPy


@pytest.mark.parametrize("side, size", [(1, 2), (2, 2), (5, 6), (6, 6), (7, 8), (8, 8)])
def test_object_size_of_squares_documents_odd_widths(side, size):
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 3:3 + side, 4:4 + side] = True
    assert int(object_size(mask)[0]) == size


def test_object_size_of_empty_full_and_border_touching_masks():
    masks = torch.zeros(3, 10, 16, dtype=torch.bool)
    masks[1] = True
    masks[2, :, :4] = True  # a band on the left border, 4 wide
    assert object_size(masks).tolist() == [0, 10, 4]


def test_bad_masks_are_refused():
    with pytest.raises(InputError, match="bool or integer"):
        chebyshev_distance(torch.zeros(1, 3, 3))
    with pytest.raises(InputError, match=r"\(B, H, W\)"):
        chebyshev_distance(torch.zeros(3, 3, dtype=torch.bool))


def test_the_torch_free_object_size_of_sizes_from_mask_equals_the_batched_torch_one():
    """``weakseg sizes-from-mask`` measures with scipy (no torch); the size loss with torch."""
    from WeakSegLib.io.sizes import object_size as measured

    rng = np.random.default_rng(5)
    for trial in range(60):
        h, w = rng.integers(1, 24, 2)
        masks = rng.random((3, h, w)) < rng.random()
        if trial % 2:
            masks = ndimage.binary_dilation(masks, iterations=2)
        assert [measured(m) for m in masks] == object_size(torch.from_numpy(masks)).tolist()

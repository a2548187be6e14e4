"""Volumes: geometry-preserving I/O, clear errors for bad images, normalisation."""

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import oblique_volume

from WeakSegLib.errors import InputError
from WeakSegLib.io.sample_data import crop_axial
from WeakSegLib.io.volume import (
    Volume,
    axial_axis,
    check_same_grid,
    normalize,
    read_direction,
    read_label_volume,
    read_volume,
    write_volume,
)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_values_and_geometry(tmp_path, suffix):
    arr = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    vol = oblique_volume(arr)
    path = write_volume(vol, tmp_path / f"v{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, arr)
    assert np.allclose(back.spacing, vol.spacing) and np.allclose(back.origin, vol.origin, atol=1e-4)
    assert np.allclose(back.direction, vol.direction, atol=1e-5)
    check_same_grid(vol, back)


def test_4d_image_is_refused(tmp_path):
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 2)
    assert img.GetDimension() == 4
    sitk.WriteImage(img, str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="4D image"):
        read_volume(tmp_path / "t.nii.gz")


def test_vector_image_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.float32), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="vector image with 3 components"):
        read_volume(tmp_path / "rgb.nrrd")


def test_2d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)), str(tmp_path / "s.nrrd"))
    with pytest.raises(InputError, match="2D image"):
        read_volume(tmp_path / "s.nrrd")


def test_nan_voxels_are_refused_with_count_and_position(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    arr[2, 0, 0] = np.inf
    write_volume(Volume(arr), tmp_path / "n.nrrd")
    with pytest.raises(InputError, match=r"2 voxels are NaN or infinite \(first at index z,y,x=\(1, 2, 3\)\)"):
        read_volume(tmp_path / "n.nrrd")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "none.nrrd")
    (tmp_path / "junk.nrrd").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot be read as an image"):
        read_volume(tmp_path / "junk.nrrd")


def test_label_volume_must_hold_integers(tmp_path):
    write_volume(Volume(np.full((2, 2, 2), 0.5, np.float32)), tmp_path / "m.nrrd")
    with pytest.raises(InputError, match="non-integer"):
        read_label_volume(tmp_path / "m.nrrd")


def test_grid_mismatch_names_the_difference():
    a = oblique_volume(np.zeros((3, 4, 5)))
    with pytest.raises(InputError, match="shape"):
        check_same_grid(a, oblique_volume(np.zeros((3, 4, 6))))
    b = Volume(np.zeros((3, 4, 5)), (1.0, 1.0, 1.0), a.origin, a.direction)
    with pytest.raises(InputError, match="spacing"):
        check_same_grid(a, b)


@pytest.mark.parametrize("flipped_axis", [0, 1, 2])
def test_a_mirrored_grid_is_refused(flipped_axis):
    """Same shape, spacing and origin, one index axis pointing the other way: the voxels of one file
    lie mirrored on the other's, so the grids differ."""
    a = oblique_volume(np.zeros((3, 4, 5)))
    direction = np.asarray(a.direction).reshape(3, 3).copy()
    direction[:, flipped_axis] *= -1
    mirrored = Volume(a.array, a.spacing, a.origin, tuple(direction.ravel()))
    with pytest.raises(InputError, match="direction"):
        check_same_grid(a, mirrored)


def test_normalisations():
    rng = np.random.default_rng(0)
    a = rng.normal(50, 10, size=(4, 30, 30)).astype(np.float32)
    a[0, 0, 0] = 1e6  # an outlier the percentile clip removes
    z = normalize(a, "percentile")
    assert z.dtype == np.float32 and abs(float(np.median(z))) < 0.1 and z.max() < 4
    mm = normalize(a, "minmax")
    assert mm.min() == 0 and mm.max() == 1
    ct = normalize(np.array([-2000, -1000, 0, 1000, 3000], np.float32), "ct-window", window=(-1000, 1000))
    np.testing.assert_allclose(ct, [0, 0, 0.5, 1, 1])
    with pytest.raises(InputError, match="unknown normalisation"):
        normalize(a, "zscore-ish")


def test_axial_axis_follows_direction(spine_ct):
    assert axial_axis(read_volume(spine_ct["image"]).direction) == 1  # TPTBox CT: ITK index j runs along S–I
    assert axial_axis(read_direction(spine_ct["image"])) == 1  # the same from the header alone
    assert axial_axis(Volume(np.zeros((2, 3, 4))).direction) == 0


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 1, 1, 0, 0, 0, 1, 0)])
def test_an_axial_crop_keeps_each_voxel_where_it_was(direction):
    """The sample cases' axial crop: every kept voxel has its value and its world position of before."""
    array = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    volume = Volume(array, (0.5, 0.7, 2.0), (10.0, -4.0, 3.0), direction)
    axis = axial_axis(volume.direction)
    cropped = crop_axial(volume, 2, 5)
    assert cropped.shape[axis] == 3
    before, after = volume.to_sitk(), cropped.to_sitk()
    for index in np.ndindex(*cropped.shape):
        old = list(index)
        old[axis] += 2
        assert cropped.array[index] == volume.array[tuple(old)]
        np.testing.assert_allclose(after.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]]),
                                   before.TransformIndexToPhysicalPoint([int(i) for i in old[::-1]]))

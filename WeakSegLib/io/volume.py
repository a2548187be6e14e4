"""Read, write, check and normalise 3D volumes with SimpleITK.

Arrays are in the order of ``SimpleITK.GetArrayFromImage``: ``(z, y, x)`` = (slice, row, column),
i.e. index axis 0 is ITK's k, axis 2 is ITK's i. Spacing, origin and direction are kept in ITK's
(x, y, z) order exactly as SimpleITK reports them, so a prediction written back with
:func:`write_like` lies on the exact grid of its input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from WeakSegLib.config import DEFAULT_NORMALIZATION, DEFAULT_PERCENTILES, DEFAULT_WINDOW, NORMALIZATIONS
from WeakSegLib.errors import InputError

#: File endings SimpleITK reads and writes for us.
SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """A 3D scalar image and its physical geometry.

    Attributes:
        array: voxel values, shape ``(z, y, x)``.
        spacing: voxel size in mm, ITK order ``(x, y, z)``.
        origin: physical position of voxel (0, 0, 0) in mm (LPS, as ITK).
        direction: 3×3 direction cosines, row-major, as ``SimpleITK.Image.GetDirection()``.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def geometry(self) -> dict[str, Any]:
        """The grid as a JSON-able dict: shape (z, y, x), spacing, origin, direction."""
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on the same grid holding ``array`` (same shape required)."""
        if tuple(array.shape) != self.shape:
            raise InputError(f"array of shape {tuple(array.shape)} does not fit a grid of shape {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, name: str = "image") -> "Volume":
        check_image(image, name)
        return cls(
            sitk.GetArrayFromImage(image),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )


def check_image(image: sitk.Image, name: str = "image") -> None:
    """Raise :class:`InputError` unless ``image`` is a non-empty 3D scalar image."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: vector image with {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "WeakSeg needs one scalar value per voxel (pick a channel first)"
        )
    dim = image.GetDimension()
    if dim == 4:
        raise InputError(f"{name}: 4D image of size {image.GetSize()}; WeakSeg needs a 3D volume (pick one time point)")
    if dim != 3:
        raise InputError(f"{name}: {dim}D image of size {image.GetSize()}; WeakSeg needs a 3D volume")
    if 0 in image.GetSize():
        raise InputError(f"{name}: empty image of size {image.GetSize()}")


def check_finite(array: np.ndarray, name: str = "image") -> None:
    """Raise :class:`InputError` when ``array`` holds NaN or infinite values, saying how many."""
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"{name}: {int(bad.sum())} voxels are NaN or infinite (first at index z,y,x={first}); "
                "fill or mask them before training"
            )


def read_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read a NIfTI, NRRD or MetaImage volume.

    Raises:
        InputError: missing file, unreadable file, 4D or vector image, empty image, NaN/Inf voxels.
    """
    path = Path(path)
    label = name or str(path)
    if not path.exists():
        raise InputError(f"{label}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{label}: cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from exc
    volume = Volume.from_sitk(image, label)
    check_finite(volume.array, label)
    return volume


def read_label_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read a label volume (mask); non-integer values are an error."""
    volume = read_volume(path, name)
    arr = volume.array
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise InputError(f"{name or path}: label volume holds non-integer values")
        arr = arr.astype(np.int32)
    if arr.min() < 0:
        raise InputError(f"{name or path}: label volume holds negative labels")
    return volume.with_array(arr.astype(np.uint16 if arr.max() > 255 else np.uint8))


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the file ending), atomically."""
    path = Path(path)
    if not str(path).endswith(SUPPORTED_SUFFIXES):
        raise InputError(f"{path}: unsupported file ending; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if str(path).endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=compress)
    os.replace(tmp, path)
    return path


def geometry_differences(a: dict, b: dict, atol: float = 1e-3) -> list[str]:
    """Which of shape, spacing, origin and direction differ between two geometry dicts (as
    :meth:`Volume.geometry` gives them); a key missing from either side is not compared. Spacing,
    origin and direction agree within ``atol`` relative to their largest magnitude (at least 1)."""
    out = []
    for key in ("shape", "spacing", "origin", "direction"):
        if key not in a or key not in b:
            continue
        va, vb = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        if va.shape != vb.shape or not np.allclose(va, vb, atol=atol * max(1.0, float(np.abs(va).max()))):
            out.append(key)
    return out


def check_same_grid(a: Volume, b: Volume, name_a: str = "image", name_b: str = "mask") -> None:
    """Raise :class:`InputError` unless ``a`` and ``b`` share shape, spacing, origin and direction."""
    ga, gb = a.geometry(), b.geometry()
    for key in geometry_differences(ga, gb):
        if key == "shape":
            raise InputError(f"{name_b} has shape {b.shape} (z,y,x) but {name_a} has {a.shape}: not the same grid")
        raise InputError(f"{name_b} {key} {tuple(np.round(gb[key], 4))} differs from {name_a} {key} "
                         f"{tuple(np.round(ga[key], 4))}")


# ----------------------------------------------------------------------------------------------
# Intensity normalisation
# ----------------------------------------------------------------------------------------------

def normalize(
    array: np.ndarray,
    method: str = DEFAULT_NORMALIZATION,
    *,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    window: tuple[float, float] = DEFAULT_WINDOW,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Normalise intensities to float32.

    Args:
        array: image, any shape.
        method: ``"percentile"`` clips to the given percentiles (of the voxels under ``mask`` when
            given, else of all voxels) and z-scores with the clipped voxels' mean and std;
            ``"minmax"`` maps [min, max] to [0, 1]; ``"ct-window"`` clips to ``window`` (HU) and maps
            it to [0, 1]; ``"none"`` only casts.
        percentiles: lower and upper percentile for ``"percentile"``, in [0, 100].
        window: (lower, upper) in HU for ``"ct-window"``.
        mask: optional boolean array of ``array``'s shape selecting the voxels the statistics use.

    Returns:
        float32 array of the same shape.
    """
    a = np.asarray(array, dtype=np.float32)
    if method == "none":
        return a.copy()
    if method == "ct-window":
        lo, hi = window
        if not hi > lo:
            raise InputError(f"CT window {window}: upper must exceed lower")
        return ((np.clip(a, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if method == "minmax":
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    if method == "percentile":
        ref = a if mask is None else a[np.asarray(mask, bool)]
        if ref.size == 0:
            raise InputError("normalisation mask selects no voxel")
        lo, hi = np.percentile(ref, percentiles)
        clipped = np.clip(a, lo, hi)
        ref_c = np.clip(ref, lo, hi)
        std = float(ref_c.std())
        return ((clipped - float(ref_c.mean())) / (std if std > 0 else 1.0)).astype(np.float32)
    raise InputError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALIZATIONS)}")


@dataclass
class Normalization:
    """A normalisation as settings and cards record it: method, clip percentiles, CT window (HU)."""

    method: str = DEFAULT_NORMALIZATION
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    window: tuple[float, float] = DEFAULT_WINDOW

    @classmethod
    def of(cls, config: Any) -> "Normalization":
        """The normalisation of a training configuration (its ``normalization``, ``percentiles`` and
        ``window`` settings)."""
        return cls(config.normalization, tuple(config.percentiles), tuple(config.window))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """:func:`normalize` ``array`` with these settings."""
        return normalize(array, self.method, percentiles=tuple(self.percentiles), window=tuple(self.window))


def read_direction(path: str | os.PathLike) -> tuple[float, ...]:
    """Direction cosines of an image file from its header alone (no voxels are read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from exc
    return tuple(float(v) for v in reader.GetDirection())


def axial_axis(direction: Sequence[float]) -> int:
    """Array axis (0, 1 or 2 in (z, y, x) order) whose index direction is closest to the patient's
    superior–inferior axis: the axis to cut axial slices along.

    Args:
        direction: 3×3 direction cosines, row-major (``Volume.direction``, :func:`read_direction`).
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    itk_index = int(np.argmax(np.abs(d[2, :])))  # column i: physical direction of ITK index i
    return 2 - itk_index

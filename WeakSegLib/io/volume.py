"""Read, write, check and normalise 3D volumes with SimpleITK.

Arrays are in the order of ``SimpleITK.GetArrayFromImage``: ``(z, y, x)`` = (slice, row, column),
i.e. index axis 0 is ITK's k, axis 2 is ITK's i. Spacing, origin and direction are kept in ITK's
(x, y, z) order exactly as SimpleITK reports them, so a prediction written back with
:func:`write_like` lies on the exact grid of its input.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from WeakSegLib.config import DEFAULT_NORMALIZATION, DEFAULT_PERCENTILES, DEFAULT_WINDOW, NORMALIZATIONS
from WeakSegLib.errors import InputError, OutputError
from WeakSegLib.io.atomic import Staged, check_writable
from WeakSegLib.io.nifti import check_nifti_payload

#: File endings of images WeakSeg reads (SimpleITK), and of those it writes: single files only, so that a
#: file is complete or absent (a MetaImage ``.mhd`` or a detached ``.nhdr`` header names a second file)
READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
#: the file ending of the predictions written into a folder (batch prediction)
PREDICTION_SUFFIX = OUTPUT_SUFFIXES[0]
#: the largest label value of a label volume (stored as uint16)
MAX_LABEL = 65535


def image_stem(path: str | os.PathLike) -> str:
    """An image file's name without its ending (``case01.nii.gz`` → ``case01``): the name of its case."""
    name = Path(path).name
    for ending in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(path).stem


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

    def ijk_to_ras(self) -> np.ndarray:
        """4×4 matrix from the ITK index ``(i, j, k)`` (= array index ``(z, y, x)`` reversed) to RAS mm, the
        convention of Slicer's IJK→RAS matrix and of MONAI's affine: ITK's LPS with the first two axes
        flipped."""
        flip = np.diag([-1.0, -1.0, 1.0])
        matrix = np.eye(4)
        matrix[:3, :3] = flip @ np.asarray(self.direction, float).reshape(3, 3) @ np.diag(np.asarray(self.spacing,
                                                                                                     float))
        matrix[:3, 3] = flip @ np.asarray(self.origin, float)
        return matrix

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


def check_dimension(dim: int, size: Sequence[int], name: str = "image") -> None:
    """Raise :class:`InputError` unless an image of ``dim`` dimensions (``size``) is 3D."""
    if dim == 4:
        raise InputError(f"{name}: 4D image of size {tuple(size)}; WeakSeg needs a 3D volume (pick one time point)")
    if dim != 3:
        raise InputError(f"{name}: {dim}D image of size {tuple(size)}; WeakSeg needs a 3D volume")


def check_image(image: sitk.Image, name: str = "image") -> None:
    """Raise :class:`InputError` unless ``image`` is a non-empty 3D scalar image."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: vector image with {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "WeakSeg needs one scalar value per voxel (pick a channel first)"
        )
    check_dimension(image.GetDimension(), image.GetSize(), name)
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


def check_not_constant(array: np.ndarray, name: str, purpose: str) -> None:
    """Raise :class:`InputError` when every voxel of ``array`` has one value: no network can learn,
    segment or tighten anything from it (``purpose``: "learn from", "segment", "tighten boxes on")."""
    if array.size and array.min() == array.max():
        raise InputError(f"{name}: every voxel has the value {float(array.min()):g}: nothing to {purpose}")


def _itk_reason(exc: RuntimeError, printed: Sequence[str] = ()) -> str:
    """The informative line of an ITK read error: what the reader printed, else the exception's last line."""
    lines = [line.strip() for line in [*printed, *str(exc).strip().splitlines()] if line.strip()]
    last = lines[0] if printed and lines else (lines[-1] if lines else "unknown error")
    for prefix in ("Reason: ", "[nrrd] ", "sitk::ERROR: ", "MetaImage: "):
        last = last.removeprefix(prefix)
    return last


@contextmanager
def _itk_output() -> Iterator[list[str]]:
    """Collect what ITK's C++ readers print straight to the process's stderr while reading (MetaImage
    and HDF5 print there, besides raising); yields the list the lines go into. Nothing printed is
    lost: :func:`read_volume` puts it into its message or back on stderr."""
    printed: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield printed
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            printed.extend(capture.read().decode("utf-8", "replace").splitlines())


def _check_file(path: Path, label: str) -> None:
    if not path.exists():
        raise InputError(f"{label}: file not found")
    if path.is_dir():
        raise InputError(f"{label}: is a folder, not an image file (for a DICOM series, convert it to NRRD or "
                         "NIfTI first, e.g. by saving it from Slicer)")
    if not str(path).lower().endswith(READ_SUFFIXES):
        raise InputError(f"{label}: unknown image file ending; use one of {', '.join(READ_SUFFIXES)}")
    if str(path).lower().endswith((".nii", ".nii.gz")):
        check_nifti_payload(path, label)


def read_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read a NIfTI, NRRD or MetaImage volume.

    Raises:
        InputError: missing file, a folder, another format, unreadable or truncated file, 4D or vector
            image, empty image, NaN/Inf voxels.
    """
    path = Path(path)
    label = name or str(path)
    _check_file(path, label)
    try:
        with _itk_output() as printed:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{label}: cannot be read as an image: the file is truncated, corrupt or not an image "
                         f"({_itk_reason(exc, printed)})") from exc
    for line in printed:
        print(line, file=sys.stderr)
    volume = Volume.from_sitk(image, label)
    check_finite(volume.array, label)
    return volume


def read_label_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read a label volume (mask): whole numbers from 0 to :data:`MAX_LABEL`, stored as uint8 or uint16.

    Raises:
        InputError: as :func:`read_volume`, and non-integer, negative or too large label values.
    """
    volume = read_volume(path, name)
    label = name or str(path)
    arr = volume.array
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise InputError(f"{label}: label volume holds non-integer values")
    low, high = float(arr.min()), float(arr.max())
    if low < 0:
        raise InputError(f"{label}: label volume holds negative labels (down to {low:g})")
    if high > MAX_LABEL:
        raise InputError(f"{label}: label volume holds label {high:g}, above the largest label WeakSeg handles "
                         f"({MAX_LABEL})")
    return volume.with_array(arr.astype(np.uint16 if high > 255 else np.uint8))


def check_output_volume(path: str | os.PathLike) -> Path:
    """Raise :class:`~WeakSegLib.errors.OutputError` unless a volume can be written to ``path``: a
    supported single-file ending, a file name (not a folder), a writable folder. Writes nothing."""
    path = Path(path)
    if not str(path).lower().endswith(OUTPUT_SUFFIXES):
        two_files = " (a header and a separate data file are not written atomically)" \
            if str(path).lower().endswith((".mhd", ".nhdr", ".hdr")) else ""
        raise OutputError(f"{path}: cannot write this file ending{two_files}; use one of {', '.join(OUTPUT_SUFFIXES)}")
    return check_writable(path, "output volume")


def _suffix(path: Path) -> str:
    return next(s for s in OUTPUT_SUFFIXES if str(path).lower().endswith(s))


def _verify(expected: Volume) -> Callable[[Path], None]:
    """A check that a written file reads back as ``expected`` (voxels and grid)."""
    def verify(tmp: Path) -> None:
        try:
            back = sitk.ReadImage(str(tmp))
        except RuntimeError as exc:
            raise OSError(f"the file read back is unreadable ({_itk_reason(exc)})") from exc
        if str(tmp).endswith((".nii", ".nii.gz")):
            check_nifti_payload(tmp)
        got = Volume.from_sitk(back)
        if got.array.shape != expected.shape or geometry_differences(got.geometry(), expected.geometry(), 1e-5) \
                or not np.array_equal(got.array, expected.array, equal_nan=True):
            raise OSError("the file read back differs from what was written")
    return verify


def stage_volume(staged: Staged, volume: Volume, path: str | os.PathLike, compress: bool = True,
                 metadata: dict[str, str] | None = None) -> Path:
    """Add ``volume`` as ``path`` to ``staged`` writes: written, read back in full and compared.
    ``metadata``: header fields to write with it (NRRD key/value pairs, e.g. a Slicer segmentation's)."""
    path = check_output_volume(path)

    def write(tmp: Path) -> None:
        image = volume.to_sitk()
        for key, value in (metadata or {}).items():
            image.SetMetaData(key, value)
        with _itk_output() as printed:  # ITK's NIfTI writer reports a short write only there
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        if printed:
            raise OSError(printed[0].strip())

    return staged.write_file(path, write, _verify(volume), _suffix(path))


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the file ending), atomically and verified
    (:mod:`WeakSegLib.io.atomic`)."""
    with Staged() as out:
        stage_volume(out, volume, path, compress)
    return Path(path)


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
        raise InputError(f"{name_b} {key} {format_numbers(gb[key])} differs from {name_a} {key} "
                         f"{format_numbers(ga[key])}: not the same grid")


# ----------------------------------------------------------------------------------------------
# Intensity normalisation
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IntensityMap:
    """Intensities clipped to [lo, hi], then mapped to (value − mean) / std: every normalisation of
    :func:`normalize` is one of these, computed from an image (or, for a CT cohort, from all its
    images) and applied to it."""

    lo: float = -math.inf
    hi: float = math.inf
    mean: float = 0.0
    std: float = 1.0

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The mapped intensities, float32."""
        return ((np.clip(np.asarray(array, dtype=np.float32), self.lo, self.hi) - self.mean) / self.std).astype(np.float32)


def intensity_map(array: np.ndarray, method: str = DEFAULT_NORMALIZATION, *,
                  percentiles: tuple[float, float] = DEFAULT_PERCENTILES, window: tuple[float, float] = DEFAULT_WINDOW,
                  mask: np.ndarray | None = None) -> IntensityMap:
    """The mapping :func:`normalize` applies to ``array`` (see there)."""
    a = np.asarray(array, dtype=np.float32)
    if method == "none":
        return IntensityMap()
    if method == "ct-window":
        lo, hi = window
        if not hi > lo:
            raise InputError(f"CT window {window}: upper must exceed lower")
        return IntensityMap(lo, hi, lo, hi - lo)
    if method == "minmax":
        lo, hi = float(a.min()), float(a.max())
        return IntensityMap(lo, hi, lo, hi - lo if hi > lo else 1.0)
    if method == "percentile":
        ref = a if mask is None else a[np.asarray(mask, bool)]
        if ref.size == 0:
            raise InputError("normalisation mask selects no voxel")
        lo, hi = np.percentile(ref, percentiles)
        ref_c = np.clip(ref, lo, hi)
        std = float(ref_c.std())
        return IntensityMap(lo, hi, float(ref_c.mean()), std if std > 0 else 1.0)
    raise InputError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALIZATIONS)}")


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
    return intensity_map(array, method, percentiles=percentiles, window=window, mask=mask).apply(array)


def format_numbers(values: Sequence[float]) -> str:
    """``(1, 0.5, 2.25)``: numbers as a user reads them (4 significant decimals, no numpy types)."""
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def read_header(path: str | os.PathLike) -> Volume:
    """The grid of a 3D image file from its header alone: a :class:`Volume` whose array is a read-only
    zero view of the right shape (no voxels are read).

    Raises:
        InputError: as :func:`read_volume` for a file that is missing, a folder or unreadable, or not 3D.
    """
    path = Path(path)
    _check_file(path, str(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _itk_output() as printed:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be read as an image ({_itk_reason(exc, printed)})") from exc
    check_dimension(reader.GetDimension(), reader.GetSize(), str(path))
    return Volume(np.broadcast_to(np.zeros((), np.float32), tuple(reader.GetSize())[::-1]),
                  tuple(float(v) for v in reader.GetSpacing()), tuple(float(v) for v in reader.GetOrigin()),
                  tuple(float(v) for v in reader.GetDirection()))


def read_direction(path: str | os.PathLike) -> tuple[float, ...]:
    """Direction cosines of a 3D image file from its header alone (see :func:`read_header`)."""
    return read_header(path).direction


def axial_axis(direction: Sequence[float]) -> int:
    """Array axis (0, 1 or 2 in (z, y, x) order) whose index direction is closest to the patient's
    superior–inferior axis: the axis to cut axial slices along.

    Args:
        direction: 3×3 direction cosines, row-major (``Volume.direction``, :func:`read_direction`).
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    itk_index = int(np.argmax(np.abs(d[2, :])))  # column i: physical direction of ITK index i
    return 2 - itk_index

"""Small synthetic volumes shared by the test suites (import as ``from synthetic import ...``)."""

from __future__ import annotations

import numpy as np

from WeakSegLib.config import mode_of
from WeakSegLib.io.canonical import STORED, IntensityMapping, Plan
from WeakSegLib.io.card import InputSpec, LabelSpec, ModelCard, NetworkSpec
from WeakSegLib.io.volume import Volume


def oblique_volume(array: np.ndarray) -> Volume:
    """A volume with non-identity spacing, origin and an oblique direction."""
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    return Volume(array, (0.7, 0.9, 2.5), (-12.5, 30.25, 7.0), direction)


def two_ellipsoids(shape: tuple[int, int, int] = (24, 40, 48), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` ``(z, y, x)``: two bright noisy ellipsoids (labels 1 and 2) on a dark background."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    a = ((z - 12) / 8) ** 2 + ((y - 14) / 8) ** 2 + ((x - 14) / 9) ** 2 < 1
    b = ((z - 12) / 6) ** 2 + ((y - 26) / 7) ** 2 + ((x - 33) / 8) ** 2 < 1
    mask = (a * 1 + b * 2).astype(np.uint8)
    image = (100 * (mask > 0) + np.random.default_rng(seed).normal(0, 10, mask.shape)).astype(np.float32)
    return image, mask


def stored_flipped(volume: Volume) -> Volume:
    """The same voxels in world space, stored with the first two ITK index axes (x, y) reversed: what a
    scanner writing RAS arrays gives for an LPS one."""
    direction = np.asarray(volume.direction, float).reshape(3, 3)
    spacing = np.asarray(volume.spacing, float)
    far = np.array([volume.shape[2] - 1, volume.shape[1] - 1, 0], float)
    origin = np.asarray(volume.origin, float) + direction @ (spacing * far)
    flipped = direction @ np.diag([-1.0, -1.0, 1.0])
    return Volume(np.ascontiguousarray(volume.array[:, ::-1, ::-1]), volume.spacing, tuple(origin.tolist()),
                  tuple(flipped.ravel().tolist()))


def resampled(volume: Volume, spacing: tuple[float, float, float], labels: bool = False) -> Volume:
    """``volume`` resampled (SimpleITK; linear, or nearest for ``labels``) onto a grid of ``spacing``
    (ITK order) covering the same extent, same origin and direction."""
    import SimpleITK as sitk

    image = volume.to_sitk()
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                        image.GetOrigin(), spacing, image.GetDirection(), 0, image.GetPixelID())
    return Volume(sitk.GetArrayFromImage(out), spacing, volume.origin, volume.direction)


def plain_card(dims: int, axis: int, context: int, values: list[int], patch: list[int] | None = None,
               network: str = "probe", spacing: list[float] | None = None) -> ModelCard:
    """A model card whose plan takes the image as it is stored, intensities unchanged (trained at
    ``spacing``, if given): ``network`` of ``dims`` dimensions over ``context`` slices along ``axis``, one
    class per label of ``values``."""
    plan = Plan(list(spacing) if spacing else None, "mr", IntensityMapping("none"), STORED)
    return ModelCard(NetworkSpec(network, dims, context, len(values) + 1, (4, 8, 16, 32, 64)),
                     InputSpec(mode_of(dims, context), axis, context, patch, plan),
                     [LabelSpec(v, f"l{v}", [1.0, 0.0, 0.0]) for v in values], "full")


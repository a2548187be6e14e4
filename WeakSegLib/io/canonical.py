"""The canonical space a model works in, as its card records it: the :class:`Plan` (orientation, spacing,
modality) and its :class:`IntensityMapping`, one type from the training cohort to prediction.
Moving images into the space is :mod:`WeakSegLib.engine.samples.preprocess`'s work; this module holds
the typed record and reads it, cards written before it included (:func:`plan_before_plans`).

Torch-free (the Slicer side reads cards).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from WeakSegLib.config import DEFAULT_NORMALIZATION, DEFAULT_PERCENTILES, DEFAULT_WINDOW, NORMALIZATIONS
from WeakSegLib.errors import InputError
from WeakSegLib.io.fields import Fields
from WeakSegLib.io.volume import IntensityMap, Volume, intensity_map
from WeakSegLib.options import AUTO

#: the mapping fitted on a CT cohort (one map for every image) — the method ``auto`` takes for CT
COHORT_CT = "ct"
#: the canonical orientation (MONAI axis codes): array axis 0 towards the head, 1 to the front, 2 to the right
RAS = "RAS"
#: the "orientation" of a model trained before plans existed: images taken as stored, never resampled
STORED = "stored"
#: a stored-orientation model warns when an image's spacing differs from its training spacing by more than this
SPACING_TOLERANCE = 0.25


@dataclass(frozen=True)
class IntensityMapping:
    """How intensities reach the network, decided once for a model (:meth:`choose`) and applied to every
    image (:meth:`apply`), in training and prediction.

    Either :data:`COHORT_CT` — one :class:`~WeakSegLib.io.volume.IntensityMap` fitted on the training
    cohort (:meth:`fitted`: clip to the ``percentiles`` of the voxels inside its boxes or masks, then
    z-score with their mean and standard deviation), recorded as ``clip``, ``mean``, ``std`` — or a
    per-image method of :func:`WeakSegLib.io.volume.normalize` (``percentile``, ``minmax``, ``ct-window``,
    ``none``) whose statistics each image gives.
    """

    method: str = DEFAULT_NORMALIZATION
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    window: tuple[float, float] = DEFAULT_WINDOW
    clip: tuple[float, float] | None = None
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def choose(cls, normalization: str, modality: str, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
               window: Sequence[float] = DEFAULT_WINDOW) -> "IntensityMapping":
        """The mapping a setting asks for (``normalization``: ``auto``, ``ct`` or a per-image method) on a
        cohort of ``modality`` (``ct``/``mr``): ``auto`` is the cohort's CT mapping for CT, each image's
        percentiles otherwise. ``ct`` on a cohort that reads as MR is an :class:`InputError`."""
        if normalization == COHORT_CT and modality != "ct":
            raise InputError("normalisation ct maps a CT cohort, but the first image reads as MR (no voxel below "
                             "-500): give --modality ct, or another normalisation")
        method = normalization
        if normalization == AUTO:
            method = COHORT_CT if modality == "ct" else DEFAULT_NORMALIZATION
        return cls(method, tuple(percentiles), tuple(window))

    @classmethod
    def of(cls, config) -> "IntensityMapping":
        """The per-image mapping of a settings object with ``normalization``, ``percentiles`` and ``window``."""
        return cls(config.normalization, tuple(config.percentiles), tuple(config.window))

    @property
    def cohort(self) -> bool:
        """Fitted on the cohort (one map for every image), not taken from each image."""
        return self.method == COHORT_CT

    def fitted(self, samples: Sequence[np.ndarray]) -> "IntensityMapping":
        """The cohort mapping fitted on intensities sampled inside the cases' boxes or masks."""
        values = np.concatenate([np.asarray(s, np.float64).ravel() for s in samples])
        if values.size == 0:
            raise InputError("no voxel inside a box or mask to measure the CT intensities on")
        lo, hi = np.percentile(values, self.percentiles)
        clipped = np.clip(values, lo, hi)
        return dataclasses.replace(self, clip=(float(lo), float(hi)), mean=float(clipped.mean()),
                                   std=float(clipped.std()) or 1.0)

    def map_for(self, array: np.ndarray) -> IntensityMap:
        """The map applied to the image ``array``: the cohort's, or the one its own statistics give."""
        if self.cohort:
            if self.clip is None:
                raise ValueError("the cohort mapping is applied before it is fitted")
            return IntensityMap(*self.clip, self.mean, self.std)
        return intensity_map(array, self.method, percentiles=tuple(self.percentiles), window=tuple(self.window))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` as the network sees it (float32)."""
        return self.map_for(array).apply(array)

    def to_dict(self) -> dict:
        """As cards record it: ``{"method": "ct", "clip", "mean", "std"}`` or ``{"method", "percentiles",
        "window"}``."""
        if self.cohort:
            return {"method": self.method, "clip": list(self.clip or ()), "mean": self.mean, "std": self.std}
        return {"method": self.method, "percentiles": list(self.percentiles), "window": list(self.window)}

    @classmethod
    def read(cls, n: Fields, where: str) -> "IntensityMapping":
        """The mapping a card records (:meth:`to_dict`), every field checked (``where`` prefixes messages; a
        bad one raises ``n``'s error class)."""
        method = n.text("method", DEFAULT_NORMALIZATION)
        if method == COHORT_CT:
            lo, hi = n.numbers("clip", 2)
            mean = n.number("mean")
            if lo >= hi:
                raise n.error(f"{where}: normalization clip {[lo, hi]} is not an interval")
            return cls(method, clip=(float(lo), float(hi)), mean=float(mean), std=float(n.number("std", positive=True)))
        if method not in NORMALIZATIONS:
            raise n.error(f"{where}: normalization method {method!r} is unknown; one of {COHORT_CT}, "
                             f"{', '.join(NORMALIZATIONS)}")
        return cls(method, tuple(n.numbers("percentiles", 2, DEFAULT_PERCENTILES)),
                   tuple(n.numbers("window", 2, DEFAULT_WINDOW)))


@dataclass
class Plan:
    """What makes every image of a model alike (:mod:`WeakSegLib.engine.samples.preprocess`): decided once
    from the training cases, stored in the card (``input.preprocessing``), applied to every image.

    Attributes:
        spacing: target voxel size in mm, ITK order ``(x, y, z)`` of the RAS grid; None keeps each
            image's own spacing (only reoriented). For a :data:`STORED` plan: the training spacing,
            compared with each image's (:meth:`warnings`), never resampled to.
        modality: ``"ct"`` or ``"mr"``.
        normalization: the intensity mapping.
        orientation: :data:`RAS`, or :data:`STORED` for a model trained before plans (images as stored).
    """

    spacing: list[float] | None
    modality: str
    normalization: IntensityMapping = field(default_factory=IntensityMapping)
    orientation: str = RAS

    @property
    def keeps_grid(self) -> bool:
        """Images stay on their own grid (a model trained before plans)."""
        return self.orientation == STORED

    def normalize(self, array: np.ndarray) -> np.ndarray:
        """``array`` (a canonical image) as the network sees it."""
        return self.normalization.apply(array)

    def warnings(self, volume: Volume) -> list[str]:
        """What a user should know before this plan predicts ``volume``: an image whose spacing differs
        from the training spacing by more than :data:`SPACING_TOLERANCE`, for a model that does not
        resample."""
        if self.keeps_grid and self.spacing and not np.allclose(self.spacing, volume.spacing, rtol=SPACING_TOLERANCE):
            return [f"image spacing {tuple(round(s, 3) for s in volume.spacing)} mm differs from the training "
                    f"spacing {tuple(round(s, 3) for s in self.spacing)} mm"]
        return []

    def to_dict(self) -> dict:
        return {"spacing": self.spacing, "modality": self.modality, "normalization": self.normalization.to_dict(),
                "orientation": self.orientation}

    @classmethod
    def from_dict(cls, d: dict, where: str = "plan") -> "Plan":
        """The plan a card records, every field checked: an :class:`InputError` (prefixed ``where``)
        names the first bad one."""
        f = Fields(d, where)
        spacing = f.numbers("spacing", 3, None, positive=True)
        modality = f.text("modality", "mr")
        if modality not in ("ct", "mr"):
            raise InputError(f"{where}: modality is {modality!r}, not ct or mr")
        mapping = IntensityMapping.read(f.sub("normalization", {}), where)
        orientation = f.text("orientation", RAS)
        if orientation not in (RAS, STORED):
            raise InputError(f"{where}: orientation {orientation!r} is not {RAS} or {STORED}")
        return cls(spacing, modality, mapping, orientation)


def plan_before_plans(inp: Fields) -> Plan:
    """The plan of a card written before plans existed: its ``input`` gives the training ``spacing`` and
    the per-image ``normalization``; images are taken as stored."""
    mapping = IntensityMapping.read(inp.sub("normalization", {}), inp.where)
    return Plan(inp.numbers("spacing", 3, [], positive=True) or None, "mr", mapping, STORED)

"""Dense CRF refinement of 2D probability maps (DeepCut's proposal step; docs/methods.md).

One slice: :func:`refine_slice`. Many slices in parallel: :class:`CRFPool`, whose worker processes
read the images, probabilities and allowed-class masks from shared memory blocks and write the
labels into another; only slice indices cross process boundaries (no array is pickled).

Conventions:
    - A slice is an ``(H, W)`` array in row-major order; pixel ``(i, j)`` has position ``(i, j)``
      in pixel units for the Gaussian and bilateral kernels (so non-square slices keep their
      layout: the CRF of a transposed slice is the transposed CRF).
    - Intensities for the bilateral kernel are on a 0–255 scale (``srgb`` = 20 is in those units):
      :func:`to_crf_intensity` maps normalised images there.
    - Probabilities ``(K, H, W)`` (class 0 = background); the unary is −log(max(p, ε)), so p = 0 is
      finite. ``allowed`` ``(K, H, W)`` bool marks where each class may appear (DeepCut: class c
      only inside the boxes of class c); elsewhere its probability is set to 0 before the CRF and
      its label to background after it (clipped to the box).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from typing import Sequence

import numpy as np

from WeakSegLib.config import DEFAULT_PERCENTILES
from WeakSegLib.errors import InputError
from WeakSegLib.registry.proposals import CRFSettings


def to_crf_intensity(images: np.ndarray, valid: np.ndarray | None = None,
                     percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Map intensities linearly so that the given percentiles (of the ``valid`` voxels) become 0 and
    255, clipped; float32, C-contiguous, same shape."""
    values = images[valid] if valid is not None else images
    lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
    scaled = (images.astype(np.float32) - lo) * (255.0 / max(float(hi - lo), 1e-6))
    return np.ascontiguousarray(np.clip(scaled, 0.0, 255.0), dtype=np.float32)


def _densecrf():
    """The ``pydensecrf`` modules (from the ``pydensecrf2`` package), or a clear error."""
    try:
        from pydensecrf import densecrf, utils
    except ImportError as exc:
        raise InputError("the dense CRF (recipe 'deepcut') needs the package pydensecrf2: "
                         "pip install pydensecrf2==1.1 (it compiles; needs a C++ compiler)") from exc
    return densecrf, utils


def _check_slice(image: np.ndarray, probs: np.ndarray, allowed: np.ndarray | None) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise InputError(f"CRF image must be a 2D array (H, W), got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.float32:
        raise InputError(f"CRF image must be float32 (0–255 scale), got {image.dtype}")
    if not image.flags.c_contiguous:
        raise InputError("CRF image must be C-contiguous (np.ascontiguousarray); a strided view would be "
                         "read in the wrong pixel order")
    if probs.ndim != 3 or probs.shape[1:] != image.shape or probs.shape[0] < 2:
        raise InputError(f"CRF probabilities must be (K ≥ 2, H, W) = (K, {image.shape[0]}, {image.shape[1]}), "
                         f"got {probs.shape}")
    if not np.isfinite(image).all() or not np.isfinite(probs).all():
        raise InputError("CRF image or probabilities contain NaN or Inf")
    if allowed is not None and allowed.shape != probs.shape:
        raise InputError(f"CRF allowed-class mask must have the probabilities' shape {probs.shape}, got {allowed.shape}")


def refine_slice(image: np.ndarray, probs: np.ndarray, allowed: np.ndarray | None = None,
                 params: CRFSettings = CRFSettings()) -> np.ndarray:
    """Labels ``(H, W)`` uint8 of the dense CRF over one slice (see module docstring).

    Args:
        image: ``(H, W)`` float32, C-contiguous, 0–255 scale.
        probs: ``(K, H, W)`` class probabilities (class 0 = background).
        allowed: ``(K, H, W)`` bool, where each class may appear; None allows every class everywhere.
        params: kernel settings.

    Raises:
        InputError: wrong shape, dtype or memory layout, NaN/Inf.
    """
    densecrf, utils = _densecrf()
    _check_slice(image, probs, allowed)
    k, h, w = probs.shape
    p = probs.astype(np.float32, copy=True)
    if allowed is not None:
        p[~allowed] = 0.0
    unary = np.ascontiguousarray(-np.log(np.maximum(p, params.eps)).reshape(k, h * w), dtype=np.float32)
    crf = densecrf.DenseCRF(h * w, k)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseEnergy(utils.create_pairwise_gaussian((params.gauss_sxy,) * 2, (h, w)), compat=params.gauss_compat)
    crf.addPairwiseEnergy(utils.create_pairwise_bilateral((params.bilateral_sxy,) * 2, (params.bilateral_srgb,), image,
                                                    chdim=-1), compat=params.bilateral_compat)
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(k, h, w)
    labels = q.argmax(0).astype(np.uint8)
    if allowed is not None:
        labels[~np.take_along_axis(allowed, labels[None].astype(np.int64), 0)[0]] = 0
    return labels


# ---- shared-memory pool ------------------------------------------------------------------------

_BLOCKS: dict[str, np.ndarray] = {}
_HANDLES: list[SharedMemory] = []
_PARAMS = CRFSettings()


def _attach(spec: dict, params: CRFSettings) -> None:
    """Pool initializer: map the shared blocks once per worker process."""
    global _PARAMS
    _PARAMS = params
    for key, (name, shape, dtype) in spec.items():
        shm = SharedMemory(name=name)
        _HANDLES.append(shm)
        _BLOCKS[key] = np.ndarray(shape, dtype=dtype, buffer=shm.buf)


def _refine_index(i: int) -> None:
    """Refine slice ``i`` of the shared blocks in place (runs in a worker process)."""
    _refine_into(_BLOCKS, i, _PARAMS)


def _refine_into(blocks: dict[str, np.ndarray], i: int, params: CRFSettings) -> None:
    h, w = (int(v) for v in blocks["extent"][i])
    image = np.ascontiguousarray(blocks["images"][i, :h, :w])
    probs = blocks["probs"][i, :, :h, :w]
    allowed = blocks["allowed"][i, :, :h, :w].astype(bool)
    labels = blocks["labels"][i]
    labels[:] = 0
    labels[:h, :w] = refine_slice(image, probs, allowed, params)


class CRFPool:
    """Dense CRF over many slices of a fixed image stack, in ``processes`` worker processes.

    The images are copied once into shared memory when the pool is made; each :meth:`refine` copies
    the probabilities and allowed masks into shared blocks and the workers read them in place.
    ``processes`` = 1 runs in this process (no pool). Use as a context manager or call :meth:`close`.

    Args:
        images: ``(N, H, W)`` 0–255 intensities (see :func:`to_crf_intensity`).
        extent: ``(N, 2)`` the valid ``(h, w)`` of each slice (the rest is padding the CRF never sees);
            default the whole slice.
        n_classes: K, background included.
        processes: worker processes.
        params: CRF settings.
    """

    def __init__(self, images: np.ndarray, n_classes: int, *, extent: np.ndarray | None = None,
                 processes: int = 2, params: CRFSettings = CRFSettings()) -> None:
        if images.ndim != 3:
            raise InputError(f"CRF image stack must be (N, H, W), got {images.shape}")
        if processes < 1:
            raise InputError(f"processes must be ≥ 1, got {processes}")
        _densecrf()
        n, h, w = images.shape
        if extent is None:
            extent = np.tile([h, w], (n, 1))
        extent = np.asarray(extent, dtype=np.int64)
        if extent.shape != (n, 2) or (extent < 1).any() or (extent > [h, w]).any():
            raise InputError(f"CRF extents must be (N, 2) within the slice size ({h}, {w})")
        self.shape = (n, n_classes, h, w)
        self.params = params
        self.processes = processes
        self._pool = None
        self._shm: list[SharedMemory] = []
        layout = {"images": ((n, h, w), np.float32), "probs": ((n, n_classes, h, w), np.float32),
                  "allowed": ((n, n_classes, h, w), np.uint8), "labels": ((n, h, w), np.uint8),
                  "extent": ((n, 2), np.int64)}
        self._blocks: dict[str, np.ndarray] = {}
        spec = {}
        for key, (shape, dtype) in layout.items():
            if processes == 1:
                self._blocks[key] = np.zeros(shape, dtype)
                continue
            shm = SharedMemory(create=True, size=max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
            self._shm.append(shm)
            self._blocks[key] = np.ndarray(shape, dtype=dtype, buffer=shm.buf)
            spec[key] = (shm.name, shape, np.dtype(dtype).str)
        self._blocks["images"][:] = images
        self._blocks["extent"][:] = extent
        if processes > 1:
            self._pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_attach,
                                             initargs=(spec, params))

    def refine(self, probs: np.ndarray, allowed: np.ndarray, indices: Sequence[int]) -> tuple[np.ndarray, float]:
        """CRF labels of slices ``indices``.

        Args:
            probs: ``(N, K, H, W)`` probabilities.
            allowed: ``(N, K, H, W)`` bool (see module docstring).
            indices: the slices to refine; the others get label 0.

        Returns:
            ``(labels (N, H, W) uint8, seconds)`` (wall time of the CRF step).
        """
        if probs.shape != self.shape or allowed.shape != self.shape:
            raise InputError(f"CRF probabilities and allowed masks must be {self.shape}, got {probs.shape} "
                             f"and {allowed.shape}")
        began = time.perf_counter()
        blocks = self._blocks
        blocks["probs"][:] = probs
        blocks["allowed"][:] = allowed
        blocks["labels"][:] = 0
        indices = [int(i) for i in indices]
        if self._pool is None:
            for i in indices:
                _refine_into(blocks, i, self.params)
        elif indices:
            try:  # one slice per task: a CRF takes milliseconds, a task message microseconds; balances best
                list(self._pool.map(_refine_index, indices))
            except BrokenProcessPool as exc:
                raise InputError("the CRF worker processes died. Scripts that train with DeepCut must start "
                                 "under `if __name__ == \"__main__\":` (worker processes re-import the main "
                                 "script), and need memory for one slice per process") from exc
        return blocks["labels"].copy(), time.perf_counter() - began

    def close(self) -> None:
        """Stop the workers and free the shared memory (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._blocks = {}
        for shm in self._shm:
            shm.close()
            shm.unlink()
        self._shm = []

    def __enter__(self) -> "CRFPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

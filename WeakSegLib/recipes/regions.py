"""Candidate segments for BoxSup (docs/methods.md §5) from unsupervised region proposals, and the choice
among them.

For each 2D box, once: the box with a context margin around it is over-segmented by Felzenszwalb's
graph method and by SLIC at several scales (scikit-image). From each over-segmentation, regions are
merged into candidates: the union of the regions lying at least a fraction τ inside the box (τ in
``thresholds``), its largest connected component, and each large region alone; all clipped to the
box, duplicates and empty ones dropped. A box none of whose candidates covers a pixel gets the
filled box as its only candidate (``fallback``), so every box keeps a label.

Each epoch, per box: cost = (1 − IoU(box, candidate's tight box)) + λ·(1 − IoU(candidate, network's
current foreground in the box)), and a candidate drawn uniformly among the k lowest costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from WeakSegLib.errors import InputError


@dataclass(frozen=True)
class ProposalSettings:
    """Over-segmentations and merging rules.

    Attributes:
        felzenszwalb_scales: Felzenszwalb ``scale`` values (0–255 intensity units).
        slic_segments: SLIC segment counts per box crop.
        slic_compactness: SLIC compactness (intensities scaled to [0, 1]).
        context: margin around the box in the crop, as a fraction of the box size per axis.
        thresholds: fractions τ of a region inside the box for it to join a merged candidate.
        min_region: a region alone is a candidate when it covers at least this fraction of the box.
    """

    felzenszwalb_scales: tuple[float, ...] = (50.0, 150.0, 400.0)
    slic_segments: tuple[int, ...] = (6, 12, 24)
    slic_compactness: float = 0.1
    context: float = 0.25
    thresholds: tuple[float, ...] = (0.5, 0.75, 0.95)
    min_region: float = 0.1


@dataclass
class BoxCandidates:
    """Candidates of one box.

    Attributes:
        box: ``(y0, y1, x0, x1)`` half-open, in slice pixels.
        masks: ``(n, y1 − y0, x1 − x0)`` bool, in box coordinates.
        overlap_cost: ``(n,)`` 1 − IoU(box, the candidate's tight box).
        fallback: True when no proposal covered a pixel and the filled box is the only candidate.
    """

    box: tuple[int, int, int, int]
    masks: np.ndarray
    overlap_cost: np.ndarray
    fallback: bool = False


def _oversegmentations(crop: np.ndarray, box_area: int, settings: ProposalSettings) -> list[np.ndarray]:
    from skimage.segmentation import felzenszwalb, slic

    out = []
    min_size = max(4, int(0.02 * box_area))
    for scale in settings.felzenszwalb_scales:
        out.append(felzenszwalb(crop, scale=scale, sigma=0.5, min_size=min_size))
    for n in settings.slic_segments:
        out.append(slic(crop, n_segments=n, compactness=settings.slic_compactness, channel_axis=None,
                        start_label=0, enforce_connectivity=True))
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(sizes.argmax()))


def tight_box_iou(masks: np.ndarray) -> np.ndarray:
    """IoU of the box (the masks' full extent) with each mask's tight box: ``(n, h, w)`` → ``(n,)``
    (0 for an empty mask)."""
    n, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)
    def extent(a: np.ndarray, size: int) -> np.ndarray:
        first = np.where(a.any(1), a.argmax(1), size)
        last = np.where(a.any(1), size - a[:, ::-1].argmax(1), size)
        return np.maximum(last - first, 0)
    return extent(rows, h) * extent(cols, w) / float(h * w)


def box_candidates(image: np.ndarray, box: tuple[int, int, int, int],
                   settings: ProposalSettings = ProposalSettings()) -> BoxCandidates:
    """Candidate segments of one box (see module docstring).

    Args:
        image: ``(H, W)`` slice, intensities in [0, 1].
        box: ``(y0, y1, x0, x1)`` half-open, inside the slice.

    Raises:
        InputError: an empty box or one reaching outside the slice.
    """
    if image.ndim != 2:
        raise InputError(f"proposals need a 2D slice, got shape {image.shape}")
    H, W = image.shape
    y0, y1, x0, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise InputError(f"box (y {y0}:{y1}, x {x0}:{x1}) is empty or larger than the slice ({H}, {W})")
    h, w = y1 - y0, x1 - x0
    my, mx = int(np.ceil(settings.context * h)), int(np.ceil(settings.context * w))
    cy0, cy1, cx0, cx1 = max(0, y0 - my), min(H, y1 + my), max(0, x0 - mx), min(W, x1 + mx)
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1], dtype=np.float64)
    inbox = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
    found: dict[bytes, np.ndarray] = {}

    def add(mask: np.ndarray) -> None:
        if mask.any():
            found.setdefault(np.packbits(mask).tobytes(), mask)

    for seg in _oversegmentations(crop, h * w, settings):
        total = np.bincount(seg.ravel())
        inside = np.bincount(seg[inbox].ravel(), minlength=total.size)
        frac = inside / np.maximum(total, 1)
        seg_box = seg[inbox]
        for tau in settings.thresholds:
            union = (frac >= tau)[seg_box]
            add(union)
            add(_largest_component(union))
        for r in np.flatnonzero((frac >= 0.5) & (inside >= settings.min_region * h * w)):
            add(seg_box == r)
    if not found:
        masks, fallback = np.ones((1, h, w), bool), True
    else:
        masks, fallback = np.stack(list(found.values())), False
    return BoxCandidates((y0, y1, x0, x1), masks, 1.0 - tight_box_iou(masks), fallback)


def choose(candidates: BoxCandidates, prediction: np.ndarray | None, rng: np.random.Generator, *,
           k: int = 5, weight: float = 1.0) -> tuple[int, float]:
    """Pick a candidate: uniformly among the ``k`` lowest costs (module docstring).

    Args:
        prediction: ``(h, w)`` bool, the network's foreground in the box; None (first epoch) uses the
            overlap cost alone.
        k: how many of the cheapest candidates to draw from (the best, not the worst).
        weight: λ of the network-disagreement term.

    Returns:
        (candidate index, its cost).
    """
    cost = candidates.overlap_cost.astype(np.float64)
    if prediction is not None:
        inter = (candidates.masks & prediction).sum((1, 2))
        union = (candidates.masks | prediction).sum((1, 2))
        cost = cost + weight * (1.0 - np.where(union > 0, inter / np.maximum(union, 1), 1.0))
    best = np.argsort(cost, kind="stable")[:max(1, k)]
    pick = int(best[rng.integers(len(best))])
    return pick, float(cost[pick])

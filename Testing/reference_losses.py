"""Slow, obviously correct reference implementations of the box constraints (docs/methods.md §1).

One Python loop per box, axis, band, image and class, with sums by slicing. Used by the tests to
check the vectorised losses and by the speed benchmark as the baseline.
"""

import math

import torch


def ref_barrier(z: float, t: float) -> float:
    if z <= -1 / t**2:
        return -math.log(-z) / t
    return t * z - math.log(1 / t**2) / t + 1 / t


def ref_tightness(s, boxes, w, weight, t):
    """Loop over boxes, axes and bands; sums by slicing."""
    total = 0.0
    nd = s.dim() - 2
    for row in boxes.tolist():
        b, c, bounds = row[0], row[1], row[2:]
        lo, hi = bounds[0::2], bounds[1::2]
        for d in range(nd):
            start = lo[d]
            while start < hi[d]:
                stop = min(start + w, hi[d])
                index = [b, c] + [slice(start, stop) if k == d else slice(lo[k], hi[k]) for k in range(nd)]
                total = total + ref_barrier_t(stop - start - s[tuple(index)].sum(), t)
                start = stop
    return weight * total / s.shape[0]


def ref_barrier_t(z, t):
    """Torch version of the piecewise definition, one scalar at a time."""
    if z.item() <= -1 / t**2:
        return -torch.log(-z) / t
    return t * z - math.log(1 / t**2) / t + 1 / t


def ref_box_mask(shape, boxes):
    m = torch.zeros(shape)
    for row in boxes.tolist():
        b, c, bounds = row[0], row[1], row[2:]
        m[(b, c, *[slice(bounds[2 * k], bounds[2 * k + 1]) for k in range(len(shape) - 2)])] = 1
    return m


def ref_emptiness(s, mask, t):
    total = 0.0
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            total = total + ref_barrier_t((s[b, c] * (1 - mask[b, c])).sum(), t)
    return total / (s.shape[0] * math.prod(s.shape[2:]))


def ref_size(s, mask, t, lo, hi):
    total = 0.0
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            area, size = mask[b, c].sum(), s[b, c].sum()
            total = total + ref_barrier_t(lo * area - size, t) + ref_barrier_t(size - hi * area, t)
    return total / (s.shape[0] * math.prod(s.shape[2:]))


def ref_masked_ce(s, mask):
    total = 0.0
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            out = 1 - mask[b, c]
            total = total + -(torch.log((1 - s[b, c]).clamp_min(1e-6)) * out).sum() / out.sum().clamp_min(1)
    return total / s.shape[0]

"""Box constraints under log-barrier extensions (Kervadec et al., MIDL 2020; docs/methods.md §1).

All losses take the *foreground* probabilities ``s`` of shape ``(B, C, *S)`` — ``C`` foreground
classes (softmax channel 0, background, removed), ``S`` = ``(H, W)`` in 2D or ``(D, H, W)`` in 3D —
and return a scalar: the per-image value (a sum, unless said) averaged over the batch.

Boxes come as one long tensor ``(N, 2 + 2·nd)``: ``[batch, class, lo_0, hi_0, lo_1, hi_1, …]`` with
half-open voxel bounds per spatial axis. The tightness prior gets the line sums of *all* boxes with
one batched matrix product per axis (:func:`line_sums`), then the sums of *all* bands with one
cumulative sum over those lines: no Python loop over boxes or bands, no dense per-band masks, no
host synchronisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def log_barrier(z: torch.Tensor, t: float) -> torch.Tensor:
    """Log-barrier extension ψ_t(z) for constraints ``z ≤ 0``, elementwise.

    ψ_t(z) = −log(−z)/t when z ≤ −1/t², else t·z − log(1/t²)/t + 1/t. Continuous, differentiable
    and finite everywhere (also for violated constraints).
    """
    if t <= 0:
        raise ValueError(f"barrier parameter t must be positive, got {t}")
    threshold = -1.0 / (t * t)
    return torch.where(z <= threshold, torch.log(-z.clamp(max=threshold)) / -t,
                       t * z - math.log(1.0 / (t * t)) / t + 1.0 / t)


def _check(s: torch.Tensor, boxes: torch.Tensor | None = None) -> int:
    if s.dim() not in (4, 5):
        raise ValueError(f"probabilities must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(s.shape)}")
    nd = s.dim() - 2
    if boxes is not None and (boxes.dim() != 2 or boxes.shape[1] != 2 + 2 * nd):
        raise ValueError(f"boxes must be (N, {2 + 2 * nd}) [batch, class, lo/hi per axis] for {nd}D input, "
                         f"got shape {tuple(boxes.shape)}")
    return nd


def _slots(boxes: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each box's (image, class) group ``b·C + c``, its rank among the boxes of that group, and the
    largest number of boxes in one group (one host read per call)."""
    group = boxes[:, 0] * channels + boxes[:, 1]
    onehot = nn.functional.one_hot(group, int(group.max()) + 1)
    rank = (onehot.cumsum(0) - 1).gather(1, group[:, None])[:, 0]
    return group, rank, int(onehot.sum(0).max())


def _grouped_weights(boxes: torch.Tensor, group: torch.Tensor, rank: torch.Tensor, slots: int,
                     spatial: tuple[int, ...], axes: tuple[int, ...], groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Indicator of each box's extent over ``axes`` (outer product, flattened) placed in row ``rank``
    of its (image, class) ``group``: ``(groups, slots, prod(S[axes]))``, zero elsewhere. Each group
    only holds its own boxes, so a product with it costs no more than the busiest image needs."""
    n = boxes.shape[0]
    weight = None
    for a in axes:
        pos = torch.arange(spatial[a], device=boxes.device)
        ind = ((pos >= boxes[:, 2 + 2 * a, None]) & (pos < boxes[:, 3 + 2 * a, None])).to(dtype)
        weight = ind if weight is None else (weight[:, :, None] * ind[:, None, :]).reshape(n, -1)
    grouped = torch.zeros(groups, slots, weight.shape[1], dtype=dtype, device=boxes.device)
    grouped[group, rank] = weight
    return grouped


def _contract(s: torch.Tensor, group: torch.Tensor, rank: torch.Tensor, weight: torch.Tensor,
              axis: int) -> torch.Tensor:
    """``(N, S_axis)``: ``s`` summed against each box's ``weight`` ``(B·C, slots, P)`` over all spatial
    axes but ``axis`` — one batched matrix product, with no copy of ``s`` when ``axis`` is the first
    or the last spatial axis."""
    groups = weight.shape[0]
    size = s.shape[2 + axis]
    if axis == s.dim() - 3:  # last spatial axis: (G, M, P) @ (G, P, S)
        return torch.bmm(weight, s.reshape(groups, -1, size))[group, rank]
    lines = s.movedim(2 + axis, 2).reshape(groups, size, -1)  # (G, S, P)
    return torch.bmm(lines, weight.transpose(1, 2))[group, :, rank]


def line_sums(s: torch.Tensor, boxes: torch.Tensor, axis: int) -> torch.Tensor:
    """For every box, the sum of ``s`` over each line (2D) or plane (3D) perpendicular to ``axis``,
    restricted to the box's extent on the other axes.

    One batched matrix product of ``s`` with per-box indicator weights ``(B·C, M, P)`` (M = most
    boxes of one image and class, P = the product of the other axes).

    Args:
        s: ``(B, C, *S)`` probabilities.
        boxes: ``(N, 2 + 2·nd)`` long, N ≥ 1.
        axis: spatial axis (0-based).

    Returns:
        ``(N, S_axis)``: ``[n, i]`` is the sum over box n's extent on the other axes at position i of
        ``axis`` (the whole line; restrict to the box along ``axis`` yourself).
    """
    B, C, *spatial = s.shape
    group, rank, slots = _slots(boxes, C)
    others = tuple(a for a in range(len(spatial)) if a != axis)
    weight = _grouped_weights(boxes, group, rank, slots, tuple(spatial), others, B * C, s.dtype)
    return _contract(s, group, rank, weight, axis)


def _barrier_slope(z: torch.Tensor, t: float) -> torch.Tensor:
    """dψ_t/dz of :func:`log_barrier`, elementwise (positive)."""
    threshold = -1.0 / (t * t)
    return torch.where(z <= threshold, -1.0 / (t * z.clamp(max=threshold)), torch.full_like(z, t))


def _band_slacks(lines: list[torch.Tensor], boxes: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slack ``z`` = bound − band sum of every band of every box along every axis, from the boxes'
    line sums (one ``(N, S_a)`` per axis): ``(nd, N, K)`` with K the most bands of any axis, and
    ``valid`` (same shape) false for the padding bands past a box's end. One cumulative sum for all."""
    size = max(l.shape[1] for l in lines)
    stacked = torch.stack([nn.functional.pad(l, (0, size - l.shape[1])) for l in lines])
    cum = nn.functional.pad(stacked.cumsum(2), (1, 0))  # (nd, N, S_max + 1)
    lo, hi = boxes[:, 2::2].T[:, :, None], boxes[:, 3::2].T[:, :, None]  # (nd, N, 1)
    start = lo + torch.arange(math.ceil(size / width), device=boxes.device) * width  # (nd, N, K)
    valid = start < hi
    start = torch.minimum(start, hi)
    stop = torch.minimum(start + width, hi)
    z = (stop - start).to(stacked.dtype) - (cum.gather(2, stop) - cum.gather(2, start))
    return z, valid


class _Tightness2D(torch.autograd.Function):
    """The 2D tightness prior as one autograd node: the forward computes the line sums of every box
    along both axes (one batched product each), the band slacks and the barrier with its slope; the
    backward is a single batched product that spreads each line's slope over the box (the two axes'
    gradients summed inside the product, no full-size addition)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, boxes: torch.Tensor, width: int, t: float, scale: float):
        B, C, H, W = s.shape
        group, rank, slots = _slots(boxes, C)
        cols = _grouped_weights(boxes, group, rank, slots, (H, W), (1,), B * C, s.dtype)  # (G, M, W)
        rows = _grouped_weights(boxes, group, rank, slots, (H, W), (0,), B * C, s.dtype)  # (G, M, H)
        z, valid = _band_slacks([_contract(s, group, rank, cols, 0), _contract(s, group, rank, rows, 1)],
                                boxes, width)
        value = (log_barrier(z, t) * valid).sum() * scale
        # d value / d line sum: minus the slope of the line's band, inside the box along that axis
        slope = _barrier_slope(z, t) * valid * -scale  # (2, N, K)
        pos = torch.arange(z.shape[2] * width, device=s.device)
        lo, hi = boxes[:, 2::2].T[:, :, None], boxes[:, 3::2].T[:, :, None]
        band = ((pos - lo) // width).clamp(0, z.shape[2] - 1)
        line_grad = slope.gather(2, band) * ((pos >= lo) & (pos < hi))  # (2, N, ≥ S_max)
        ctx.save_for_backward(group, rank, cols, rows, line_grad[0, :, :H], line_grad[1, :, :W])
        ctx.shape = s.shape
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group, rank, cols, rows, g_rows, g_cols = ctx.saved_tensors
        G, m = cols.shape[:2]
        H, W = ctx.shape[2:]
        left = torch.zeros(G, H, 2 * m, dtype=cols.dtype, device=cols.device)
        left[group, :, rank] = g_rows * grad
        left[:, :, m:] = rows.transpose(1, 2)
        right = torch.zeros(G, 2 * m, W, dtype=cols.dtype, device=cols.device)
        right[:, :m] = cols
        right[group, m + rank] = g_cols * grad
        return torch.bmm(left, right).reshape(ctx.shape), None, None, None, None


class TightnessPrior(nn.Module):
    """Tightness prior: every band of ``width`` lines (2D) or slab of ``width`` planes (3D) of a box,
    along every spatial axis, holds at least ``width`` foreground pixels (a partial last band of r
    lines: at least r). Loss = ``weight`` · Σ_bands ψ_t(bound − Σ_band s), per image, batch mean.
    """

    def __init__(self, width: int = 5, weight: float = 1e-4) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"band width must be ≥ 1, got {width}")
        self.width, self.weight = int(width), float(weight)

    def forward(self, s: torch.Tensor, boxes: torch.Tensor, t: float) -> torch.Tensor:
        """``s`` ``(B, C, *S)`` probabilities, ``boxes`` ``(N, 2+2·nd)`` long; returns a scalar."""
        nd = _check(s, boxes)
        if boxes.shape[0] == 0:
            return s.sum() * 0.0
        boxes = boxes.to(s.device)
        scale = self.weight / s.shape[0]
        if nd == 2:
            return _Tightness2D.apply(s, boxes, self.width, float(t), scale)
        z, valid = _band_slacks([line_sums(s, boxes, a) for a in range(nd)], boxes, self.width)
        return (log_barrier(z, t) * valid).sum() * scale


class Emptiness(nn.Module):
    """Background emptiness: Σ_{Ω_O} s ≤ 0 per image and class under the barrier, divided by |Ω|
    (as the reference code). Never strictly satisfied, so it acts as the linear penalty
    t·Σ_{Ω_O} s / |Ω|. Summed over classes, batch mean."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, s: torch.Tensor, box_mask: torch.Tensor, t: float) -> torch.Tensor:
        """``box_mask`` ``(B, C, *S)``: 1 inside any box of the class (Ω_I), 0 outside (Ω_O)."""
        _check(s)
        outside = (1 - box_mask.to(s.dtype))
        z = (s * outside).flatten(2).sum(-1)
        return self.weight * log_barrier(z, t).sum() / (s.shape[0] * math.prod(s.shape[2:]))


class MaskedCrossEntropy(nn.Module):
    """Masked cross-entropy on Ω_O: −Σ_{Ω_O} log(1 − s) / |Ω_O| per image and class, batch mean."""

    def __init__(self, weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = float(weight), float(eps)

    def forward(self, s: torch.Tensor, box_mask: torch.Tensor, t: float | None = None) -> torch.Tensor:
        _check(s)
        outside = (1 - box_mask.to(s.dtype)).flatten(2)
        nll = -torch.log((1 - s).clamp_min(self.eps)).flatten(2)
        per = (nll * outside).sum(-1) / outside.sum(-1).clamp_min(1.0)
        return self.weight * per.sum() / s.shape[0]


class BoxSize(nn.Module):
    """Box-size bounds: lower·|Ω_I| ≤ Σ_Ω s ≤ upper·|Ω_I| per image and class, two barriers on the
    sizes in pixels, divided by |Ω| (as the reference code; without it the size term's gradient is
    |Ω| times that of emptiness and the spatial terms have no say).

    |Ω_I| is the number of pixels inside any box of the class; an image with no box of a class
    gets bounds [0, 0] (it is pushed to be empty).
    """

    def __init__(self, lower: float = 0.5, upper: float = 0.9, weight: float = 1.0) -> None:
        super().__init__()
        if not 0 <= lower <= upper <= 1:
            raise ValueError(f"size bounds must satisfy 0 ≤ lower ≤ upper ≤ 1, got {lower}, {upper}")
        self.lower, self.upper, self.weight = float(lower), float(upper), float(weight)

    def forward(self, s: torch.Tensor, box_mask: torch.Tensor, t: float) -> torch.Tensor:
        _check(s)
        area = box_mask.to(s.dtype).flatten(2).sum(-1)
        size = s.flatten(2).sum(-1)
        z = torch.stack([self.lower * area - size, size - self.upper * area])
        return self.weight * log_barrier(z, t).sum() / (s.shape[0] * math.prod(s.shape[2:]))

"""Box constraints under log-barrier extensions (Kervadec et al., MIDL 2020; METHODS.md §1).

All losses take the *foreground* probabilities ``s`` of shape ``(B, C, *S)`` — ``C`` foreground
classes (softmax channel 0, background, removed), ``S`` = ``(H, W)`` in 2D or ``(D, H, W)`` in 3D —
and return a scalar: the per-image value (a sum, unless said) averaged over the batch.

Boxes come as one long tensor ``(N, 2 + 2·nd)``: ``[batch, class, lo_0, hi_0, lo_1, hi_1, …]`` with
half-open voxel bounds per spatial axis. The tightness prior is computed from an integral image
(summed-area table, float64) with one gather per corner for *all* bands of *all* boxes at once:
no Python loop over boxes or bands, no dense per-band masks, no host synchronisation.
"""

from __future__ import annotations

import itertools
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
    inside = z <= threshold
    safe = torch.where(inside, z, torch.full_like(z, threshold))
    return torch.where(inside, -torch.log(-safe) / t, t * z - math.log(1.0 / (t * t)) / t + 1.0 / t)


class LogBarrier(nn.Module):
    """Module form of :func:`log_barrier`; ``t`` is passed per call (one t shared by all constraints)."""

    def forward(self, z: torch.Tensor, t: float) -> torch.Tensor:
        return log_barrier(z, t)


def _check(s: torch.Tensor, boxes: torch.Tensor | None = None) -> int:
    if s.dim() not in (4, 5):
        raise ValueError(f"probabilities must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(s.shape)}")
    nd = s.dim() - 2
    if boxes is not None and (boxes.dim() != 2 or boxes.shape[1] != 2 + 2 * nd):
        raise ValueError(f"boxes must be (N, {2 + 2 * nd}) [batch, class, lo/hi per axis] for {nd}D input, "
                         f"got shape {tuple(boxes.shape)}")
    return nd


def integral_image(s: torch.Tensor) -> torch.Tensor:
    """Summed-area table of ``s`` ``(B, C, *S)`` in float64, zero-padded in front: ``(B, C, *(S+1))``.

    ``I[..., i, j] = Σ_{p<i, q<j} s[..., p, q]``.
    """
    x = s.double()
    for d in range(2, x.dim()):
        x = x.cumsum(d)
    return nn.functional.pad(x, (1, 0) * (s.dim() - 2))


def region_sums(integral: torch.Tensor, batch: torch.Tensor, cls: torch.Tensor,
                lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sums of the original array over boxes ``[lo, hi)`` from its integral image.

    Args:
        integral: output of :func:`integral_image`, ``(B, C, *(S+1))``.
        batch, cls: ``(M,)`` long indices of image and class.
        lo, hi: ``(M, nd)`` long half-open bounds.

    Returns:
        ``(M,)`` float64 sums (2^nd gathers; inclusion–exclusion).
    """
    nd = lo.shape[1]
    total = torch.zeros(lo.shape[0], dtype=integral.dtype, device=integral.device)
    for corner in itertools.product((0, 1), repeat=nd):
        index = [hi[:, k] if c else lo[:, k] for k, c in enumerate(corner)]
        sign = -1.0 if (nd - sum(corner)) % 2 else 1.0
        total = total + sign * integral[(batch, cls, *index)]
    return total


def tightness_bands(boxes: torch.Tensor, spatial: tuple[int, ...], width: int):
    """All bands of all boxes along every spatial axis.

    Band k of a box along axis d covers ``[lo_d + k·w, min(lo_d + (k+1)·w, hi_d))`` on axis d and the
    whole box on the other axes; the last band may be partial (r < w lines, bound r). The number of
    bands per box is padded to ``ceil(S_d / w)`` (known from the image size: no host sync) and the
    padding marked invalid.

    Returns:
        ``batch, cls`` ``(M,)``, ``lo, hi`` ``(M, nd)``, ``bound`` ``(M,)`` (lines in the band, 0 for
        padding) and ``valid`` ``(M,)`` bool.
    """
    nd = len(spatial)
    b, c = boxes[:, 0], boxes[:, 1]
    blo, bhi = boxes[:, 2::2], boxes[:, 3::2]
    out = []
    for d in range(nd):
        kmax = math.ceil(spatial[d] / width)
        k = torch.arange(kmax, device=boxes.device)
        lo = blo[:, None, :].expand(-1, kmax, -1).clone()
        hi = bhi[:, None, :].expand(-1, kmax, -1).clone()
        start = blo[:, None, d] + k[None, :] * width
        stop = torch.minimum(start + width, bhi[:, None, d])
        valid = start < bhi[:, None, d]
        start = torch.where(valid, start, bhi[:, None, d])
        stop = torch.where(valid, stop, bhi[:, None, d])
        lo[..., d], hi[..., d] = start, stop
        out.append((b[:, None].expand(-1, kmax), c[:, None].expand(-1, kmax), lo, hi, stop - start, valid))
    cat = [torch.cat([o[i].reshape(-1, *o[i].shape[2:]) for o in out]) for i in range(6)]
    return cat[0], cat[1], cat[2], cat[3], cat[4], cat[5]


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
        _check(s, boxes)
        if boxes.shape[0] == 0:
            return s.sum() * 0.0
        boxes = boxes.to(s.device)
        batch, cls, lo, hi, bound, valid = tightness_bands(boxes, tuple(s.shape[2:]), self.width)
        sums = region_sums(integral_image(s), batch, cls, lo, hi).to(s.dtype)
        z = bound.to(s.dtype) - sums
        penalty = torch.where(valid, log_barrier(z, t), torch.zeros_like(z))
        return self.weight * penalty.sum() / s.shape[0]


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

"""Multiple-instance learning from boxes (Wang & Xia, MICCAI 2021 and 2022; docs/methods.md §8).

A box says: every line that crosses a tight box from one side to the opposite side holds at least
one pixel of its object (a *positive bag*), and no pixel outside the boxes of a class belongs to it
(each such pixel is a *negative bag*). For a loose box the parallel lines near its sides may miss the
object; the *polar* bags — rays from a point inside the object out to the box's sides — stay
correct, as every ray starts in the object.

All losses take the foreground probabilities ``s`` ``(B, C, H, W)`` (2D only: the bags are lines in
a slice) and boxes ``(N, 6)`` long ``[batch, class, y0, y1, x0, x1]`` with half-open pixel bounds.
Bags are built as index tensors into ``s`` flattened — ``((b·C + c)·H + y)·W + x`` — for every box,
angle and line at once; a bag's probability is a smooth maximum over its pixels (α-softmax or
α-quasimax). No Python loop over boxes, angles or lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from WeakSegLib.registry.mil import POLAR_CENTRES, SMOOTH_MAXIMA

#: probabilities are clamped to [EPS, 1 − EPS] before logarithms
EPS = 1e-6


@dataclass
class Bags:
    """Positive bags of equal padded length L.

    Attributes:
        index: ``(M, L)`` long indices into ``s.flatten()``; padding entries hold any valid index.
        valid: ``(M, L)`` bool, False on padding.
        cls: ``(M,)`` long class of each bag.
        weight: ``(L,)`` factor of the probability at each position before the smooth maximum, or
            None (polar bags: samples far from the centre count less).
    """

    index: torch.Tensor
    valid: torch.Tensor
    cls: torch.Tensor
    weight: torch.Tensor | None = None

    def keep(self) -> "Bags":
        """Only the bags with at least one pixel."""
        rows = self.valid.any(1)
        return Bags(self.index[rows], self.valid[rows], self.cls[rows], self.weight)


def _plane_start(boxes: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(N,)`` flat index into ``s`` ``(B, C, H, W)`` of pixel (0, 0) of each box's image and class."""
    _, C, H, W = shape
    return (boxes[:, 0] * C + boxes[:, 1]) * (H * W)


def _flat(boxes: torch.Tensor, shape: tuple[int, ...], y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Flat indices into ``s`` ``(B, C, H, W)`` of pixels ``(y, x)`` of each box's image and class
    (``y``, ``x`` broadcast against ``(N, 1, …)``), clamped into the image for padding entries."""
    H, W = shape[2:]
    start = _plane_start(boxes, shape).view(-1, *(1,) * (y.dim() - 1))
    return start + y.clamp(0, H - 1) * W + x.clamp(0, W - 1)


def angles_of(spec: tuple[float, float, float]) -> tuple[float, ...]:
    """Angles in degrees from ``(first, last, step)``, the last included when the steps reach it
    (``(-40, 40, 20)`` → −40, −20, 0, 20, 40); step 0 gives ``(first,)``."""
    first, last, step = (float(v) for v in spec)
    count = 1 if step == 0 else math.floor((last - first) / step + 1e-9) + 1
    return tuple(first + i * step for i in range(count))


def parallel_bags(boxes: torch.Tensor, shape: tuple[int, ...], angles: tuple[float, ...]) -> list[Bags]:
    """The crossing lines of every box at every angle, one :class:`Bags` per family (generalised MIL).

    A line at angle θ (degrees, from the box's side it leaves) runs from the top side to the bottom
    side (family 0: one pixel per row, its column shifted by round(j·tan θ) at row j of the box) or
    from the left side to the right side (family 1: one pixel per column). Parallel lines start at
    every position whose line stays inside the box: ``extent − |round((length − 1)·tan θ)|`` lines per
    family and angle; θ = 0 gives the box's columns and rows. Only the lines that exist are built
    (one row each, padded to the longest box side).

    Args:
        boxes: ``(N, 6)`` long ``[batch, class, y0, y1, x0, x1]`` (half-open pixel bounds).
        shape: ``s.shape`` ``(B, C, H, W)``.
        angles: angles in degrees, each in (−90, 90).
    """
    W = shape[3]
    device = boxes.device
    slope = torch.tan(torch.deg2rad(torch.tensor(angles, dtype=torch.float64, device=device)))  # (A,)
    base = _plane_start(boxes, shape)
    out = []
    for along, across, step_a, step_c in ((2, 4, W, 1), (4, 2, 1, W)):  # family 0: lines along y
        lo_a, n_a = boxes[:, along], boxes[:, along + 1] - boxes[:, along]
        lo_c, n_c = boxes[:, across], boxes[:, across + 1] - boxes[:, across]
        j = torch.arange(int(n_a.max()), device=device)  # position along a line (L,)
        # (A, L): offset of position j of a line at each angle from the line's first pixel
        offset = j * step_a + torch.round(j * slope[:, None]).long() * step_c
        end = torch.round((n_a[:, None] - 1) * slope).long()  # (N, A): the shift at the last pixel
        lines = n_c[:, None] - end.abs()  # (N, A) parallel lines that fit
        k = torch.arange(max(int(lines.max()), 0), device=device)
        n, a, line = (k < lines[..., None]).nonzero(as_tuple=True)  # one row per existing line (M,)
        first = base[n] + lo_a[n] * step_a + (lo_c[n] + line - end[n, a].clamp(max=0)) * step_c
        index = first[:, None] + offset[a]  # (M, L); past the line's end: padding
        out.append(Bags(index.clamp(0, math.prod(shape) - 1), j < n_a[n, None], boxes[n, 1]))
    return out


def estimated_centres(s: torch.Tensor, boxes: torch.Tensor, mode: str = "estimated") -> torch.Tensor:
    """Where each box's rays start: ``(N, 2)`` float (y, x) pixel positions.

    ``"box"``: the box's centre pixel. ``"estimated"``: the box pixel of highest probability (the
    network's most confident object pixel; ties, e.g. saturated probabilities, go to the one nearest
    the box's centre). No gradient flows through the choice.
    """
    if mode not in POLAR_CENTRES:
        raise ValueError(f"polar centre must be one of {POLAR_CENTRES}, got {mode!r}")
    centre = torch.stack([(boxes[:, 2] + boxes[:, 3] - 1) // 2, (boxes[:, 4] + boxes[:, 5] - 1) // 2], 1)
    if mode == "box":
        return centre.to(s.dtype)
    _, _, H, W = s.shape
    yy = torch.arange(H, device=s.device)[None, :, None]
    xx = torch.arange(W, device=s.device)[None, None, :]
    inside = ((yy >= boxes[:, 2, None, None]) & (yy < boxes[:, 3, None, None])
              & (xx >= boxes[:, 4, None, None]) & (xx < boxes[:, 5, None, None]))  # (N, H, W)
    p = s.detach()[boxes[:, 0], boxes[:, 1]].masked_fill(~inside, -1.0)  # (N, H, W)
    top = p.flatten(1).amax(1)[:, None, None]
    dist = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    best = dist.masked_fill(p < top - EPS, H * H + W * W).flatten(1).argmin(1)
    return torch.stack([best // W, best % W], 1).to(s.dtype)


def polar_bags(boxes: torch.Tensor, shape: tuple[int, ...], centres: torch.Tensor, rays: int, radii: int,
               weight_min: float) -> Bags:
    """The rays of every box from its centre out to its sides (polar MIL).

    ``rays`` directions evenly spaced over 360°, each sampled at ``radii`` points from the centre
    (radius 0) to the distance of the box corner farthest from it (nearest pixel); the samples
    inside the box form the bag. Sample i is weighted exp(−i² / 2σ²) with σ chosen so that the last
    sample weighs ``weight_min``: pixels near the centre, more likely the object's, count more.

    Args:
        boxes: ``(N, 6)`` long ``[batch, class, y0, y1, x0, x1]``.
        shape: ``s.shape`` ``(B, C, H, W)``.
        centres: ``(N, 2)`` (y, x) inside each box (:func:`estimated_centres`).
        rays, radii: directions and samples per ray (≥ 1 and ≥ 2).
        weight_min: the weight of the outermost sample, in (0, 1].
    """
    device, dtype = centres.device, centres.dtype
    phi = torch.arange(rays, device=device, dtype=dtype) * (2 * math.pi / rays)
    rho = torch.arange(radii, device=device, dtype=dtype) / (radii - 1)
    lo = boxes[:, [2, 4]].to(dtype)
    hi = boxes[:, [3, 5]].to(dtype) - 1
    far = torch.maximum(centres - lo, hi - centres).norm(dim=1)  # (N,)
    r = far[:, None, None] * rho  # (N, 1, S)
    y = torch.round(centres[:, 0, None, None] + r * torch.sin(phi)[None, :, None]).long()  # (N, R, S)
    x = torch.round(centres[:, 1, None, None] + r * torch.cos(phi)[None, :, None]).long()
    ok = ((y >= boxes[:, 2, None, None]) & (y < boxes[:, 3, None, None])
          & (x >= boxes[:, 4, None, None]) & (x < boxes[:, 5, None, None]))
    i = torch.arange(radii, device=device, dtype=dtype)
    weight = torch.exp(i ** 2 * (math.log(weight_min) / (radii - 1) ** 2))  # exp(-i²/2σ²)
    cls = boxes[:, 1, None].expand(-1, rays).flatten()
    return Bags(_flat(boxes, shape, y, x).flatten(0, 1), ok.flatten(0, 1), cls, weight).keep()


def smooth_max(values: torch.Tensor, valid: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
    """Smooth maximum over the last axis of ``values`` where ``valid`` (each row has a valid entry).

    ``softmax``: Σ v·e^{αv} / Σ e^{αv}; ``quasimax``: (log Σ e^{αv} − log n) / α ≤ max v. Both tend to
    the maximum as α grows; small α tends to the mean.
    """
    if kind not in SMOOTH_MAXIMA:
        raise ValueError(f"smooth maximum must be one of {SMOOTH_MAXIMA}, got {kind!r}")
    scaled = (alpha * values).masked_fill(~valid, -math.inf)
    if kind == "softmax":
        return (torch.softmax(scaled, -1) * values.masked_fill(~valid, 0.0)).sum(-1)
    return (torch.logsumexp(scaled, -1) - torch.log(valid.sum(-1).to(values.dtype))) / alpha


class MILUnary(nn.Module):
    """The focal unary loss of bag probabilities (Wang & Xia 2021, eq. 5), summed over classes:

    φ_c = −(1/N⁺_c) [Σ_{b ∈ B⁺_c} β (1 − P_b)^γ log P_b + Σ_{k outside the boxes of c} (1 − β) p_k^γ log(1 − p_k)]

    with P_b the smooth maximum of positive bag b, N⁺_c = max(1, |B⁺_c|) over the whole batch, and
    every pixel outside the class's boxes (not padding) a negative bag of its own.

    Args:
        bags: which positive bags: ``("parallel", angles)`` and/or ``("polar", (rays, radii, weight_min,
            centre))``, each with its own α.
        kind: smooth maximum (:data:`SMOOTH_MAXIMA`).
        focal: (β, γ).
    """

    def __init__(self, bags: list[tuple[str, tuple, float]], kind: str = "quasimax",
                 focal: tuple[float, float] = (0.25, 2.0)) -> None:
        super().__init__()
        unknown = {family for family, _, _ in bags} - {"parallel", "polar"}
        if unknown or kind not in SMOOTH_MAXIMA:
            raise ValueError(f"unknown bag family {sorted(unknown)} or smooth maximum {kind!r}")
        self.bags, self.kind, self.focal = bags, kind, tuple(float(v) for v in focal)

    def positive_bags(self, s: torch.Tensor, boxes: torch.Tensor) -> list[tuple[Bags, float]]:
        """Every family's bags with its α."""
        out = []
        for family, settings, alpha in self.bags:
            if family == "parallel":
                out.extend((bags, alpha) for bags in parallel_bags(boxes, tuple(s.shape), settings))
            else:
                rays, radii, weight_min, centre = settings
                centres = estimated_centres(s, boxes, centre)
                out.append((polar_bags(boxes, tuple(s.shape), centres, rays, radii, weight_min), alpha))
        return out

    def forward(self, s: torch.Tensor, boxes: torch.Tensor, box_mask: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """``box_mask`` ``(B, C, H, W)`` 1 inside any box of the class; ``valid`` ``(B, H, W)`` False on
        padding."""
        if s.dim() != 4:
            raise ValueError(f"MIL bags are lines in slices: probabilities must be (B, C, H, W), got {tuple(s.shape)}")
        beta, gamma = self.focal
        C = s.shape[1]
        p = s.clamp(EPS, 1 - EPS)
        negative = (box_mask == 0) & valid[:, None]
        neg = -((1 - beta) * p ** gamma * torch.log1p(-p) * negative).sum((0, 2, 3))  # (C,)
        pos = torch.zeros(C, dtype=s.dtype, device=s.device)
        count = torch.zeros(C, dtype=s.dtype, device=s.device)
        if boxes.shape[0]:
            flat = p.flatten()
            for bags, alpha in self.positive_bags(p, boxes):
                values = flat[bags.index] if bags.weight is None else flat[bags.index] * bags.weight
                bag_p = smooth_max(values, bags.valid, alpha, self.kind).clamp(EPS, 1 - EPS)
                pos = pos.index_add(0, bags.cls, -beta * (1 - bag_p) ** gamma * torch.log(bag_p))
                count = count.index_add(0, bags.cls, torch.ones_like(bag_p))
        return ((pos + neg) / count.clamp_min(1)).sum()


class PairwiseSmoothness(nn.Module):
    """Piecewise smoothness inside the boxes (Wang & Xia 2021, eq. 3), summed over classes:
    (1/8) Σ over the 8 neighbour offsets o of Σ_k m_k (s_k − s_{k+o})² / Σ_k m_k, with m the class's
    box mask; pairs leaving the image are left out."""

    def forward(self, s: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        m = box_mask.to(s.dtype)
        H, W = s.shape[2:]
        total = torch.zeros(s.shape[1], dtype=s.dtype, device=s.device)
        # each unordered neighbour pair once; an ordered pair counts where its first pixel is boxed
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a = (..., slice(0, H - dy), slice(max(0, -dx), W - max(0, dx)))
            b = (..., slice(dy, None), slice(max(0, dx), W + min(0, dx)))
            total = total + ((s[a] - s[b]) ** 2 * (m[a] + m[b])).sum((0, 2, 3))
        return (total / (8 * m.sum((0, 2, 3)).clamp_min(1))).sum()

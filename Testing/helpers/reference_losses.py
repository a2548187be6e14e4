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


# ---- multiple-instance learning (docs/methods.md §8): one loop per box, angle, line and pixel --------
def ref_parallel_bags(boxes, angles):
    """Each crossing line of each box as ``(class, [(b, c, y, x), …])``, walked pixel by pixel."""
    bags = []
    for b, c, y0, y1, x0, x1 in boxes.tolist():
        for angle in angles:
            slope = math.tan(math.radians(angle))
            for vertical in (True, False):
                length, extent = (y1 - y0, x1 - x0) if vertical else (x1 - x0, y1 - y0)
                end = round((length - 1) * slope)
                for start in range(extent - abs(end)):
                    line = []
                    for j in range(length):
                        across = start - min(0, end) + round(j * slope)
                        y, x = (y0 + j, x0 + across) if vertical else (y0 + across, x0 + j)
                        assert y0 <= y < y1 and x0 <= x < x1
                        line.append((b, c, y, x))
                    bags.append((c, line))
    return bags


def ref_centre(s, box, mode):
    """The box's most likely pixel (ties: nearest the box centre, then first in row order) or its centre."""
    b, c, y0, y1, x0, x1 = box
    cy, cx = (y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2
    if mode == "box":
        return cy, cx
    p = s.detach()
    top = max(float(p[b, c, y, x]) for y in range(y0, y1) for x in range(x0, x1))
    ties = [(y, x) for y in range(y0, y1) for x in range(x0, x1) if float(p[b, c, y, x]) >= top - 1e-6]
    return min(ties, key=lambda p: (p[0] - cy) ** 2 + (p[1] - cx) ** 2)


def ref_polar_bags(s, boxes, rays, radii, weight_min, mode):
    """Each ray of each box as ``(class, [(b, c, y, x, weight), …])``, sample by sample."""
    bags = []
    sigma2 = (radii - 1) ** 2 / (-2 * math.log(weight_min))
    for box in boxes.tolist():
        b, c, y0, y1, x0, x1 = box
        cy, cx = ref_centre(s, box, mode)
        far = math.hypot(max(cy - y0, y1 - 1 - cy), max(cx - x0, x1 - 1 - cx))
        for r in range(rays):
            phi = r * (2 * math.pi / rays)
            ray = []
            for i in range(radii):
                y = round(cy + far * (i / (radii - 1)) * math.sin(phi))
                x = round(cx + far * (i / (radii - 1)) * math.cos(phi))
                if y0 <= y < y1 and x0 <= x < x1:
                    ray.append((b, c, y, x, math.exp(-i * i / (2 * sigma2))))
            bags.append((c, ray))
    return bags


def ref_smooth_max(values, alpha, kind):
    """α-softmax or α-quasimax of a list of scalar tensors, term by term."""
    exps = [torch.exp(alpha * v) for v in values]
    if kind == "softmax":
        return sum(v * e for v, e in zip(values, exps)) / sum(exps)
    return (torch.log(sum(exps)) - math.log(len(values))) / alpha


def ref_mil_unary(s, boxes, box_mask, valid, bag_sets, kind, beta=0.25, gamma=2.0, eps=1e-6):
    """Focal MIL unary loss: ``bag_sets`` is a list of ``(bags, alpha)`` (bags from the functions
    above); every valid pixel outside the class's boxes is a negative bag."""
    p = s.clamp(eps, 1 - eps)
    B, C, H, W = s.shape
    total = 0.0
    for cls in range(C):
        pos, count = 0.0, 0
        for bags, alpha in bag_sets:
            for c, bag in bags:
                if c != cls or not bag:
                    continue
                values = [p[q[0], q[1], q[2], q[3]] * (q[4] if len(q) > 4 else 1.0) for q in bag]
                bag_p = ref_smooth_max(values, alpha, kind).clamp(eps, 1 - eps)
                pos = pos - beta * (1 - bag_p) ** gamma * torch.log(bag_p)
                count += 1
        neg = 0.0
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    if valid[b, y, x] and box_mask[b, cls, y, x] == 0:
                        neg = neg - (1 - beta) * p[b, cls, y, x] ** gamma * torch.log(1 - p[b, cls, y, x])
        total = total + (pos + neg) / max(1, count)
    return total


def ref_pairwise(s, box_mask):
    """Mean over the 8 neighbour offsets of Σ m_k (s_k − s_k')² / Σ m_k per class, pairs inside the image."""
    B, C, H, W = s.shape
    total = 0.0
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for c in range(C):
        acc = 0.0
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    if box_mask[b, c, y, x] == 0:
                        continue
                    for dy, dx in offsets:
                        if 0 <= y + dy < H and 0 <= x + dx < W:
                            acc = acc + (s[b, c, y, x] - s[b, c, y + dy, x + dx]) ** 2
        total = total + acc / (8 * max(1.0, float(box_mask[:, c].sum())))
    return total

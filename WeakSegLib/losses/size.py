"""Learning from object sizes (Baručić & Kybic; docs/methods.md §3): the size of every one-pixel flip of a
mask, and the single-sample gradient estimator of the expected size loss.

The network's foreground probability p_i of class c is read as P(y_i = 1) of a random mask
y = [a − Z > 0] with logistic noise Z (a = the logit of p). The loss of a mask is
l(y) = (s − g(y))², with s the labelled size and g(y) = 2·max d(y) (:func:`WeakSegLib.losses.distance.object_size`,
pixels). Because the pixels of y are independent,

    ∂E[l] / ∂p_i = E[l(y | y_i = 1) − l(y | y_i = 0)],

and one drawn mask y gives the unbiased estimate y_i·(l(y) − l(y with pixel i flipped)) in ±1 notation.
:class:`SizeLoss` draws ``samples`` masks, forms that estimate for every pixel and returns the
surrogate Σ_i ĝ_i·p_i (ĝ detached), whose gradient with respect to p is the estimate.

The flipped sizes are exact and need no distance transform per flip (:func:`flipped_sizes`): with d
the distance of the drawn mask (the image border as background) and D = max d,

- removing object pixel i sets d'_j = min(d_j, ‖j − i‖∞), so max d' is the largest k ≤ D for which
  the pixels with d ≥ k reach ‖j − i‖∞ ≥ k — read off the bounding box of {d ≥ k};
- adding background pixel i leaves max d' ≥ D, and max d' ≥ k > D exactly when some pixel j has i as
  the only background pixel of its (2k − 1)-square (then i was its one obstacle): integral images of
  the background count and of its row/column sums give, per level, every such j and its i.

Only pixels that can change g get a value other than g: object pixels near the deepest ones, and
background pixels that are the only obstacle of some square (the object's border and holes; on an
empty mask, every pixel). Each level costs a few whole-batch tensor operations.
"""

from __future__ import annotations

import torch
from torch import nn

from WeakSegLib.errors import InputError
from WeakSegLib.losses.distance import chebyshev_distance


def _first_true(x: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last axis of ``x`` (0 when none)."""
    return x.int().argmax(-1)


def _removal_depth(fg: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """max d' after removing each object pixel (0 elsewhere), ``(B, H, W)`` long."""
    b, h, w = fg.shape
    rows = torch.arange(h, device=fg.device).view(1, h, 1)
    cols = torch.arange(w, device=fg.device).view(1, 1, w)
    out = torch.zeros(fg.shape, dtype=torch.long, device=fg.device)
    pending = fg.clone()
    for k in range(int(d.max()), 0, -1):
        level = d >= k
        rows_any, cols_any = level.any(2), level.any(1)
        r0 = _first_true(rows_any).view(b, 1, 1)
        r1 = (h - 1 - _first_true(rows_any.flip(1))).view(b, 1, 1)
        c0 = _first_true(cols_any).view(b, 1, 1)
        c1 = (w - 1 - _first_true(cols_any.flip(1))).view(b, 1, 1)
        far = torch.maximum(torch.maximum(rows - r0, r1 - rows), torch.maximum(cols - c0, c1 - cols))
        hit = pending & (far >= k) & rows_any.any(1).view(b, 1, 1)
        out = torch.where(hit, k, out)
        pending &= ~hit
        if not bool(pending.any()):
            break
    return out


def _window_sums(integral: torch.Tensor, radius: int) -> torch.Tensor:
    """Sums over the (2r+1)-squares centred on the pixels whose square lies inside the image.

    ``integral`` ``(B, H + 1, W + 1)`` (zero first row and column) → ``(B, H − 2r, W − 2r)``.
    """
    n = 2 * radius + 1
    return integral[:, n:, n:] - integral[:, :-n, n:] - integral[:, n:, :-n] + integral[:, :-n, :-n]


def _addition_depth(fg: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """max d' after adding each background pixel to the object, ``(B, H, W)`` long (valid on the
    background). ``depth`` ``(B,)`` is D = max d per image."""
    b, h, w = fg.shape
    bg = (~fg).long()
    rows = torch.arange(h, device=fg.device).view(1, h, 1)
    cols = torch.arange(w, device=fg.device).view(1, 1, w)

    def integral(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x.cumsum(1).cumsum(2), (1, 0, 1, 0))

    count, row_sum, col_sum = integral(bg), integral(bg * rows), integral(bg * cols)
    out = depth.view(b, 1, 1).expand(b, h, w).clone()
    k = int(depth.min()) + 1
    while 2 * k - 1 <= min(h, w):
        radius = k - 1
        only = (_window_sums(count, radius) == 1) & (k > depth).view(b, 1, 1)
        if not bool(only.any()) and k > int(depth.max()):
            break  # no square holds a single obstacle now, nor at any larger k
        img, _, _ = only.nonzero(as_tuple=True)
        r = _window_sums(row_sum, radius)[only]
        c = _window_sums(col_sum, radius)[only]
        out[img, r, c] = k
        k += 1
    return out


def flipped_sizes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Object size g of ``mask``, and of ``mask`` with each single pixel flipped (module docstring).

    Args:
        mask: ``(B, H, W)`` bool or integer, non-zero = object; any device.

    Returns:
        ``(g, g_flipped)``: ``(B,)`` and ``(B, H, W)`` long, sizes in pixels with the image border as
        background; entry (b, i, j) of ``g_flipped`` is g of image b with pixel (i, j) flipped.
    """
    if mask.ndim != 3:
        raise InputError(f"flipped_sizes takes masks (B, H, W), got shape {tuple(mask.shape)}")
    fg = mask != 0
    if fg.numel() == 0:
        return (torch.zeros(fg.shape[0], dtype=torch.long, device=fg.device),
                torch.zeros(fg.shape, dtype=torch.long, device=fg.device))
    d = chebyshev_distance(fg, border_is_background=True)
    depth = d.flatten(1).amax(1).long()
    return 2 * depth, 2 * torch.where(fg, _removal_depth(fg, d), _addition_depth(fg, depth))


class SizeLoss(nn.Module):
    """Expected size loss E[(s − g(y))²] of docs/methods.md §3 through its single-sample gradient estimate.

    ``forward(probs, sizes, allowed)``:

    - ``probs`` ``(B, C, H, W)`` foreground probabilities (softmax without the background channel);
    - ``sizes`` ``(B, C)`` labelled sizes in pixels, < 0 where a class has no size label;
    - ``allowed`` ``(B, C, H, W)`` or ``(B, 1, H, W)`` bool: where a drawn mask may have object pixels
      (False on padding and, on slices with boxes, outside the class's boxes); the rest is background.

    Returns ``(surrogate, abs_error)``: the surrogate mean over labelled (image, class) pairs of
    Σ_i ĝ_i·p_i / (H·W) (its gradient is the estimate; its value means nothing), and the detached mean
    |s − g(y)| of the drawn masks in pixels, for logs. With no labelled pair both are 0.
    ``samples`` masks per image are drawn (from the global torch RNG) and their estimates averaged.
    """

    def __init__(self, samples: int = 1) -> None:
        super().__init__()
        if samples < 1:
            raise InputError(f"size samples must be ≥ 1, got {samples}")
        self.samples = samples

    def forward(self, probs: torch.Tensor, sizes: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labelled = sizes >= 0
        if not bool(labelled.any()):
            zero = probs.sum() * 0.0
            return zero, zero.detach()
        p = probs[labelled]
        s = sizes[labelled].float().repeat(self.samples)
        keep = allowed.expand_as(probs)[labelled].repeat(self.samples, 1, 1)
        drawn = (torch.rand(keep.shape, device=p.device) < p.detach().repeat(self.samples, 1, 1)) & keep
        g, g_flip = (v.float() for v in flipped_sizes(drawn))
        loss = (s - g) ** 2
        loss_flip = (s.view(-1, 1, 1) - g_flip) ** 2
        change = torch.where(drawn, loss.view(-1, 1, 1) - loss_flip, loss_flip - loss.view(-1, 1, 1))
        grad = (change * keep).view(self.samples, *p.shape).mean(0)
        surrogate = (grad * p).flatten(1).sum(1).mean() / (p.shape[1] * p.shape[2])
        return surrogate, (s - g).abs().mean()

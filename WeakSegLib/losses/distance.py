"""Batched Chebyshev (L∞, chessboard) distance transform in torch, and the object size built on it
(docs/methods.md §3).

:func:`chebyshev_distance` is Rosenfeld and Pfaltz's two raster passes with the 3×3 mask, exact for
the chessboard metric. Each pass walks the rows (top-down, then bottom-up) and is vectorised over
the batch and the columns: the three neighbours of the previous row enter with one shifted
minimum, and the left (right) neighbour of the same row, which the sequential algorithm reads
after updating it, is folded in by a running minimum: d[j] = min_{k ≤ j}(e[k] + j − k) =
j + cummin(e − index)[j]. Runs on the tensor's device (CPU or CUDA).

Conventions (those of ``scipy.ndimage.distance_transform_cdt(metric="chessboard")`` unless
``border_is_background``):
    - background pixels get 0; a foreground pixel the distance to the nearest background pixel, so
      a pixel touching the background (also diagonally) gets 1;
    - outside the image is *not* background: an object touching the border is measured to the
      background inside the image only, and an image without any background pixel gets −1
      everywhere (as SciPy);
    - ``border_is_background=True`` treats the ring of pixels just outside the image as background
      (the object ends at the image border), so every pixel gets a finite distance.

Object size (:func:`object_size`) g = 2·max d with the border as background: a square of side w
has g = w for even w and w + 1 for odd w (the centre pixel of an odd width is ⌈w/2⌉ from the
background on both sides); an empty mask has g = 0.
"""

from __future__ import annotations

import torch

from WeakSegLib.errors import InputError


def _check(mask: torch.Tensor) -> torch.Tensor:
    if mask.ndim != 3:
        raise InputError(f"distance transform takes masks (B, H, W), got shape {tuple(mask.shape)}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise InputError(f"distance transform takes a bool or integer mask, got {mask.dtype}")
    return mask != 0


def _sweep(d: torch.Tensor, rows: range, step: int, big: int) -> None:
    """One raster pass over ``d`` (B, H, W + 2, int32, with a column of ``big`` on each side), in place."""
    width = d.shape[2] - 2
    idx = torch.arange(width, device=d.device, dtype=d.dtype)
    for i in rows:
        cur = d[:, i, 1:-1]
        if 0 <= i - step < d.shape[1]:
            prev = d[:, i - step]
            near = torch.minimum(torch.minimum(prev[:, :-2], prev[:, 1:-1]), prev[:, 2:]) + 1
            cur = torch.minimum(cur, near)
        if step > 0:  # left neighbour: left-to-right running minimum
            cur = torch.cummin(cur - idx, 1).values + idx
        else:  # right neighbour: right-to-left
            cur = torch.cummin((cur + idx).flip(1), 1).values.flip(1) - idx
        d[:, i, 1:-1] = cur


def chebyshev_distance(mask: torch.Tensor, *, border_is_background: bool = False) -> torch.Tensor:
    """Chessboard distance of every foreground pixel to the background.

    Args:
        mask: ``(B, H, W)`` bool or integer (non-zero = foreground), any device.
        border_is_background: see the module docstring.

    Returns:
        ``(B, H, W)`` int32 distances in pixels (0 on the background; −1 for images without
        background unless ``border_is_background``).
    """
    fg = _check(mask)
    if border_is_background:
        fg = torch.nn.functional.pad(fg, (1, 1, 1, 1), value=False)
    b, h, w = fg.shape
    big = h + w + 2
    d = torch.full((b, h, w + 2), big, dtype=torch.int32, device=fg.device)
    d[:, :, 1:-1] = torch.where(fg, big, 0)
    _sweep(d, range(h), 1, big)
    _sweep(d, range(h - 1, -1, -1), -1, big)
    out = d[:, :, 1:-1]
    if border_is_background:
        return out[:, 1:-1, 1:-1].contiguous()
    return torch.where(out >= big, -1, out).contiguous()


def object_size(mask: torch.Tensor) -> torch.Tensor:
    """g = 2·max Chebyshev distance of each mask ``(B, H, W)`` → ``(B,)`` int32 (module docstring)."""
    d = chebyshev_distance(mask, border_is_background=True)
    return 2 * d.flatten(1).amax(1) if d.numel() else torch.zeros(d.shape[0], dtype=torch.int32)

"""Square patches on a grid of cells inside 2D boxes, for the box tightener (docs/methods.md §2).

A box ``[lo, hi)`` on one slice is divided into cells of ``stride`` × ``stride`` pixels starting at
its corner (the last row and column of cells are cut by the box). Each cell has one patch: the
``patch`` × ``patch`` window centred on the cell's centre. With ``stride = patch / 2`` (training)
these windows tile the box with half-overlap, as in the paper; a smaller stride (use time) gives a
denser grid and so finer box edges. Windows take their pixels from the image itself, also beyond
the box (the surroundings are real context, the same in training and use); outside the volume they
are padded with ``pad_value``. The classifier may see ``context`` more pixels on every side of
each window (the label stays that of the window itself).

A patch is labelled 1 when the object covers more than half of its pixels.

Units: all sizes and coordinates are voxels of the slice, in array order (rows, columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from WeakSegLib.config import check_patch_geometry
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box

#: a 2D box on one slice, ``(r0, r1, c0, c1)`` half-open (rows, columns)
Extent = tuple[int, int, int, int]


@dataclass
class PatchGrid:
    """Cells and windows of one 2D box.

    Attributes:
        cells: ``(N, 4)`` int ``[r0, r1, c0, c1]`` half-open cell bounds, inside the box.
        corners: ``(N, 2)`` int top-left corner (row, column) of each patch window; may be negative
            or beyond the slice (padded there).
        patch: window side in pixels.
        shape: (rows, columns) of the cell grid; cells are listed row by row.
    """

    cells: np.ndarray
    corners: np.ndarray
    patch: int
    shape: tuple[int, int]


def patch_grid(box: tuple[int, int, int, int], patch: int, stride: int) -> PatchGrid:
    """The cell grid of the 2D box ``(r0, r1, c0, c1)`` (half-open) and each cell's patch window."""
    check_patch_geometry(patch, stride)
    r0, r1, c0, c1 = (int(v) for v in box)
    if r1 <= r0 or c1 <= c0:
        raise InputError(f"empty 2D box {box}")
    rows = np.arange(r0, r1, stride)
    cols = np.arange(c0, c1, stride)
    rr, cc = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    cells = np.stack([rr, np.minimum(rr + stride, r1), cc, np.minimum(cc + stride, c1)], axis=1)
    half = stride // 2 - patch // 2
    return PatchGrid(cells.astype(np.int64), np.stack([rr + half, cc + half], axis=1).astype(np.int64), patch,
                     (len(rows), len(cols)))


def _padded(plane: np.ndarray, patch: int, value: float) -> np.ndarray:
    return np.pad(plane, patch, mode="constant", constant_values=value)


def extract_patches(plane: np.ndarray, grid: PatchGrid, pad_value: float, context: int = 0) -> np.ndarray:
    """``(N, p + 2·context, p + 2·context)`` float32 windows of the 2D ``plane``, each centred on a
    patch of the grid (padded outside the plane)."""
    if context < 0:
        raise InputError(f"patch context must be ≥ 0 pixels, got {context}")
    p, side = grid.patch, grid.patch + 2 * context
    windows = sliding_window_view(_padded(np.asarray(plane, np.float32), p + context, pad_value), (side, side))
    return np.ascontiguousarray(windows[grid.corners[:, 0] + p, grid.corners[:, 1] + p])


def patch_coverage(object_plane: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``(N,)`` fraction of each window's pixels that belong to the object (``object_plane`` bool)."""
    p = grid.patch
    padded = _padded(np.asarray(object_plane, bool), p, 0).astype(np.int64)
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), np.int64)
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    r, c = grid.corners[:, 0] + p, grid.corners[:, 1] + p
    inside = integral[r + p, c + p] - integral[r, c + p] - integral[r + p, c] + integral[r, c]
    return inside / float(p * p)


def patch_labels(object_plane: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``(N,)`` int64: 1 where the object covers more than half of the window."""
    return (patch_coverage(object_plane, grid) > 0.5).astype(np.int64)


def largest_component(positive: np.ndarray, bridge: int = 0) -> np.ndarray:
    """The largest group of ``positive`` (bool, any dimension: e.g. slices × cell rows × cell
    columns) connected through faces, edges or corners; ties go to the first in array order.

    ``bridge`` > 0 also connects cells across up to ``bridge`` empty positions along axis 0 (missed
    slices); the result is still a subset of ``positive``.
    """
    positive = np.asarray(positive, bool)
    linked = positive
    if bridge > 0:
        reach = np.ones((2 * ((bridge + 1) // 2) + 1,) + (1,) * (positive.ndim - 1), bool)
        linked = ndimage.binary_dilation(positive, structure=reach)
    labels, n = ndimage.label(linked, structure=np.ones((3,) * positive.ndim, bool))
    if n <= 1:
        return positive
    sizes = np.bincount(labels[positive], minlength=n + 1)[1:]
    return positive & (labels == 1 + int(np.argmax(sizes)))


def positive_extent(grid: PatchGrid, positive: np.ndarray, box: tuple[int, int, int, int],
                    extent: str = "cells") -> tuple[int, int, int, int] | None:
    """The box around the positive patches, clipped to ``box``; None when no patch is positive.

    ``extent="cells"`` bounds the positive patches' cells (each patch stands for the pixels nearest
    its centre: with the > 50 % labelling rule, a patch centred inside a large object is positive,
    so the cells trace the object to within one stride). ``extent="patches"`` bounds the whole
    windows, the paper's literal rule (over-estimates by about half a patch on each side).
    """
    if extent not in ("cells", "patches"):
        raise InputError(f"extent must be 'cells' or 'patches', got {extent!r}")
    positive = np.asarray(positive, bool)
    if not positive.any():
        return None
    if extent == "cells":
        sel = grid.cells[positive]
        lo_r, hi_r, lo_c, hi_c = sel[:, 0].min(), sel[:, 1].max(), sel[:, 2].min(), sel[:, 3].max()
    else:
        sel = grid.corners[positive]
        lo_r, lo_c = sel[:, 0].min(), sel[:, 1].min()
        hi_r, hi_c = sel[:, 0].max() + grid.patch, sel[:, 1].max() + grid.patch
    r0, r1, c0, c1 = box
    return (int(max(lo_r, r0)), int(min(hi_r, r1)), int(max(lo_c, c0)), int(min(hi_c, c1)))


def slice_plane(array: np.ndarray, box: Box) -> tuple[np.ndarray, Extent]:
    """The 2D slice of ``array`` (z, y, x) a slice box lies on, and the box in that plane as
    ``(r0, r1, c0, c1)`` (rows, columns = the two other axes in array order)."""
    return np.take(array, box.slice_index, axis=box.axis), box.in_plane()


def box_from_extent(box: Box, extent: Extent) -> Box:
    """The slice box ``box`` with its in-plane bounds replaced by ``extent``."""
    a, b = (ax for ax in range(3) if ax != box.axis)
    start, stop = list(box.start), list(box.stop)
    start[a], stop[a], start[b], stop[b] = extent
    return Box(tuple(start), tuple(stop), box.label, "slice", box.axis)  # type: ignore[arg-type]

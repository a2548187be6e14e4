"""PNG figures of the demo and of ``evaluate --figures``: training curves, and one overlay per case.

The overlay shows three orthogonal slices through the object in the radiological convention Slicer
uses (axial and coronal: the patient's right on the left of the picture; sagittal: anterior on the
left; head up), each at its true aspect ratio (mm), with the reference contour (green), the
predicted contour (red) and the boxes (dashed yellow: 3D boxes, and slice boxes in the view of their
slices), and the case's Dice in the title.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from WeakSegLib.io.atomic import atomic_write_bytes
from WeakSegLib.io.boxes import Box
from WeakSegLib.io.volume import Volume

REFERENCE_COLOR, PREDICTION_COLOR, BOX_COLOR = "#2ca02c", "#d62728", "#ffd700"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    _pyplot().close(fig)
    return atomic_write_bytes(path, png.getvalue())


def plot_curves(histories: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Validation Dice and loss per epoch for each recipe, as a PNG."""
    plt = _pyplot()
    fig, (ax_d, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    for recipe, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        ax_d.plot(epochs, [h.get("dice", np.nan) for h in hist], label=recipe)
        loss = np.array([h["loss"] for h in hist])
        ax_l.plot(epochs, (loss - loss.min()) / max(np.ptp(loss), 1e-12), label=recipe)
    ax_d.set(xlabel="epoch", ylabel="Dice vs reference mask", ylim=(0, 1), title="Dice per epoch")
    ax_l.set(xlabel="epoch", ylabel="loss (min–max scaled)", title="training loss")
    ax_d.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


#: the three views of a RAS array (z: head, y: front, x: right): (name, fixed axis, row axis,
#: column axis, flip the columns so that the patient's right / front is on the left of the picture)
_VIEWS = (("axial", 0, 1, 2, True), ("coronal", 1, 0, 2, True), ("sagittal", 2, 0, 1, True))


def _centre(masks: Sequence[np.ndarray | None], boxes: Sequence[Box], shape: Sequence[int]) -> tuple[int, ...]:
    """Where the three views cross: the centre of the first non-empty mask, else of the boxes, else of
    the volume (voxel indices)."""
    for mask in masks:
        if mask is not None and mask.any():
            return tuple(int(round(v)) for v in np.argwhere(mask).mean(0))
    if boxes:
        return tuple(int(v) for v in np.mean([[(a + b - 1) / 2 for a, b in zip(x.start, x.stop)] for x in boxes], 0))
    return tuple(s // 2 for s in shape)


def case_figure(image: Volume, reference: np.ndarray | None, prediction: np.ndarray | None,
                boxes: Sequence[Box] | None, title: str, path: str | os.PathLike) -> Path:
    """Write the overlay of one case (module docstring) as a PNG.

    Args:
        image: the scan (any orientation).
        reference, prediction: label volumes on ``image``'s grid ``(z, y, x)`` or None; any non-zero
            value is the object.
        boxes: boxes on ``image``'s grid, or None.
        title: the picture's title (the case's name and Dice).
    """
    from WeakSegLib.engine.samples.preprocess import canonicalize
    from WeakSegLib.io.canonical import Plan

    labels = {k: (v > 0).astype(np.uint8) for k, v in (("reference", reference), ("prediction", prediction))
              if v is not None}
    ras = canonicalize(image, Plan(None, "mr"), labels, list(boxes) if boxes else None, normalize_image=False)
    array = ras.volume.array
    ref, pred = ras.labels.get("reference"), ras.labels.get("prediction")
    centre = _centre((ref, pred), ras.boxes or [], array.shape)
    body = array[array > array.min()]  # padding outside a CT's field of view left out of the window
    lo, hi = np.percentile(body if body.size else array, (1, 99))
    spacing_zyx = np.asarray(ras.volume.spacing)[::-1]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    for ax, (name, fixed, rows, cols, flip) in zip(axes, _VIEWS):
        take = [slice(None)] * 3
        take[fixed] = centre[fixed]

        def plane(a: np.ndarray) -> np.ndarray:
            p = a[tuple(take)]
            return p[:, ::-1] if flip else p

        aspect = spacing_zyx[rows] / spacing_zyx[cols]
        ax.imshow(plane(array), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
        for mask, color in ((ref, REFERENCE_COLOR), (pred, PREDICTION_COLOR)):
            if mask is not None and plane(mask).any():
                ax.contour(plane(mask), levels=[0.5], colors=color, linewidths=1.2, origin="lower")
        width = array.shape[cols]
        for box in ras.boxes or []:  # 3D boxes, and the slice boxes drawn on this view's slices
            if box.axis in (None, fixed) and box.start[fixed] <= centre[fixed] < box.stop[fixed]:
                c0, c1 = box.start[cols], box.stop[cols]
                if flip:
                    c0, c1 = width - c1, width - c0
                ax.add_patch(plt.Rectangle((c0 - 0.5, box.start[rows] - 0.5), c1 - c0, box.stop[rows] - box.start[rows],
                                           fill=False, edgecolor=BOX_COLOR, linestyle="--", linewidth=1.0))
        ax.set_title(f"{name} (slice {centre[fixed]})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=c, label=n) for c, n, m in
               ((REFERENCE_COLOR, "reference", ref), (PREDICTION_COLOR, "prediction", pred)) if m is not None]
    if ras.boxes:
        handles.append(plt.Line2D([], [], color=BOX_COLOR, linestyle="--", label="boxes"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return _save(fig, path)


"""``weakseg demo``: the whole path on a real case, with the two references beside it.

Boxes from the reference mask (tight, per axial slice) → the default recipe → prediction → a table
against the filled boxes taken as the prediction and against the same network trained on the full
masks. :func:`compare_recipes` is that pipeline for any recipes; the accuracy benchmark uses it too. Writes into ``out``: ``image.nii.gz``, ``mask.nii.gz``, ``boxes.json``, one model folder per
recipe (``model-<recipe>/``), ``prediction.nii.gz`` (default recipe), ``training_curves.png`` and
``report.md``.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from WeakSegLib.app.progress import ProgressPrinter
from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.inference import predict_file
from WeakSegLib.engine.metrics import evaluate
from WeakSegLib.engine.training import train
from WeakSegLib.io.atomic import atomic_write_bytes
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, rasterize, save_boxes
from WeakSegLib.io.sample_data import CASES, materialize
from WeakSegLib.io.volume import read_label_volume
from WeakSegLib.recipes.registry import DEFAULT_RECIPE, recipe_spec

DEMO_RECIPES = (DEFAULT_RECIPE, "box-mask", "full")


def plot_curves(histories: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Validation Dice and loss per epoch for each recipe, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, png.getvalue())


FILLED = "filled boxes (no training)"


def training_case(recipe: str, image: str, boxes: str, mask: str, eval_mask: str | None = None) -> TrainCase:
    """What ``recipe`` trains on when both boxes and a mask are at hand: the mask for a recipe that learns
    from masks (``full``), the boxes for the others."""
    trains_on = recipe_spec(recipe).labels[0]
    return TrainCase(image, eval_mask=eval_mask, **{trains_on: boxes if trains_on == "boxes" else mask})


def compare_recipes(case: str, recipes: Sequence[str], out: str | os.PathLike, *, epochs: int = 100,
                    margin: int = 0, seed: int = 0, device: str = "auto", eval_every: int = 1,
                    quiet: bool = True) -> dict:
    """Train each recipe on sample ``case`` from its per-slice (axial) boxes and score it.

    Writes into ``out``: the case's ``image.nii.gz``/``mask.nii.gz``, ``boxes.json`` (tight boxes
    widened by ``margin`` voxels), ``model-<recipe>/``, ``prediction-<recipe>.nii.gz`` and
    ``events-<recipe>.jsonl``. ``full`` trains on the mask; every recipe reports Dice per epoch
    against it (every ``eval_every`` epochs), which no box recipe trains on.

    Returns:
        ``{"sample": materialize(...) dict, "boxes": number of boxes, "mask": the mask Volume,
        "results": {FILLED or recipe: {"dice", "iou", "hd95", "seconds", "history"}}}``.
    """
    out = Path(out)
    sample = materialize(case, out)
    mask = read_label_volume(sample["mask"])
    boxes = boxes_from_mask(mask.array, "slice", sample["axis"], margin=margin)
    save_boxes(BoxSet(boxes, mask.shape, {1: sample["object"]}, mask.geometry()), out / "boxes.json")
    filled = evaluate(rasterize(boxes, mask.shape, [1])[0], mask.array, mask.spacing)
    results = {FILLED: {**filled, "seconds": 0.0, "history": []}}
    for recipe in recipes:
        tc = training_case(recipe, sample["image"], str(out / "boxes.json"), sample["mask"], eval_mask=sample["mask"])
        config = TrainConfig(recipe=recipe, epochs=epochs, axis=sample["axis"], seed=seed, device=device,
                             eval_every=eval_every)
        printer = ProgressPrinter(str(out / f"events-{recipe}.jsonl"), quiet)
        began = time.perf_counter()
        try:
            card = train([tc], config, out / f"model-{recipe}", on_event=printer, resume=False)
        finally:
            printer.close()
        seconds = time.perf_counter() - began
        pred_path = out / f"prediction-{recipe}.nii.gz"
        predict_file(out / f"model-{recipe}", sample["image"], pred_path, device=device)
        scores = evaluate(read_label_volume(pred_path).array, mask.array, mask.spacing)
        results[recipe] = {**scores, "seconds": seconds, "history": card.history}
    return {"sample": sample, "boxes": len(boxes), "mask": mask, "results": results}


def run_demo(out: str | os.PathLike = "weakseg-demo", case: str = "vertebral-body-ct", epochs: int = 100,
             device: str = "auto", quiet: bool = False) -> Path:
    """Run the demo and return the path of its markdown report."""
    out = Path(out)
    run = compare_recipes(case, DEMO_RECIPES, out, epochs=epochs, device=device, quiet=quiet)
    os.replace(out / f"prediction-{DEFAULT_RECIPE}.nii.gz", out / "prediction.nii.gz")
    results, mask = run["results"], run["mask"]
    plot_curves({r: results[r]["history"] for r in DEMO_RECIPES}, out / "training_curves.png")
    lines = [f"# WeakSeg demo: {CASES[case].object_name} on `{case}`", "",
             f"Image {mask.shape} (z, y, x) at {tuple(round(s, 2) for s in mask.spacing)} mm; "
             f"{run['boxes']} tight boxes on axial slices (array axis {run['sample']['axis']}); {epochs} epochs each; "
             "scores against the reference mask on the training volume (what a user gets after boxing a scan).", "",
             "| method | Dice | IoU | HD95 (mm) | training time (s) |", "|---|---|---|---|---|"]
    for name in (FILLED, *DEMO_RECIPES):
        r = results[name]
        lines.append(f"| {name} | {r['dice']:.3f} | {r['iou']:.3f} | {r['hd95']:.2f} | {r['seconds']:.0f} |")
    lines += ["", "![training curves](training_curves.png)", "",
              f"Prediction of the default recipe: `prediction.nii.gz`; model folder: `model-{DEFAULT_RECIPE}/`.", ""]
    return atomic_write_bytes(out / "report.md", "\n".join(lines).encode("utf-8"))

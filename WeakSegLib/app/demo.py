"""``weakseg demo``: the whole path on real scans, with the two references beside it.

Part one, one scan: boxes from the reference mask (tight, per axial slice) → the default recipe
(``auto``: it picks from the boxes given; the report names its pick) → prediction → a table against the
filled boxes taken as the prediction and against the same network trained on the full masks.
:func:`compare_recipes` is that pipeline for any recipes; the accuracy benchmark uses it too. Part two,
another subject (:func:`cross_subject`): the models trained on one subject's boxes segment a scan of
another subject they never saw, scored with and without the connected-component post-processing each
model decided on its training case (:mod:`WeakSegLib.engine.predict.postprocess`).

Writes into ``out``: ``image.nii.gz``, ``mask.nii.gz``, ``boxes.json``, one model folder per recipe
(``model-<recipe>/``), ``prediction.nii.gz`` (default recipe), ``training_curves.png``,
``overlay.png``, ``cross-subject/`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from WeakSegLib.app.figures import case_figure, plot_curves
from WeakSegLib.app.progress import ProgressPrinter
from WeakSegLib.config import DEFAULT_DEVICE, TrainCase, TrainConfig
from WeakSegLib.engine.predict.evaluation import evaluate_cases
from WeakSegLib.engine.predict.inference import predict_cases, predict_file
from WeakSegLib.engine.predict.metrics import evaluate
from WeakSegLib.engine.samples.cohort import as_trained
from WeakSegLib.engine.train.training import train
from WeakSegLib.io.atomic import atomic_write_bytes
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, load_boxes, rasterize, save_boxes
from WeakSegLib.io.dataset import Dataset, DatasetCase, save_dataset
from WeakSegLib.io.sample_data import CASES, materialize
from WeakSegLib.io.volume import PREDICTION_SUFFIX, read_label_volume, read_volume
from WeakSegLib.registry import AUTO_RECIPE, recipe_spec

#: the demo's recipes: the default (``auto``) and the two references
DEMO_RECIPES = (AUTO_RECIPE, "box-mask", "full")


FILLED = "filled boxes (no training)"


def training_case(recipe: str, image: str, boxes: str, mask: str, eval_mask: str | None = None) -> TrainCase:
    """What ``recipe`` trains on when both boxes and a mask are at hand: the mask for a recipe that learns
    from masks (``full``), the boxes for the others (``auto`` among them: it then picks a box recipe)."""
    trains_on = "boxes" if recipe == AUTO_RECIPE else recipe_spec(recipe).labels[0]
    return TrainCase(image, eval_mask=eval_mask, **{trains_on: boxes if trains_on == "boxes" else mask})


def compare_recipes(case: str, recipes: Sequence[str], out: str | os.PathLike, *, epochs: int = 100,
                    margin: int = 0, seed: int = 0, device: str = DEFAULT_DEVICE, eval_every: int = 1,
                    quiet: bool = True, epoch_batches: int = TrainConfig.epoch_batches,
                    recipe_settings: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Train each recipe on sample ``case`` from its per-slice (axial) boxes and score it.

    Writes into ``out``: the case's ``image.nii.gz``/``mask.nii.gz``, ``boxes.json`` (tight boxes
    widened by ``margin`` voxels), ``model-<recipe>/``, ``prediction-<recipe>.nii.gz`` and
    ``events-<recipe>.jsonl``. ``full`` trains on the mask; every recipe reports Dice per epoch
    against it (every ``eval_every`` epochs), which no box recipe trains on. ``recipe_settings``: per
    recipe, settings of its family other than its defaults (``{"polar-mil": {"polar_parallel": True}}``).

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
        config = TrainConfig(recipe=recipe, epochs=epochs, seed=seed, device=device, epoch_batches=epoch_batches,
                             eval_every=eval_every, recipe_settings=dict((recipe_settings or {}).get(recipe, {})))
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
        results[recipe] = {**scores, "seconds": seconds, "history": card.history, "trained": card.recipe}
    return {"sample": sample, "boxes": len(boxes), "mask": mask, "results": results}


#: the cross-subject part of the demo: boxes on one subject's scan, prediction of another subject's
CROSS_SUBJECT = ("spine-ct", "chest-ct-spine")


def cross_subject(out: str | os.PathLike, recipes: Sequence[str] = (AUTO_RECIPE, "full"), *,
                  subjects: tuple[str, str] = CROSS_SUBJECT, epochs: int = 100, device: str = DEFAULT_DEVICE,
                  quiet: bool = True) -> dict:
    """Train each recipe on subject ``subjects[0]`` (its tight axial slice boxes, or its mask for
    ``full``), predict the scan of subject ``subjects[1]`` it never saw — with the post-processing the
    model decided on its training case, and without — score both and draw the overlay.

    Writes into ``out``: both subjects' images, masks and boxes, ``dataset.json``, ``model-<recipe>/``,
    ``predictions-<recipe>/<subject>.nii.gz`` (post-processed), ``predictions-<recipe>-raw/`` and
    ``overlay-<recipe>.png``.

    Returns:
        ``{"train": name, "test": name, "results": {FILLED, or recipe and "<recipe>, post-processed":
        {"dice", "iou", "hd95", "trained", "postprocess"}}}``; the filled boxes are the unseen scan's own
        tight boxes taken as its prediction.
    """
    out = Path(out)
    cases = {}
    for name in subjects:
        sample = materialize(name, out / name)
        mask = read_label_volume(sample["mask"])
        boxes = boxes_from_mask(mask.array, "slice", sample["axis"])
        save_boxes(BoxSet(boxes, mask.shape, {1: sample["object"]}, mask.geometry()), out / name / "boxes.json")
        cases[name] = DatasetCase(name, "", sample["image"], {"boxes": str(out / name / "boxes.json"),
                                                              "mask": sample["mask"]})
    train_on, test_on = (cases[n] for n in subjects)
    save_dataset(Dataset(out / "dataset.json", [dataclasses.replace(train_on, split="training"),
                                                 DatasetCase(test_on.name, "test", test_on.image,
                                                             {"mask": test_on.files["mask"]})]), out / "dataset.json")
    reference = read_label_volume(test_on.files["mask"])
    boxes = load_boxes(test_on.files["boxes"]).boxes
    results = {FILLED: evaluate(rasterize(boxes, reference.shape, [1])[0], reference.array, reference.spacing)}
    for recipe in recipes:
        printer = ProgressPrinter(str(out / f"events-{recipe}.jsonl"), quiet)
        trains_on = train_on.train_case() if recipe == AUTO_RECIPE else as_trained(train_on.train_case(),
                                                                                   recipe_spec(recipe))
        try:
            card = train([trains_on], TrainConfig(recipe=recipe, epochs=epochs, device=device, eval_every=epochs),
                         out / f"model-{recipe}", on_event=printer, resume=False)
        finally:
            printer.close()
        steps = ", ".join(f"{step}" for step in card.postprocess_steps().values())
        for postprocess, key, folder in ((False, recipe, out / f"predictions-{recipe}-raw"),
                                         (True, f"{recipe}, post-processed", out / f"predictions-{recipe}")):
            predict_cases(out / f"model-{recipe}", [(test_on.name, test_on.image)], folder, device=device,
                          postprocess=postprocess)
            scores = evaluate_cases(folder, [(test_on.name, test_on.files["mask"])], [1]).scores[0]
            results[key] = {"dice": scores.dice, "iou": scores.iou, "hd95": scores.hd95, "trained": card.recipe,
                            "postprocess": steps if postprocess else ""}
        case_figure(read_volume(test_on.image), reference.array,
                    read_label_volume(folder / f"{test_on.name}{PREDICTION_SUFFIX}").array, None,
                    f"{test_on.name}, predicted by {card.recipe} trained on {train_on.name} (post-processed): "
                    f"Dice {scores.dice:.3f}", out / f"overlay-{recipe}.png")
    return {"train": train_on.name, "test": test_on.name, "results": results}


def _shown(name: str, r: dict) -> str:
    """A recipe as the report names it: ``auto`` with the recipe it picked, and the post-processing."""
    shown = f"{AUTO_RECIPE} ({r['trained']})" + name[len(AUTO_RECIPE):] if name.startswith(AUTO_RECIPE) else name
    return shown + (f" ({r['postprocess']})" if r.get("postprocess") else "")


def _score_row(name: str, r: dict, seconds: str = "") -> str:
    hd95 = "–" if r["hd95"] is None or not np.isfinite(r["hd95"]) else f"{r['hd95']:.2f}"
    return f"| {_shown(name, r)} | {r['dice']:.3f} | {r['iou']:.3f} | {hd95} |{seconds}"


def run_demo(out: str | os.PathLike = "weakseg-demo", case: str = "vertebral-body-ct", epochs: int = 100,
             device: str = DEFAULT_DEVICE, quiet: bool = False) -> Path:
    """Run the demo (module docstring) and return the path of its markdown report."""
    out = Path(out)
    run = compare_recipes(case, DEMO_RECIPES, out, epochs=epochs, device=device, quiet=quiet)
    os.replace(out / f"prediction-{AUTO_RECIPE}.nii.gz", out / "prediction.nii.gz")
    results, mask = run["results"], run["mask"]
    plot_curves({r: results[r]["history"] for r in DEMO_RECIPES}, out / "training_curves.png")
    case_figure(read_volume(run["sample"]["image"]), mask.array, read_label_volume(out / "prediction.nii.gz").array,
                load_boxes(out / "boxes.json").boxes,
                f"{case}, {_shown(AUTO_RECIPE, results[AUTO_RECIPE])}: Dice {results[AUTO_RECIPE]['dice']:.3f}",
                out / "overlay.png")
    lines = [f"# WeakSeg demo: {CASES[case].object_name} on `{case}`", "",
             f"Image {mask.shape} (z, y, x) at {tuple(round(s, 2) for s in mask.spacing)} mm; "
             f"{run['boxes']} tight boxes on axial slices (array axis {run['sample']['axis']}); {epochs} epochs each; "
             "scores against the reference mask on the training volume (what a user gets after boxing a scan); "
             "predictions post-processed as each model decided on its training case.", "",
             "| method | Dice | IoU | HD95 (mm) | training time (s) |", "|---|---|---|---|---|"]
    for name in (FILLED, *DEMO_RECIPES):
        lines.append(_score_row(name, results[name], f" {results[name]['seconds']:.0f} |"))
    lines += ["", "![training curves](training_curves.png)", "", "![overlay](overlay.png)", "",
              f"Prediction of the default recipe: `prediction.nii.gz`; model folder: `model-{AUTO_RECIPE}/`.", ""]
    cross = cross_subject(out / "cross-subject", epochs=epochs, device=device, quiet=quiet)
    a, b = (CASES[n] for n in (cross["train"], cross["test"]))
    lines += [f"## Another subject: trained on `{cross['train']}`, predicting `{cross['test']}`", "",
              f"Boxes on the {a.object_name} of one subject's scan, the model applied to another subject's scan it "
              f"never saw ({b.object_name}; stored and sampled differently: the pipeline reorients, resamples and maps "
              "its intensities itself). Filled boxes: the unseen scan's own tight boxes taken as its prediction. Each "
              "model is shown as it predicts and after the connected-component post-processing it decided on its "
              "training case (in brackets: the step kept; `none`: no step helped there).", "",
              "| method | Dice | IoU | HD95 (mm) |", "|---|---|---|---|"]
    for name, r in cross["results"].items():
        lines.append(_score_row(name, r))
    lines += [""] + [f"![{r}](cross-subject/overlay-{r}.png)" for r in (AUTO_RECIPE, "full")] + [""]
    return atomic_write_bytes(out / "report.md", "\n".join(lines).encode("utf-8"))

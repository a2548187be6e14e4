"""Accuracy of the recipes on the real cases of docs/data.md with tight per-slice (axial) boxes.

Two evaluations (docs/data.md):

* **training volume** (default): each recipe trains on one volume and is scored against the
  reference mask of that volume (which the box recipes never see): what a user gets after boxing
  their own scan. ``full`` has seen every voxel it is scored on.
* **held-out slabs** (``--held-out K``): the object's axial extent is cut into K slabs holding equal
  numbers of object slices (on the vertebral-body cases: about one vertebra each); each slab is
  predicted by models trained on the rest of the volume only, and Dice is taken over the volume
  reassembled from these predictions: every slice is scored by a model that never saw it, as the
  papers' validation figures are (docs/methods.md §1). The whole image is normalised once (percentile
  clip + z-score) before it is cut, so that every part sees the same intensity mapping.

Beside the recipes, the filled tight boxes taken as the prediction. Prints a markdown table
(recipes × cases, Dice, mean ± sd over cases) and writes JSON.

    python Testing/benchmarks/bench_accuracy.py --epochs 40 --json accuracy.json
    python Testing/benchmarks/bench_accuracy.py --held-out 3 --cases vertebral-body-ct vertebral-body-mri \
        --recipes full box-mask tightness+size+emptiness
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import bench_parser, parse, run_each

from WeakSegLib.app.demo import FILLED, compare_recipes, training_case
from WeakSegLib.config import TrainConfig
from WeakSegLib.engine.predict.inference import predict_volume
from WeakSegLib.engine.predict.metrics import dice, evaluate
from WeakSegLib.engine.train.training import train
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, rasterize, save_boxes
from WeakSegLib.io.sample_data import CASES, materialize
from WeakSegLib.io.volume import Volume, normalize, read_label_volume, read_volume, write_volume
from WeakSegLib.registry import recipe_names


def run_case(name: str, recipes: list[str], epochs: int, folder: Path, margin: int, seed: int,
             epoch_batches: int) -> dict:
    run = compare_recipes(name, recipes, folder, epochs=epochs, margin=margin, seed=seed, eval_every=epochs,
                          epoch_batches=epoch_batches)
    for recipe in recipes:
        r = run["results"][recipe]
        print(f"  {name:16s} {recipe:28s} Dice {r['dice']:.3f}  ({r['seconds']:.0f} s)", flush=True)
    return {k: {m: v for m, v in r.items() if m != "history"} for k, r in run["results"].items()}


def slab_bounds(mask: np.ndarray, axis: int, k: int) -> list[int]:
    """Boundaries ``[0, b1, …, n]`` of k slabs along ``axis``, each holding an equal share of the
    slices that contain the object; a boundary lies halfway between the object slices it separates."""
    slices = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    if len(slices) < k:
        raise ValueError(f"{len(slices)} object slices cannot make {k} slabs")
    chunks = np.array_split(slices, k)
    inner = [(int(a[-1]) + int(b[0]) + 1) // 2 for a, b in zip(chunks, chunks[1:])]
    return [0, *inner, mask.shape[axis]]


def crop(volume: Volume, axis: int, lo: int, hi: int) -> Volume:
    """Slices ``[lo, hi)`` of ``volume`` along array ``axis``, keeping the physical geometry."""
    index = [slice(None)] * 3
    index[2 - axis] = slice(lo, hi)  # SimpleITK indexes (x, y, z)
    return Volume.from_sitk(volume.to_sitk()[tuple(index)])


def run_held_out(name: str, recipes: list[str], epochs: int, folder: Path, k: int, seed: int,
                 epoch_batches: int) -> dict:
    """Dice of every recipe over the volume reassembled from k held-out slab predictions."""
    sample = materialize(name, folder)
    axis, mask = sample["axis"], read_label_volume(sample["mask"])
    image = read_volume(sample["image"])
    image = image.with_array(normalize(image.array))
    bounds = slab_bounds(mask.array > 0, axis, k)
    assembled = {r: np.zeros(mask.shape, np.uint8) for r in recipes}
    for fold, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        cases = []
        for part, (a, b) in enumerate(((0, lo), (hi, mask.shape[axis]))):
            if b - a < 1:
                continue
            stem = folder / f"fold{fold}-part{part}"
            part_mask = crop(mask, axis, a, b)
            write_volume(crop(image, axis, a, b), f"{stem}-image.nii.gz")
            write_volume(part_mask, f"{stem}-mask.nii.gz")
            save_boxes(BoxSet(boxes_from_mask(part_mask.array, "slice", axis), part_mask.shape, {1: sample["object"]},
                              part_mask.geometry()), f"{stem}-boxes.json")
            cases.append(stem)
        test = crop(image, axis, lo, hi)
        where = [slice(None)] * 3
        where[axis] = slice(lo, hi)
        for recipe in recipes:
            tcs = [training_case(recipe, f"{c}-image.nii.gz", f"{c}-boxes.json", f"{c}-mask.nii.gz") for c in cases]
            config = TrainConfig(recipe=recipe, epochs=epochs, seed=seed, normalization="none", eval_every=epochs,
                                 epoch_batches=epoch_batches)
            model = folder / f"fold{fold}-model-{recipe}"
            train(tcs, config, model, resume=False)
            assembled[recipe][tuple(where)] = predict_volume(str(model), test)[0].array
            fold_dice = dice(assembled[recipe][tuple(where)] > 0, mask.array[tuple(where)] > 0)
            print(f"  {name:16s} slab {fold} (slices {lo}–{hi - 1}) {recipe:28s} Dice {fold_dice:.3f}", flush=True)
    boxes = boxes_from_mask(mask.array, "slice", axis)
    results = {FILLED: evaluate(rasterize(boxes, mask.shape, [1])[0], mask.array, mask.spacing)}
    for recipe in recipes:
        results[recipe] = evaluate(assembled[recipe], mask.array, mask.spacing)
        print(f"  {name:16s} held-out slabs, reassembled {recipe:28s} Dice {results[recipe]['dice']:.3f}", flush=True)
    return results


def table(results: dict, rows: list[str]) -> str:
    cases = list(results)
    lines = ["| recipe | " + " | ".join(cases) + " | mean ± sd |", "|---" * (len(cases) + 2) + "|"]
    for row in rows:
        vals = [results[c][row]["dice"] for c in cases]
        lines.append(f"| {row} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} ± {np.std(vals):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--cases", nargs="+", default=["spine-ct", "spine-mri", "chest-ct-spine", "brain-mri"],
                   choices=list(CASES))
    p.add_argument("--recipes", nargs="+", default=["full", "box-mask", "tightness+size+emptiness",
                                                    "tightness+size+masked-ce", "tightness+emptiness"],
                   choices=recipe_names())
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--epoch-batches", type=int, default=TrainConfig.epoch_batches, help="batches per epoch")
    p.add_argument("--margin", type=int, default=0, help="loosen the boxes by this many voxels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out", type=int, default=0, metavar="K",
                   help="score on K held-out axial slabs instead of the training volume (0: training volume)")
    args = parse(p)
    if args.held_out:
        results = run_each(args.cases, lambda name, folder: run_held_out(name, args.recipes, args.epochs, folder,
                                                                        args.held_out, args.seed, args.epoch_batches))
    else:
        results = run_each(args.cases, lambda name, folder: run_case(name, args.recipes, args.epochs, folder,
                                                                    args.margin, args.seed, args.epoch_batches))
    where = f"{args.held_out} held-out slabs" if args.held_out else "the training volume"
    print(f"\nDice on {where}, {args.epochs} epochs, tight per-slice boxes (margin {args.margin}), seed {args.seed}:\n")
    print(table(results, [FILLED, *args.recipes]))
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "margin": args.margin, "held_out": args.held_out,
                                                "results": results}, indent=2))


if __name__ == "__main__":
    main()

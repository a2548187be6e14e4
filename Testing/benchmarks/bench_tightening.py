"""Box tightener on real objects it never saw in training (docs/results.md › Box tightener).

For each object set (several objects of one kind in one image, docs/data.md) and each held-out object:
train a tightener on the *other* objects' masks, tighten the held-out object's tight 3D box (cut
into axial slices) and compare with its tight per-slice boxes (mean box IoU over the slices of
either set; a missing or extra slice box scores 0). Then train the engine's default recipe on all
objects' boxes — tight 2D boxes, raw 3D-box slices, tightened boxes (each object tightened by the
tightener that did not see it) — and score Dice against the mask; ``--raw-recipes`` also trains
other recipes on the raw 3D-box slices (``polar-mil``: loose boxes without a tightener). Times:
tightener training and tightening of one object on this machine's threads.

    python Testing/benchmarks/bench_tightening.py --threads 2 --json tightening.json
    python Testing/benchmarks/bench_tightening.py --threads 2 --patches 8 --raw-recipes polar-mil
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from common import bench_parser, parse, run_each

from WeakSegLib.config import TightenerCase, TightenerConfig, TightenSettings, TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import predict_volume
from WeakSegLib.engine.predict.metrics import evaluate, slice_box_iou
from WeakSegLib.engine.train.training import train
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes, split_box
from WeakSegLib.io.sample_data import OBJECT_SETS, materialize_objects
from WeakSegLib.io.volume import read_label_volume, read_volume, write_volume
from WeakSegLib.registry import recipe_names
from WeakSegLib.tightener.tighten import tighten
from WeakSegLib.tightener.training import train_tightener


def segment(image: str, boxes: list, mask, folder: Path, name: str, epochs: int,
            recipe: str = TrainConfig.recipe) -> float:
    """Dice of ``recipe`` (default: the box constraints) trained on ``boxes`` (axial slice boxes, or 3D
    boxes, which training cuts into the same slices and knows to be loose) against
    the binary objects. The training axis is the canonical axial axis (``TrainConfig.axis`` 0); the
    boxes' array axis is mapped to it when the cohort is read."""
    path = folder / f"boxes-{name}.json"
    save_boxes(BoxSet([dataclasses.replace(b, label=1) for b in boxes], mask.shape,
                      {1: "object"}, mask.geometry()), path)
    config = TrainConfig(recipe=recipe, epochs=epochs, device="cpu", eval_every=epochs)
    train([TrainCase(image, boxes=str(path))], config, folder / f"model-{name}", resume=False)
    pred, _ = predict_volume(str(folder / f"model-{name}"), read_volume(image), device="cpu")
    return evaluate(pred.array, (mask.array > 0).astype(np.uint8), mask.spacing)["dice"]


def run_set(name: str, patches: list[int], seg_patch: int, epochs: int, seg_epochs: int, rule: str,
            context: int, raw_recipes: list[str], folder: Path) -> dict:
    sample = materialize_objects(name, folder)
    mask = read_label_volume(sample["mask"])
    image = read_volume(sample["image"])
    axis = sample["axis"]
    out: dict = {"shape": list(mask.shape), "spacing": list(mask.spacing), "objects": len(sample["labels"]),
                 "patch": {}}
    tight_all, raw_all, boxes3d, tightened_by_patch = [], [], [], {p: [] for p in patches}
    for label in sample["labels"]:
        box3d = boxes_from_mask(mask.array, "3d", axis, 0, [label], False)[0]
        tight = boxes_from_mask(mask.array, "slice", axis, 0, [label], False)
        raw = split_box(box3d, axis)
        tight_all += tight
        raw_all += raw
        boxes3d.append(box3d)
        train_mask = folder / f"train-without-{label}.nii.gz"
        write_volume(mask.with_array(np.where(mask.array != label, mask.array, 0).astype(np.uint8)), train_mask)
        for p in patches:
            began = time.perf_counter()
            folder_t = folder / f"tightener-{label}-p{p}"
            card = train_tightener([TightenerCase(sample["image"], str(train_mask))],
                                   TightenerConfig(patch=p, context=context, axis=axis, epochs=epochs, device="cpu",
                                                   threshold_rule=rule), folder_t,
                                   resume=False)
            t_train = time.perf_counter() - began
            began = time.perf_counter()
            result, _ = tighten(folder_t, image, BoxSet([box3d], mask.shape, {label: "object"}, mask.geometry()),
                                TightenSettings(), device="cpu")
            t_use = time.perf_counter() - began
            tightened_by_patch[p] += result.boxes
            row = out["patch"].setdefault(p, {"raw_iou": [], "tightened_iou": [], "train_s": [], "tighten_s": [],
                                               "val_accuracy": []})
            row["raw_iou"].append(slice_box_iou(raw, tight, axis))
            row["tightened_iou"].append(slice_box_iou(result.boxes, tight, axis))
            row["train_s"].append(t_train)
            row["tighten_s"].append(t_use)
            row["val_accuracy"].append(card.metrics.get("val_accuracy", float("nan")))
            print(f"  {name:22s} object {label:3d} p={p:2d}: box IoU raw {row['raw_iou'][-1]:.3f} → tightened "
                  f"{row['tightened_iou'][-1]:.3f}   train {t_train:.0f} s, tighten {t_use:.2f} s", flush=True)
    if seg_epochs > 0:
        out["dice"] = {}
        for kind, boxes in (("tight 2D", tight_all), ("raw 3D slices", raw_all),
                            (f"tightened (p={seg_patch})", tightened_by_patch[seg_patch])):
            began = time.perf_counter()
            out["dice"][kind] = segment(sample["image"], boxes, mask, folder, kind.split()[0], seg_epochs)
            print(f"  {name:22s} default recipe on {kind:18s}: Dice {out['dice'][kind]:.3f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
        for recipe in raw_recipes:
            kind = f"{recipe} on raw 3D slices"
            began = time.perf_counter()
            # the 3D boxes themselves: their slices are raw_all, and a recipe whose defaults depend on
            # the boxes (polar-mil's crossing lines) learns that they are loose
            out["dice"][kind] = segment(sample["image"], boxes3d, mask, folder, recipe, seg_epochs, recipe)
            print(f"  {name:22s} {kind}: Dice {out['dice'][kind]:.3f} ({time.perf_counter() - began:.0f} s)",
                  flush=True)
    return out


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--sets", nargs="+", default=["lungs", "vertebral-bodies-ct", "vertebral-bodies-mri",
                                                 "vertebrae-ct"], choices=list(OBJECT_SETS))
    p.add_argument("--patches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--seg-patch", type=int, default=8, help="tightener patch size whose boxes train the segmenter")
    p.add_argument("--epochs", type=int, default=50, help="tightener epochs (paper: 50)")
    p.add_argument("--seg-epochs", type=int, default=100, help="segmentation epochs (0: skip Dice)")
    p.add_argument("--threshold-rule", choices=("balanced", "accuracy"), default="balanced")
    p.add_argument("--context", type=int, default=TightenerConfig.context,
                   help="voxels of surrounding image the patch classifier sees on every side")
    p.add_argument("--raw-recipes", nargs="+", default=[], choices=recipe_names(),
                   help="recipes also trained on the raw 3D-box slices (e.g. polar-mil)")
    args = parse(p)
    results = run_each(args.sets, lambda name, folder: run_set(name, args.patches, args.seg_patch, args.epochs,
                                                               args.seg_epochs, args.threshold_rule, args.context,
                                                               args.raw_recipes, folder))
    print(f"\n## Box IoU against tight per-slice boxes, held-out objects ({args.threads} threads)\n")
    print("| object set | p | raw 3D-box slices | tightened | tightener training (s) | tightening one object (s) | "
          "patch accuracy (held-out slices) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for patch, row in r["patch"].items():
            print(f"| {name} | {patch} | {np.mean(row['raw_iou']):.3f} | {np.mean(row['tightened_iou']):.3f} | "
                  f"{np.mean(row['train_s']):.0f} | {np.mean(row['tighten_s']):.2f} | "
                  f"{np.mean(row['val_accuracy']):.3f} |")
    if args.seg_epochs > 0:
        print(f"\n## Dice of the default recipe and of --raw-recipes ({args.seg_epochs} epochs)\n")
        kinds = list(next(iter(results.values()))["dice"])
        print("| object set | " + " | ".join(kinds) + " | tightened / tight |")
        print("|---" * (len(kinds) + 2) + "|")
        for name, r in results.items():
            d = list(r["dice"].values())
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in d) + f" | {d[2] / d[0]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

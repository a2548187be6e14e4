"""Accuracy of the recipes on the real cases of DATA.md with tight per-slice (axial) boxes.

Each recipe trains on one volume and is scored against the reference mask of that volume (which the
box recipes never see): what a user gets after boxing their own scan. Beside them, the filled boxes
taken as the prediction. Prints a markdown table (recipes × cases, Dice, mean ± sd over cases) and
writes JSON.

    python Testing/benchmarks/bench_accuracy.py --epochs 40 --json accuracy.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from WeakSegLib.boxes import BoxSet, boxes_from_mask, rasterize, save_boxes
from WeakSegLib.inference import predict_volume
from WeakSegLib.metrics import evaluate
from WeakSegLib.recipes import RECIPES
from WeakSegLib.sample_data import CASES, materialize
from WeakSegLib.training import TrainCase, TrainConfig, train
from WeakSegLib.volume import read_label_volume, read_volume

FILLED = "filled boxes (no training)"


def run_case(name: str, recipes: list[str], epochs: int, folder: Path, margin: int, seed: int) -> dict:
    sample = materialize(name, folder)
    mask = read_label_volume(sample["mask"])
    image = read_volume(sample["image"])
    boxes = boxes_from_mask(mask.array, "slice", sample["axis"], margin=margin)
    save_boxes(BoxSet(boxes, mask.shape, {1: sample["object"]}, mask.geometry()), folder / "boxes.json")
    out = {FILLED: {**evaluate(rasterize(boxes, mask.shape, [1])[0], mask.array, mask.spacing), "seconds": 0.0}}
    for recipe in recipes:
        began = time.perf_counter()
        tc = TrainCase(sample["image"], boxes=str(folder / "boxes.json"), mask=sample["mask"] if recipe == "full" else None)
        train([tc], TrainConfig(recipe=recipe, epochs=epochs, axis=sample["axis"], seed=seed), folder / recipe,
              resume=False)
        labels, _ = predict_volume(folder / recipe, image)
        out[recipe] = {**evaluate(labels.array, mask.array, mask.spacing), "seconds": time.perf_counter() - began}
        print(f"  {name:16s} {recipe:28s} Dice {out[recipe]['dice']:.3f}  ({out[recipe]['seconds']:.0f} s)", flush=True)
    return out


def table(results: dict, rows: list[str]) -> str:
    cases = list(results)
    lines = ["| recipe | " + " | ".join(cases) + " | mean ± sd |", "|---" * (len(cases) + 2) + "|"]
    for row in rows:
        vals = [results[c][row]["dice"] for c in cases]
        lines.append(f"| {row} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} ± {np.std(vals):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["spine-ct", "spine-mri", "chest-ct-spine", "brain-mri"],
                   choices=list(CASES))
    p.add_argument("--recipes", nargs="+", default=["full", "box-mask", "tightness+size+emptiness",
                                                    "tightness+size+masked-ce", "tightness+emptiness"],
                   choices=RECIPES)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--margin", type=int, default=0, help="loosen the boxes by this many voxels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            results[name] = run_case(name, args.recipes, args.epochs, Path(tmp) / name, args.margin, args.seed)
    print(f"\nDice, {args.epochs} epochs, tight per-slice boxes (margin {args.margin}), seed {args.seed}:\n")
    print(table(results, [FILLED, *args.recipes]))
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "margin": args.margin, "results": results}, indent=2))


if __name__ == "__main__":
    main()

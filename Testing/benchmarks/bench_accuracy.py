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
from pathlib import Path

import numpy as np
import torch

from WeakSegLib.demo import FILLED, compare_recipes
from WeakSegLib.recipes import RECIPES
from WeakSegLib.sample_data import CASES

def run_case(name: str, recipes: list[str], epochs: int, folder: Path, margin: int, seed: int) -> dict:
    run = compare_recipes(name, recipes, folder, epochs=epochs, margin=margin, seed=seed, eval_every=epochs)
    for recipe in recipes:
        r = run["results"][recipe]
        print(f"  {name:16s} {recipe:28s} Dice {r['dice']:.3f}  ({r['seconds']:.0f} s)", flush=True)
    return {k: {m: v for m, v in r.items() if m != "history"} for k, r in run["results"].items()}


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

"""The box-margin study (Kervadec et al.'s Tables 1 and 2 on our data): full supervision, filled
boxes, DeepCut, BoxSup and the engine's box recipes, trained on tight per-slice boxes and on boxes
widened by a margin, all with the same network, data, epochs and seed.

Each recipe trains on one volume and is scored against the reference mask of that volume (which
no box recipe sees). Prints markdown tables (Dice per case, mean ± sd over cases; training time) and
writes JSON and a plot of the Dice per epoch (DeepCut's re-initialisations show there).

    python Testing/benchmarks/bench_baselines.py --epochs 100 --json baselines.json --plot baselines.png

``--candidates`` prints only how well BoxSup's candidates can fit the objects (no training): per box,
the IoU with the object of the best candidate vs of the filled box, averaged over boxes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import bench_parser, parse

from WeakSegLib.app.demo import FILLED, compare_recipes
from WeakSegLib.io.sample_data import CASES

BOX_RECIPES = ["box-mask", "deepcut", "boxsup", "tightness+size+emptiness", "tightness+size+masked-ce",
               "tightness+emptiness"]


def run(cases: list[str], margins: list[int], epochs: int, seed: int, folder: Path) -> dict:
    """``{case: {margin: {recipe: scores}}}``; ``full`` (no boxes) is trained once, under margin 0."""
    results: dict = {}
    for case in cases:
        results[case] = {}
        for margin in margins:
            recipes = (["full"] if margin == margins[0] else []) + BOX_RECIPES
            out = compare_recipes(case, recipes, folder / f"{case}-m{margin}", epochs=epochs, margin=margin,
                                  seed=seed, eval_every=1)["results"]
            results[case][margin] = out
            for recipe, r in out.items():
                print(f"  {case:20s} margin {margin:2d}  {recipe:28s} Dice {r['dice']:.3f}  ({r['seconds']:.0f} s)",
                      flush=True)
    return results


def tables(results: dict, margins: list[int]) -> str:
    cases = list(results)
    head = "| recipe | margin | " + " | ".join(cases) + " | mean ± sd | training time (s, mean) |"
    lines = [head, "|---" * (len(cases) + 4) + "|"]
    for recipe in [FILLED, "full", *BOX_RECIPES]:
        for margin in margins:
            rows = [results[c][margin].get(recipe) for c in cases]
            if any(r is None for r in rows):
                continue
            dice = [r["dice"] for r in rows]
            secs = np.mean([r["seconds"] for r in rows])
            label = "–" if recipe == "full" else str(margin)
            lines.append(f"| {recipe} | {label} | " + " | ".join(f"{d:.3f}" for d in dice)
                         + f" | {np.mean(dice):.3f} ± {np.std(dice):.3f} | {secs:.0f} |")
    return "\n".join(lines)


def plot(results: dict, margins: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    fig, axes = plt.subplots(len(margins), len(cases), figsize=(4.2 * len(cases), 3.4 * len(margins)), squeeze=False)
    for j, case in enumerate(cases):
        for i, margin in enumerate(margins):
            ax = axes[i, j]
            merged = {**results[case][margins[0]], **results[case][margin]} if "full" not in results[case][margin] \
                else results[case][margin]
            for recipe in ["full", *BOX_RECIPES]:
                hist = merged.get(recipe, {}).get("history", [])
                if hist:
                    ax.plot([h["epoch"] for h in hist], [h.get("dice", np.nan) for h in hist], label=recipe,
                            lw=1.8 if recipe in ("deepcut", "boxsup") else 1.0)
            ax.set(ylim=(0, 1), title=f"{case}, margin {margin}", xlabel="epoch", ylabel="Dice vs reference")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def candidate_quality(cases: list[str], margins: list[int]) -> None:
    from WeakSegLib.io.boxes import boxes_from_mask
    from WeakSegLib.io.sample_data import materialize
    from WeakSegLib.io.volume import normalize, read_label_volume, read_volume
    from WeakSegLib.recipes.crf import to_crf_intensity
    from WeakSegLib.recipes.regions import box_candidates

    print("| case | margin | boxes | candidates per box | IoU best candidate | IoU filled box |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            s = materialize(case, tmp)
            image = np.moveaxis(normalize(read_volume(s["image"]).array, "percentile"), s["axis"], 0)
            mask = read_label_volume(s["mask"]).array
        slices, ref = to_crf_intensity(image) / 255.0, np.moveaxis(mask > 0, s["axis"], 0)
        for margin in margins:
            best, filled, count = [], [], []
            for box in boxes_from_mask(mask, "slice", s["axis"], margin=margin):
                r0, r1, c0, c1 = box.in_plane()
                cand = box_candidates(slices[box.slice_index], (r0, r1, c0, c1))
                obj = ref[box.slice_index, r0:r1, c0:c1]
                best.append(((cand.masks & obj).sum((1, 2)) / (cand.masks | obj).sum((1, 2))).max())
                filled.append(obj.mean())
                count.append(len(cand.masks))
            print(f"| {case} | {margin} | {len(best)} | {np.mean(count):.1f} | {np.mean(best):.3f} | {np.mean(filled):.3f} |")


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--cases", nargs="+", default=["vertebral-body-ct", "vertebral-body-mri", "chest-ct-lungs"],
                   choices=list(CASES))
    p.add_argument("--margins", type=int, nargs="+", default=[0, 10])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", help="write the Dice-per-epoch plot here (PNG)")
    p.add_argument("--candidates", action="store_true", help="only the quality of BoxSup's candidates")
    args = parse(p)
    if args.candidates:
        return candidate_quality(args.cases, args.margins)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.cases, args.margins, args.epochs, args.seed, Path(tmp))
    print(f"\nDice, {args.epochs} epochs, seed {args.seed}, per-slice (axial) boxes tight and widened:\n")
    print(tables(results, args.margins))
    if args.plot:
        plot(results, args.margins, args.plot)
    if args.json:
        slim = {c: {m: {r: {k: v for k, v in s.items() if k != "history"} | {"dice_per_epoch": [h.get("dice") for h in s["history"]]}
                        for r, s in per.items()} for m, per in res.items()} for c, res in results.items()}
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "margins": args.margins, "results": slim}, indent=2))


if __name__ == "__main__":
    main()

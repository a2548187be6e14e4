"""Recipe stability: does any box recipe collapse (predict less than the filled boxes give) on scans no one
tuned it to?

Every box recipe × every sample case (``--cases``, default all of docs/data.md's) × seeds (``--seeds``),
trained from tight per-slice axial boxes and scored on the boxed scan against the mask it never saw
(the accuracy benchmark's evaluation, :func:`WeakSegLib.app.demo.compare_recipes`). Per recipe: the
mean and the minimum Dice, and how many runs fell more than ``--margin`` (0.05) below the filled boxes
of their case — a collapse. Prints the per-run table and the summary (markdown) and writes JSON.

    python Testing/benchmarks/bench_stability.py --epochs 100 --json stability.json
    python Testing/benchmarks/bench_stability.py --cases vertebral-body-ct --seeds 0 --recipes deepcut
    python Testing/benchmarks/bench_stability.py --recipes polar-mil --settings '{"polar-mil": {"polar_parallel": false}}'
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from common import bench_parser, parse, run_each

from WeakSegLib.app.demo import FILLED, compare_recipes
from WeakSegLib.io.sample_data import CASES
from WeakSegLib.registry import box_recipes


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=None, help="default: every box recipe")
    p.add_argument("--margin", type=float, default=0.05, help="a run below the filled boxes minus this collapsed")
    p.add_argument("--settings", type=json.loads, default={},
                   help='JSON: per recipe, settings other than its defaults, e.g. {"polar-mil": {"polar_parallel": false}}')
    args = parse(p)
    recipes = args.recipes or box_recipes()
    runs = []  # (case, seed, recipe, dice, filled)
    for seed in args.seeds:
        def one(case: str, folder: Path) -> dict:
            return compare_recipes(case, recipes, folder, epochs=args.epochs, seed=seed, eval_every=args.epochs,
                                   recipe_settings=args.settings)
        for case in args.cases:  # one case at a time, so that each prints as soon as it is done
            result = run_each([case], one)[case]
            filled = result["results"][FILLED]["dice"]
            for recipe in recipes:
                dice = result["results"][recipe]["dice"]
                runs.append((case, seed, recipe, dice, filled))
                print(f"  {case:20s} seed {seed} {recipe:28s} Dice {dice:.3f} (filled boxes {filled:.3f})", flush=True)
    print("\n| recipe | mean Dice | minimum | runs | collapsed (below filled boxes − "
          f"{args.margin:g}) |\n|---|---|---|---|---|")
    summary = {}
    for recipe in recipes:
        mine = [r for r in runs if r[2] == recipe]
        scores = [r[3] for r in mine]
        collapsed = [f"{r[0]} s{r[1]}" for r in mine if r[3] < r[4] - args.margin]
        summary[recipe] = {"mean": statistics.mean(scores), "min": min(scores), "runs": len(scores),
                           "collapsed": collapsed}
        print(f"| `{recipe}` | {summary[recipe]['mean']:.3f} | {summary[recipe]['min']:.3f} | {len(scores)} | "
              f"{len(collapsed)}{' (' + ', '.join(collapsed) + ')' if collapsed else ''} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()

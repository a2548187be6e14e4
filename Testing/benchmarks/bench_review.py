"""The review loop with a simulated reviewer: how close do boxes on a few cases plus reviewed predictions
come to full supervision, for how much hand work, and does the uncertainty ranking beat random order?

Cohort: ``--cases`` scans (default 16) made from the two real CT scans with a spine of docs/data.md
(the TPTBox spine CT's vertebrae, 1.5 mm, and the thoracic spine of slicerio's CTChest4, 10 mm slices):
each case a random crop holding at least the central half of the object's extent on every axis, with
a random intensity scale (0.9–1.1), shift (±30 HU) and noise (σ 0–20 HU). They are crops of two
subjects, not independent patients: the figures say how the loop behaves, not how it generalises.
``--held-out`` of them (default 4) are only ever scored; the rest is the pool. Every model trains at
one spacing, the median over the pool's scans (``--spacing`` to choose another): left to each run's
training cases (nnU-Net's per-run default), the canonical spacing moves with the cases a reviewer
happens to add — one run measured it moving from 1.5 mm to 3.05 × 3.05 × 10 mm as chest crops joined,
and the held-out Dice with it — and the orderings would not be compared on one footing.

Loop (``--rounds`` times, per ordering): train (default recipe ``auto``: BoxSup on the boxed cases,
cross-entropy on the accepted masks in the same batches) → ``rank`` the pool's unlabelled cases →
the reviewer takes ``--per-round`` of them, most uncertain first (``ranked``) or at random
(``random``), and *accepts* a prediction whose Dice against the reference is ≥ ``--accept-dice``
(0.90), otherwise *corrects* it (the reference mask is accepted: a full annotation). Start: tight
axial slice boxes on ``--boxed`` cases. After each round's training the held-out cases are
predicted and scored. Beside: ``full`` (cross-entropy on the reference masks of the whole pool).

Reports per round and ordering: held-out Dice, boxes drawn, predictions accepted, masks corrected;
the ranking's Spearman correlation between score and 1 − Dice over the ranked cases; the ratio of the
loop's final Dice to full supervision. Prints markdown, writes JSON.

    python Testing/benchmarks/bench_review.py --epochs 60 --json review.json
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
from common import bench_parser, parse
from scipy.stats import spearmanr

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import predict_file
from WeakSegLib.engine.predict.metrics import dice
from WeakSegLib.engine.predict.ranking import rank_dataset
from WeakSegLib.engine.samples.preprocess import target_spacing
from WeakSegLib.engine.train.training import train
from WeakSegLib.io import review
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.card import read_card
from WeakSegLib.io.dataset import Dataset, DatasetCase, load_dataset, save_dataset
from WeakSegLib.io.sample_data import materialize
from WeakSegLib.io.volume import Volume, axial_axis, read_header, read_label_volume, read_volume, write_volume

SOURCES = ("spine-ct", "chest-ct-spine")


def crop_case(image: Volume, mask: Volume, rng: np.random.Generator) -> tuple[Volume, Volume]:
    """A random crop holding the central half of the object's extent on every axis, with a random
    intensity scale, shift and noise (module docstring)."""
    take = []
    for axis in range(3):  # ITK index order (x, y, z) = array axes reversed
        along = np.flatnonzero(mask.array.any(tuple(a for a in range(3) if a != 2 - axis)))
        a, b, n = int(along[0]), int(along[-1]) + 1, mask.array.shape[2 - axis]
        lo = int(rng.integers(0, a + (b - a) // 4 + 1))
        hi = int(rng.integers(b - (b - a) // 4, n + 1))
        take.append(slice(lo, max(hi, lo + 8)))
    cut_image, cut_mask = (Volume.from_sitk(v.to_sitk()[tuple(take)]) for v in (image, mask))
    noisy = (cut_image.array * rng.uniform(0.9, 1.1) + rng.uniform(-30, 30)
             + rng.normal(0, rng.uniform(0, 20), cut_image.shape)).astype(np.float32)
    return cut_image.with_array(noisy), cut_mask


def make_cohort(folder: Path, count: int, seed: int) -> list[tuple[str, str, str]]:
    """``count`` cases ``(name, image, reference)`` written into ``folder``, alternating the sources."""
    rng = np.random.default_rng(seed)
    scans = {s: materialize(s, _mkdir(folder / "sources" / s)) for s in SOURCES}
    cases = []
    for i in range(count):
        source = scans[SOURCES[i % len(SOURCES)]]
        image, mask = crop_case(read_volume(source["image"]), read_label_volume(source["mask"]), rng)
        name = f"case{i:02d}"
        write_volume(image, folder / f"{name}.nii.gz")
        write_volume(mask, folder / "references" / f"{name}.nii.gz")
        cases.append((name, str(folder / f"{name}.nii.gz"), str(folder / "references" / f"{name}.nii.gz")))
    return cases


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def box_case(image: str, reference: str, out: Path) -> int:
    """Tight axial slice boxes of the reference saved to ``out``; returns how many were drawn."""
    mask = read_label_volume(reference)
    boxes = boxes_from_mask(mask.array, "slice", axial_axis(mask.direction))
    save_boxes(BoxSet(boxes, mask.shape, {1: "spine"}, mask.geometry()), out)
    return len(boxes)


def held_out_dice(model: Path, cases: list[tuple[str, str, str]], folder: Path) -> list[float]:
    scores = []
    for name, image, reference in cases:
        out = folder / f"{name}.nii.gz"
        predict_file(model, image, out, device="cpu")
        scores.append(dice(read_label_volume(out).array > 0, read_label_volume(reference).array > 0))
    return scores


def run_loop(order: str, pool, held, boxed: int, rounds: int, per_round: int, config: TrainConfig, folder: Path,
             accept_dice: float, seed: int, first_model: Path | None = None) -> list[dict]:
    """One ordering's loop (module docstring); one record per round (round 0: boxes only, its model
    ``first_model`` when given: the orderings share it). A record counts the reviews its model trained on."""
    _mkdir(folder)
    references = {name: ref for name, _, ref in pool}
    cases, boxes_drawn = [], 0
    for i, (name, image, reference) in enumerate(pool):
        files = {}
        if i < boxed:
            boxes_drawn += box_case(image, reference, folder / f"{name}.boxes.json")
            files["boxes"] = str(folder / f"{name}.boxes.json")
        cases.append(DatasetCase(name, "training" if files else "test", image, files))
    path = folder / "dataset.json"
    save_dataset(Dataset(path, cases), path)
    pick = random.Random(seed)
    accepted = corrected = 0
    records = []
    for round_ in range(rounds + 1):
        dataset = load_dataset(path)
        model = first_model if round_ == 0 and first_model is not None else folder / f"model-{round_}"
        began = time.perf_counter()
        if model != first_model:
            train([c.train_case() for c in dataset.split("training")], config, model, resume=False)
        card = read_card(model)
        seconds = time.perf_counter() - began
        scores = held_out_dice(model, held, _mkdir(folder / f"held-{round_}"))
        record = {"round": round_, "order": order, "held_out_dice": statistics.mean(scores),
                  "held_out": scores, "boxed_cases": boxed, "boxes_drawn": boxes_drawn, "accepted": accepted,
                  "corrected": corrected, "supervision": card.training["dataset"].get("supervision"),
                  "seconds": round(seconds, 1)}
        if round_ < rounds:
            ranked, _ = rank_dataset(model, dataset, folder / f"ranking-{round_}.csv", folder / f"pred-{round_}",
                                     split="test", device="cpu")
            truth = {r.name: dice(read_label_volume(r.prediction).array > 0,
                                  read_label_volume(references[r.name]).array > 0) for r in ranked}
            if len(ranked) > 2:
                record["spearman"] = float(spearmanr([r.score for r in ranked],
                                                     [1 - truth[r.name] for r in ranked]).statistic)
            record["ranked"] = [(r.name, round(r.score, 4), round(truth[r.name], 4)) for r in ranked]
            chosen = [r.name for r in ranked[:per_round]] if order == "ranked" else pick.sample(
                [r.name for r in ranked], min(per_round, len(ranked)))
            fresh = load_dataset(path)
            for name in chosen:
                if truth[name] >= accept_dice:
                    review.accept(fresh, name, by="simulated reviewer")
                    accepted += 1
                else:
                    review.accept(fresh, name, references[name], by="simulated reviewer (corrected)")
                    corrected += 1
            record["reviewed"] = [(n, round(truth[n], 4)) for n in chosen]
        records.append(record)
        print(f"  {order:6s} round {round_}: held-out Dice {record['held_out_dice']:.3f} trained on "
              f"{record['accepted']} accepted + {record['corrected']} corrected"
              + (f"; ranking Spearman {record['spearman']:.2f}" if "spearman" in record else "")
              + f" ({seconds:.0f} s training)", flush=True)
    return records


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--held-out", type=int, default=4)
    p.add_argument("--boxed", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=2)
    p.add_argument("--accept-dice", type=float, default=0.90)
    p.add_argument("--recipe", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, nargs=3, help="training spacing in mm, canonical axes (default: the "
                                                             "median over the pool's scans)")
    p.add_argument("--out", default="review-bench", help="working folder (kept: models, predictions, rankings)")
    args = parse(p)
    out = _mkdir(Path(args.out))
    cohort = make_cohort(_mkdir(out / "cohort"), args.cases, args.seed)
    held, pool = cohort[:args.held_out], cohort[args.held_out:]
    spacing = args.spacing or target_spacing([read_header(image) for _, image, _ in pool])
    print(f"  training spacing {[round(s, 2) for s in spacing]} mm for every model", flush=True)
    config = TrainConfig(recipe=args.recipe, epochs=args.epochs, seed=args.seed, device="cpu",
                         eval_every=args.epochs, spacing=tuple(spacing))
    began = time.perf_counter()
    full_model = out / "model-full"
    train([TrainCase(image, mask=ref) for _, image, ref in pool], TrainConfig(**{**vars(config), "recipe": "full"}),
          full_model, resume=False)
    full = statistics.mean(held_out_dice(full_model, held, _mkdir(out / "held-full")))
    print(f"  full supervision on the {len(pool)} pool cases: held-out Dice {full:.3f} "
          f"({time.perf_counter() - began:.0f} s)", flush=True)
    loops = {"ranked": run_loop("ranked", pool, held, args.boxed, args.rounds, args.per_round, config, out / "ranked",
                                args.accept_dice, args.seed)}
    loops["random"] = run_loop("random", pool, held, args.boxed, args.rounds, args.per_round, config, out / "random",
                               args.accept_dice, args.seed, first_model=out / "ranked" / "model-0")
    print(f"\nheld-out Dice ({len(held)} cases) per round; full supervision on all {len(pool)} pool cases: {full:.3f}\n")
    print("| round | order | held-out Dice | × full | boxed cases (boxes) | accepted | corrected | Spearman(score, 1 − Dice) |")
    print("|---|---|---|---|---|---|---|---|")
    for round_ in range(args.rounds + 1):
        for order, records in loops.items():
            r = records[round_]
            rho = f"{r['spearman']:.2f}" if "spearman" in r else "–"
            print(f"| {round_} | {order} | {r['held_out_dice']:.3f} | {r['held_out_dice'] / full:.3f} | "
                  f"{r['boxed_cases']} ({r['boxes_drawn']}) | {r['accepted']} | {r['corrected']} | {rho} |")
    rhos = [r["spearman"] for r in loops["ranked"] if "spearman" in r]
    if rhos:
        print(f"\nSpearman (ranked loop, rounds 0–{args.rounds - 1}): mean {statistics.mean(rhos):.2f}, "
              f"min {min(rhos):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "spacing": spacing, "full": full,
                                               "loops": loops}, indent=1))


if __name__ == "__main__":
    main()

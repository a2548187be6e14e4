"""Learning from sizes and from partial labels on real data (docs/methods.md §3, §4).

Sizes: on each case, m axial slices keep their mask and every other slice gets only its object size
(``sizes_from_mask``). Trained: ``full`` on every slice (upper bound), the m labelled slices alone
(``partial-ce`` on a label volume that marks those slices only), and m slices + sizes (recipe
``size``: pre-training on the m slices — and on the slices measured empty — for ``--pretrain``
epochs, then the size loss). IoU on the whole
volume against its mask; seconds per epoch of ``size`` (after pre-training) vs ``full`` on the same
slices.

Partial labels: ``partial_from_mask`` (erosion ``--erode``, background margin ``--margin``; the
annotation ratio is printed) → ``partial-ce``, ``sccl`` (bounds from the mask), ``accl-partial``,
``accl-unpaired`` (references: the case's mask mirrored left–right, drawn at random, so never the
slice's own), ``accl-paired`` (the true mask), beside ``full``. Dice on the whole volume.

    python Testing/benchmarks/bench_weak_labels.py --epochs 60 --json weak.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import bench_parser, parse

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import predict_file
from WeakSegLib.engine.predict.metrics import evaluate
from WeakSegLib.engine.train.training import train
from WeakSegLib.io.partial import PARTIAL_BACKGROUND, partial_from_mask
from WeakSegLib.io.sample_data import materialize
from WeakSegLib.io.sizes import SizeSet, save_sizes, sizes_from_mask
from WeakSegLib.io.volume import read_label_volume, write_volume

PARTIAL = ["partial-ce", "sccl", "accl-partial", "accl-unpaired", "accl-paired"]


def fit(name: str, case: TrainCase, config: TrainConfig, out: Path, image: str, mask) -> dict:
    began = time.perf_counter()
    card = train([case], config, out / name, resume=False)
    seconds = time.perf_counter() - began
    predict_file(out / name, image, out / f"{name}.nii.gz", device=config.device)
    scores = evaluate(read_label_volume(out / f"{name}.nii.gz").array, mask.array, mask.spacing)
    skip = config.settings().pretrain_epochs if config.recipe == "size" else 0  # time the size epochs only
    epochs = [h["seconds"] for h in card.history[skip:-1]] or [card.history[-1]["seconds"]]
    return {**scores, "seconds": seconds, "epoch_seconds": float(np.median(epochs))}


def size_study(case: str, m: int, epochs: int, pretrain: int, anchors: int, seed: int, out: Path) -> dict:
    sample = materialize(case, out)
    axis = sample["axis"]
    mask = read_label_volume(sample["mask"])
    planes = np.moveaxis(mask.array, axis, 0)
    with_object = np.flatnonzero(planes.reshape(planes.shape[0], -1).any(1))
    labelled = with_object[np.linspace(0, len(with_object) - 1, m + 2).round().astype(int)[1:-1]]
    few = np.zeros_like(planes)
    few[labelled] = planes[labelled]
    write_volume(mask.with_array(np.moveaxis(few, 0, axis).copy()), out / "few.nii.gz")
    only = np.zeros(planes.shape, np.uint8)  # partial labels: the m slices, background marked
    only[labelled] = np.where(planes[labelled] > 0, 1, PARTIAL_BACKGROUND)
    write_volume(mask.with_array(np.moveaxis(only, 0, axis).copy()), out / "only.nii.gz")
    others = [k for k in range(planes.shape[0]) if k not in set(labelled)]
    save_sizes(SizeSet(sizes_from_mask(mask.array, axis, slices=others), mask.shape, axis, {1: sample["object"]},
                       mask.geometry()), out / "sizes.json")
    base = dict(epochs=epochs, axis=axis, seed=seed, eval_every=epochs)
    image = sample["image"]
    runs = {
        "full (all slices)": (TrainCase(image, mask=sample["mask"]), TrainConfig(recipe="full", **base)),
        f"{m} labelled slices": (TrainCase(image, partial=str(out / "only.nii.gz")),
                                 TrainConfig(recipe="partial-ce", **base)),
        f"{m} labelled + sizes": (TrainCase(image, mask=str(out / "few.nii.gz"), sizes=str(out / "sizes.json")),
                                  TrainConfig(recipe="size", **base, recipe_settings={"pretrain_epochs": pretrain,
                                                                                       "size_anchors": anchors})),
    }
    results = {"labelled_slices": [int(k) for k in labelled], "slices": int(planes.shape[0])}
    for name, (tc, config) in runs.items():
        results[name] = fit(name.replace(" ", "-").replace("(", "").replace(")", ""), tc, config, out, image, mask)
        print(f"  {case:20s} {name:24s} IoU {results[name]['iou']:.3f}  Dice {results[name]['dice']:.3f}  "
              f"{results[name]['epoch_seconds']:.2f} s/epoch", flush=True)
    return results


def partial_study(case: str, epochs: int, erode: float, margin: float, seed: int, out: Path) -> dict:
    sample = materialize(case, out)
    axis = sample["axis"]
    mask = read_label_volume(sample["mask"])
    partial, ratio = partial_from_mask(mask.array, axis, erode, margin)
    write_volume(mask.with_array(partial), out / "partial.nii.gz")
    mirror = 2 if axis != 2 else 1  # left–right in the axial plane
    write_volume(mask.with_array(np.flip(mask.array, mirror).copy()), out / "mirrored.nii.gz")
    base = dict(epochs=epochs, axis=axis, seed=seed, eval_every=epochs)
    image = sample["image"]
    results = {"ratio": ratio.to_dict()}
    print(f"  {case:20s} annotation ratio {ratio.to_dict()}", flush=True)
    references = {"accl-unpaired": str(out / "mirrored.nii.gz"), "accl-paired": sample["mask"], "sccl": sample["mask"]}
    runs = {"full": (TrainCase(image, mask=sample["mask"]), TrainConfig(recipe="full", **base))}
    for recipe in PARTIAL:
        runs[recipe] = (TrainCase(image, partial=str(out / "partial.nii.gz"), reference=references.get(recipe)),
                        TrainConfig(recipe=recipe, **base))
    for name, (tc, config) in runs.items():
        results[name] = fit(name, tc, config, out, image, mask)
        print(f"  {case:20s} {name:16s} Dice {results[name]['dice']:.3f}  ({results[name]['seconds']:.0f} s)", flush=True)
    return results


def size_table(results: dict) -> str:
    cases = list(results)
    names = [k for k in results[cases[0]] if isinstance(results[cases[0]][k], dict)]
    lines = ["| training data | " + " | ".join(cases) + " | mean IoU | s/epoch (mean) |", "|---" * (len(cases) + 3) + "|"]
    for name in names:
        iou = [results[c][name]["iou"] for c in cases]
        sec = np.mean([results[c][name]["epoch_seconds"] for c in cases])
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in iou) + f" | {np.mean(iou):.3f} | {sec:.2f} |")
    ratio = [results[c][names[2]]["epoch_seconds"] / results[c][names[0]]["epoch_seconds"] for c in cases]
    lines.append("")
    lines.append("size epoch time / supervised epoch time: " + ", ".join(f"{c} {r:.2f}×" for c, r in zip(cases, ratio)))
    return "\n".join(lines)


def partial_table(results: dict) -> str:
    cases = list(results)
    lines = ["| recipe | " + " | ".join(cases) + " | mean ± sd | training time (s, mean) |", "|---" * (len(cases) + 3) + "|"]
    for recipe in ["full", *PARTIAL]:
        dice = [results[c][recipe]["dice"] for c in cases]
        sec = np.mean([results[c][recipe]["seconds"] for c in cases])
        lines.append(f"| {recipe} | " + " | ".join(f"{d:.3f}" for d in dice)
                     + f" | {np.mean(dice):.3f} ± {np.std(dice):.3f} | {sec:.0f} |")
    lines.append("")
    lines.append("annotation ratio (object voxels kept): " + ", ".join(
        f"{c} {results[c]['ratio']['object']:.1%}" for c in cases))
    return "\n".join(lines)


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--cases", nargs="+", default=["vertebral-body-ct", "vertebral-body-mri", "chest-ct-lungs"])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--pretrain", type=int, default=20, help="size: epochs on the labelled slices before sizes join")
    p.add_argument("--anchors", type=int, default=2, help="size: mask slices added to every size batch")
    p.add_argument("--m", type=int, default=3, help="size: fully labelled slices")
    p.add_argument("--erode", type=float, default=3.0)
    p.add_argument("--margin", type=float, default=10.0)
    p.add_argument("--only", choices=("size", "partial"), help="run one study")
    p.add_argument("--seed", type=int, default=0)
    args = parse(p)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "size"):
            results["size"] = {c: size_study(c, args.m, args.epochs, args.pretrain, args.anchors, args.seed, Path(tmp) / f"size-{c}")
                               for c in args.cases}
            print("\n" + size_table(results["size"]) + "\n", flush=True)
        if args.only in (None, "partial"):
            results["partial"] = {c: partial_study(c, args.epochs, args.erode, args.margin, args.seed,
                                                   Path(tmp) / f"partial-{c}") for c in args.cases}
            print("\n" + partial_table(results["partial"]) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), **results}, indent=1))


if __name__ == "__main__":
    main()

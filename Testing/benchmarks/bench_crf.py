"""DeepCut's proposal step: dense CRF over a stack of real CT slices with 1 process (in this process)
and with N worker processes over shared memory, same inputs, after a warm-up (worker start-up is
not timed). The settings alternate round by round (a shared machine drifts by tens of per cent
between minutes); speed-ups are medians of the per-round ratios. Prints a table and optionally JSON.

The stack: the axial slices of the slicerio chest CT resized to 256×256 (a clinical slice size),
with box-like probabilities for the lungs (the filled tight boxes, smoothed, plus noise): what
DeepCut's first revision sees.

    python Testing/benchmarks/bench_crf.py --processes 1 2 --repeats 5

Beside it, the hardware's own scaling: the same slices split over N independent processes started
together (no pool, no shared memory; each times only its CRF work, the slowest counts). The pool
cannot beat that reference; the ratio of the two is the pool's own efficiency.

``--kept`` adds a second table: how much of a *perfect* prediction (the reference mask with
probability c inside, 1 − c outside, each class allowed only in its tight box) the CRF keeps, on
every 4th object slice of small (vertebral bodies) and large (lungs) objects, with the paper's
settings and with a narrower bilateral kernel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import bench_parser, parse

from WeakSegLib.io.boxes import boxes_from_mask, rasterize
from WeakSegLib.io.sample_data import materialize
from WeakSegLib.io.volume import read_label_volume, read_volume
from WeakSegLib.recipes.crf import CRFPool, to_crf_intensity


def slice_stack(size: int, copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, probs, allowed)`` for the chest CT's axial slices at ``size``², ``copies`` times over."""
    from scipy import ndimage
    from skimage.transform import resize

    with tempfile.TemporaryDirectory() as tmp:
        s = materialize("chest-ct-lungs", tmp)
        image, mask = read_volume(s["image"]).array, read_label_volume(s["mask"]).array
    boxes = rasterize(boxes_from_mask(mask, "slice", s["axis"]), mask.shape, [1])[0]
    image, boxes = np.moveaxis(image, s["axis"], 0), np.moveaxis(boxes, s["axis"], 0)
    n = image.shape[0]
    image = resize(image, (n, size, size), order=1, preserve_range=True).astype(np.float32)
    boxes = resize(boxes.astype(float), (n, size, size), order=0) > 0.5
    rng = np.random.default_rng(0)
    p = np.clip(ndimage.gaussian_filter(boxes * 0.7 + 0.15, (0, 3, 3)) + rng.normal(0, 0.05, boxes.shape), 0, 1)
    probs = np.stack([1 - p, p], 1).astype(np.float32)
    allowed = np.stack([np.ones_like(boxes), boxes], 1)
    tile = (copies, 1, 1)
    return (to_crf_intensity(np.tile(image, tile)), np.tile(probs, (copies, 1, 1, 1)),
            np.tile(allowed, (copies, 1, 1, 1)))


def solo(part: int, parts: int, size: int, copies: int) -> None:
    """Refine slice ``part`` of ``parts`` of the stack serially and print the seconds (a subprocess)."""
    from WeakSegLib.recipes.crf import refine_slice

    images, probs, allowed = slice_stack(size, copies)
    mine = range(part, len(images), parts)
    print("ready", flush=True)
    sys.stdin.readline()  # all processes start their CRF work together
    start = time.perf_counter()
    for i in mine:
        refine_slice(images[i], probs[i], allowed[i])
    print(time.perf_counter() - start)


def independent(parts: int, size: int, copies: int) -> float:
    """Wall time of the CRF work split over ``parts`` independent processes (slowest one)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--solo", str(k), str(parts), "--size", str(size),
                               "--copies", str(copies)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for k in range(parts)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return max(float(p.communicate()[0].split()[-1]) for p in procs)


def kept_by_crf(case: str, confidence: float, params) -> tuple[float, float]:
    """(object fraction kept, Dice) of the CRF applied to a perfect prediction of ``case``."""
    from WeakSegLib.io.volume import normalize
    from WeakSegLib.recipes.crf import refine_slice

    with tempfile.TemporaryDirectory() as tmp:
        s = materialize(case, tmp)
        image = np.moveaxis(normalize(read_volume(s["image"]).array, "percentile"), s["axis"], 0)
        mask = read_label_volume(s["mask"]).array
    box = np.moveaxis(rasterize(boxes_from_mask(mask, "slice", s["axis"]), mask.shape, [1])[0], s["axis"], 0) > 0
    mask = np.moveaxis(mask > 0, s["axis"], 0)
    image = to_crf_intensity(image)
    kept, dice = [], []
    for k in [k for k in range(len(mask)) if mask[k].any()][::4]:
        p = np.where(mask[k], confidence, 1 - confidence).astype(np.float32)
        labels = refine_slice(np.ascontiguousarray(image[k]), np.stack([1 - p, p]),
                              np.stack([np.ones_like(box[k]), box[k]]), params) == 1
        kept.append(labels.sum() / mask[k].sum())
        dice.append(2 * (labels & mask[k]).sum() / (labels.sum() + mask[k].sum()))
    return float(np.mean(kept)), float(np.mean(dice))


def kept_table() -> dict:
    from dataclasses import replace

    from WeakSegLib.recipes.crf import CRFSettings

    settings = {"paper (sxy 10, compat 10)": CRFSettings(),
                "sxy 5, compat 5": replace(CRFSettings(), bilateral_sxy=5.0, bilateral_compat=5.0)}
    out = {}
    print("\nobject kept / Dice when the CRF refines a perfect prediction of confidence c:\n")
    print("| objects | c | " + " | ".join(settings) + " |")
    print("|---|---|" + "---|" * len(settings))
    for case in ("vertebral-body-ct", "chest-ct-lungs"):
        for c in (0.6, 0.75, 0.9):
            row = {name: kept_by_crf(case, c, params) for name, params in settings.items()}
            out[f"{case} {c}"] = row
            print(f"| {case} | {c} | " + " | ".join(f"{k:.2f} / {d:.2f}" for k, d in row.values()) + " |")
    return out


def main() -> None:
    p = bench_parser(__doc__, threads=False)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--copies", type=int, default=2, help="stack the 34 slices this many times")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kept", action="store_true", help="also the table of what the CRF keeps of a perfect prediction")
    p.add_argument("--solo", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parse(p)
    if args.solo:
        return solo(*args.solo, args.size, args.copies)
    images, probs, allowed = slice_stack(args.size, args.copies)
    every = range(len(images))
    pools = {n: CRFPool(images, 2, processes=n) for n in args.processes}
    try:
        labels = {n: pool.refine(probs, allowed, every)[0] for n, pool in pools.items()}  # warm-up
        times: dict[int, list[float]] = {n: [] for n in args.processes}
        alone: dict[int, list[float]] = {n: [] for n in args.processes}
        for _ in range(args.repeats):  # rounds: every setting once, so drifts of the machine hit all alike
            for n, pool in pools.items():
                times[n].append(pool.refine(probs, allowed, every)[1])
                alone[n].append(independent(n, args.size, args.copies))
    finally:
        for pool in pools.values():
            pool.close()
    first = args.processes[0]
    results = {n: {"median_s": statistics.median(times[n]), "times_s": times[n],
                   "speedup": statistics.median(a / b for a, b in zip(times[first], times[n])),
                   "same_labels": bool(np.array_equal(labels[n], labels[first])),
                   "independent_median_s": statistics.median(alone[n]), "independent_s": alone[n],
                   "independent_speedup": statistics.median(a / b for a, b in zip(alone[first], alone[n]))}
               for n in args.processes}
    print(f"dense CRF, {len(images)} slices {args.size}×{args.size}, 2 classes, 5 iterations, "
          f"median of {args.repeats} rounds (speed-ups: median of per-round ratios):\n")
    print("| processes | time per revision (s) | per slice (ms) | speed-up | labels identical "
          "| independent processes (s) | their speed-up |")
    print("|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['median_s']:.2f} | {1000 * r['median_s'] / len(images):.1f} | "
              f"{r['speedup']:.2f}× | {r['same_labels']} | {r['independent_median_s']:.2f} | "
              f"{r['independent_speedup']:.2f}× |")
    kept = kept_table() if args.kept else None
    if args.json:
        Path(args.json).write_text(json.dumps({"slices": len(images), "size": args.size, "results": results,
                                               "kept": kept}, indent=2))


if __name__ == "__main__":
    main()

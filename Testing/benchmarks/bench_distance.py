"""Chebyshev distance transform: WeakSegLib's batched torch version vs SciPy's
``distance_transform_cdt(metric="chessboard")`` looped over the batch, same masks, same run.

Masks: smoothed noise thresholded at densities from 20 % to 95 % (blobs of many sizes), 64 × 256 × 256.
Prints a table (median of the repeats) and checks both give the same distances.

    python Testing/benchmarks/bench_distance.py --repeats 5 [--device cuda]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import bench_parser, parse
from scipy import ndimage

from WeakSegLib.losses.distance import chebyshev_distance


def masks(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 6, 6))
    return np.stack([m > np.quantile(m, q) for m, q in zip(noise, rng.uniform(0.05, 0.8, n))])


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = parse(p)
    m = masks(args.batch, args.size)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_scipy, ref = timed(lambda: np.stack([ndimage.distance_transform_cdt(x, metric="chessboard") for x in m]),
                         args.repeats)
    gpu = torch.from_numpy(m).to(device)
    t_torch, got = timed(lambda: chebyshev_distance(gpu), args.repeats, sync)
    same = bool(np.array_equal(got.cpu().numpy(), ref))
    print(f"Chebyshev DT of {args.batch} masks {args.size}×{args.size}, median of {args.repeats}, "
          f"{args.threads} threads:\n")
    print("| implementation | time (ms) | ratio |\n|---|---|---|")
    print(f"| SciPy distance_transform_cdt, loop over the batch | {1000 * t_scipy:.1f} | 1.00 |")
    print(f"| WeakSegLib chebyshev_distance ({device.type}) | {1000 * t_torch:.1f} | "
          f"{t_scipy / t_torch:.2f}× faster |")
    print(f"\nidentical distances: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({"scipy_s": t_scipy, "torch_s": t_torch, "device": device.type,
                                               "identical": same}, indent=2))


if __name__ == "__main__":
    main()

"""Speed of the box constraints (printed table + JSON; not a pass/fail test).

1. One training step (forward, loss, backward, Adam) of the default recipe
   (tightness + size + emptiness) and of the MIL recipes (``gmil``: 5 angles × 2 families of crossing
   lines; ``polar-mil``: 90 rays) against plain cross-entropy, same network and batch.
2. The vectorised tightness prior (forward + backward) against the reference loop
   (Testing/helpers/reference_losses.py) on 8 images with 3 boxes each.

The compared functions run alternately in each round (a shared machine drifts); each time is the
median over rounds, each ratio the median of the per-round ratios. The vectorised prior runs
``--calls`` times per round: its steady-state time is the mean of all calls but the first, which is
reported on its own (it pays for the caches and threads the reference loop left cold).

    python Testing/benchmarks/bench_speed.py --json speed.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import bench_parser, parse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # the reference loops

from reference_losses import ref_tightness  # noqa: E402

from WeakSegLib.config import TrainConfig  # noqa: E402
from WeakSegLib.engine.predict.devices import resolve_device  # noqa: E402
from WeakSegLib.engine.samples.data import SampleSet  # noqa: E402
from WeakSegLib.engine.train.training import start_recipe  # noqa: E402
from WeakSegLib.losses.box_constraints import TightnessPrior  # noqa: E402
from WeakSegLib.nets.segmentation import build_network  # noqa: E402


def _clock(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def paired(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Time the functions alternately (one round = each once), so that drifts of a shared machine
    hit all of them alike; returns every timing per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_clock(fn, device))
    return times


def make_batch(batch: int, size: int, boxes_per_image: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        for _ in range(boxes_per_image):
            y0, x0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
            h, w = (int(v) for v in torch.randint(size // 8, size // 2, (2,), generator=g))
            rows.append([b, 0, y0, y0 + h, x0, x0 + w])
    boxes = torch.tensor(rows, dtype=torch.long)
    box_mask = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    for b, c, y0, y1, x0, x1 in rows:
        box_mask[b, c, y0:y1, x0:x1] = 1
    labels = box_mask[:, 0].long()
    image = torch.randn(batch, 1, size, size, generator=g)
    return {"image": image.to(device), "labels": labels.to(device), "box_mask": box_mask.to(device),
            "boxes": boxes.to(device), "valid": torch.ones(batch, size, size, dtype=torch.bool, device=device)}


#: the recipes whose training step is timed; the first is the reference
STEP_RECIPES = ("full", "tightness+size+emptiness", "gmil", "polar-mil")


def bench_step(args, device) -> dict:
    batch = make_batch(args.batch, args.size, 3, device)
    steps = {}
    for recipe in STEP_RECIPES:
        torch.manual_seed(0)
        net = build_network("unet", 2, 1, 2).to(device)
        config = TrainConfig(recipe=recipe).resolved()
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas)
        recipe_ = start_recipe(config, SampleSet.of_batch(batch), net, opt, device)

        def step(net=net, opt=opt, recipe_=recipe_):
            loss, _ = recipe_.loss(net(batch["image"]), batch, config.t0, weak=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[recipe] = step
    return paired(steps, args.repeats, 3, device)


def bench_tightness(args, device) -> dict:
    """Per round and mode (fwd+bwd, fwd): the reference loop once, then the vectorised prior
    ``args.calls`` times in a row. Its first call (just after the reference loop: cold caches and
    idle worker threads) is kept apart from the mean of the others (steady state, as in training,
    where the prior runs right after the network's forward pass)."""
    batch = make_batch(8, args.size, 3, device)
    s = torch.rand(8, 1, args.size, args.size, device=device, requires_grad=True)
    vec = TightnessPrior(5, 1e-4)
    boxes_cpu = batch["boxes"].cpu()

    def run(loss_fn, backward):
        def fn():
            s.grad = None
            loss = loss_fn()
            if backward:
                loss.backward()
        return fn

    times: dict[str, list[float]] = {}
    rounds = max(5, args.repeats // 3)
    for r in range(rounds + 1):  # round 0 warms up
        for mode, backward in (("fwd+bwd", True), ("fwd", False)):
            ref = _clock(run(lambda: ref_tightness(s, boxes_cpu, 5, 1e-4, 5.0), backward), device)
            calls = [_clock(run(lambda: vec(s, batch["boxes"], 5.0), backward), device) for _ in range(args.calls)]
            if r:
                times.setdefault(f"reference {mode}", []).append(ref)
                times.setdefault(f"vectorised {mode}", []).append(statistics.mean(calls[1:]))
                times.setdefault(f"vectorised {mode}, first call", []).append(calls[0])
    return times


def median_ratio(times: dict, num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="auto")
    p.add_argument("--calls", type=int, default=10, help="vectorised prior calls in a row per round (≥ 2)")
    args = parse(p)
    if args.calls < 2:
        p.error("--calls must be ≥ 2 (the first call is reported apart from the others)")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    step = bench_step(args, device)
    tight = bench_tightness(args, device)
    med = {k: statistics.median(v) for k, v in {**step, **tight}.items()}
    ratios = {recipe: median_ratio(step, recipe, "full") for recipe in STEP_RECIPES[1:]}
    speedup = median_ratio(tight, "reference fwd+bwd", "vectorised fwd+bwd")
    speedup_fwd = median_ratio(tight, "reference fwd", "vectorised fwd")
    speedup_first = median_ratio(tight, "reference fwd+bwd", "vectorised fwd+bwd, first call")
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}×1×{args.size}×{args.size}, "
          f"3 boxes per image; medians of {args.repeats} interleaved rounds (ratios: median of per-round ratios)\n")
    print("| measurement | time (ms) | ratio |\n|---|---|---|")
    print(f"| training step, plain CE (`full`) | {med['full'] * 1e3:.1f} | 1.00 |")
    for recipe, ratio in ratios.items():
        print(f"| training step, `{recipe}` | {med[recipe] * 1e3:.1f} | {ratio:.3f}× CE |")
    print(f"| tightness prior fwd+bwd, reference loop | {med['reference fwd+bwd'] * 1e3:.1f} | 1.00 |")
    print(f"| tightness prior fwd+bwd, vectorised | {med['vectorised fwd+bwd'] * 1e3:.2f} | {speedup:.0f}× faster |")
    print(f"| tightness prior fwd+bwd, vectorised, first call after the loop | "
          f"{med['vectorised fwd+bwd, first call'] * 1e3:.2f} | {speedup_first:.0f}× faster |")
    print(f"| tightness prior fwd, reference loop | {med['reference fwd'] * 1e3:.1f} | 1.00 |")
    print(f"| tightness prior fwd, vectorised | {med['vectorised fwd'] * 1e3:.2f} | {speedup_fwd:.0f}× faster |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                               "median_seconds": med, "step_ratios": ratios,
                                               "tightness_speedup": speedup, "tightness_speedup_forward": speedup_fwd,
                                               "tightness_speedup_first_call": speedup_first},
                                              indent=2))


if __name__ == "__main__":
    main()

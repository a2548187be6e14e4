"""Distributed training throughput: training samples per second with 1 and N processes.

Every run is the real command line, ``python -m WeakSegLib train --gpus N`` (PyTorch's elastic launcher
and ``DistributedDataParallel``; gloo with ``--device cpu``, NCCL on CUDA GPUs), on the same cases (the
TPTBox spine CT, repeated ``--cases`` times), default recipe, global batch ``--batch-size``. Samples per
second are taken from the epoch times of the events (reading the cohort excluded; the first epoch is
left out as a warm-up); runs alternate between the process counts, ``--rounds`` times; the scaling is
the median over rounds of rate(N) / rate(1).

On a CPU-only machine every process shares the same cores: the figure measures the machine, not the
code (the launcher gives each process one thread unless ``OMP_NUM_THREADS`` is set; the 1-process run
keeps ``--threads`` threads).

    python Testing/benchmarks/bench_distributed.py --device cpu --processes 1 2
    python Testing/benchmarks/bench_distributed.py --device cuda --processes 1 2 4 --cases 8
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import bench_parser, parse

from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.sample_data import materialize
from WeakSegLib.io.volume import axial_axis, read_label_volume

REPO = Path(__file__).resolve().parents[2]


def dataset(folder: Path, copies: int) -> Path:
    """A dataset of ``copies`` training cases, each the spine CT with tight axial slice boxes."""
    sample = materialize("spine-ct", folder / "sample")
    mask = read_label_volume(sample["mask"])
    boxes = folder / "boxes.json"
    save_boxes(BoxSet(boxes_from_mask((mask.array > 0).astype("uint8"), "slice", axial_axis(mask.direction)),
                      mask.shape, {1: "vertebrae"}, mask.geometry()), boxes)
    entry = {"image": str(sample["image"]), "boxes": str(boxes)}
    path = folder / "dataset.json"
    path.write_text(json.dumps({"training": [{**entry, "name": f"case{i}"} for i in range(copies)]}))
    return path


def rate(data: Path, out: Path, n: int, args) -> float:
    """Training samples per second of one run on ``n`` processes (epochs after the first)."""
    events = out.parent / f"{out.name}.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if n == 1:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "WeakSegLib", "train", "--dataset", str(data), "--out", str(out), "--device",
           args.device, "--gpus", str(n), "--epochs", str(args.epochs), "--epoch-batches", str(args.epoch_batches),
           "--batch-size", str(args.batch_size), "--quiet", "--no-resume", "--events", str(events)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    epochs = [json.loads(line) for line in events.read_text().splitlines()]
    seconds = sum(e["seconds"] for e in epochs if e.get("event") == "epoch" and e["epoch"] > 1)
    events.unlink()
    return (args.epochs - 1) * args.epoch_batches * args.batch_size / seconds


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cases", type=int, default=4, help="copies of the spine CT in the dataset")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (a multiple of every process count)")
    p.add_argument("--rounds", type=int, default=3)
    args = parse(p)
    rates: dict[int, list[float]] = {n: [] for n in args.processes}
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp), args.cases)
        for r in range(args.rounds):
            for n in args.processes if r % 2 == 0 else args.processes[::-1]:
                rates[n].append(rate(data, Path(tmp) / f"model-{n}", n, args))
                print(f"  round {r + 1}: {n} process(es) {rates[n][-1]:.1f} samples/s", flush=True)
    base = args.processes[0]
    print(f"\n| processes ({args.device}) | samples/s (median) | scaling vs {base} (median of rounds) |\n|---|---|---|")
    result = {}
    for n in args.processes:
        scaling = statistics.median(a / b for a, b in zip(rates[n], rates[base]))
        result[n] = {"samples_per_s": statistics.median(rates[n]), "scaling": scaling, "rounds": rates[n]}
        print(f"| {n} | {result[n]['samples_per_s']:.1f} | {scaling:.2f}× (ideal {n / base:.0f}×) |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

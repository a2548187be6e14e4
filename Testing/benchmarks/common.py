"""What every benchmark's command line shares: ``--threads`` (torch's CPU threads, set before any work)
and ``--json`` (where to write the numbers)."""

import argparse
import tempfile
from pathlib import Path

import torch


def bench_parser(doc: str, threads: bool = True) -> argparse.ArgumentParser:
    """A parser described by the benchmark's docstring, with ``--json`` (and ``--threads``)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if threads:
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", help="write the results here")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed options; torch's thread count set from ``--threads`` when the parser has it."""
    args = p.parse_args()
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args


def run_each(names: list[str], run) -> dict:
    """``{name: run(name, folder)}``, each run in its own fresh folder of one temporary directory
    (removed afterwards)."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            folder = Path(tmp) / name
            folder.mkdir()
            results[name] = run(name, folder)
    return results

"""Mutation testing of the data path: how many small, realistic bugs the tests catch, module by module.

cosmic-ray (the test extra) makes the mutants: an operator, a comparison, a number, a boolean, a
keyword replaced, one at a time, in the modules of :data:`MODULES` — the canonical space and the
cohort, inference back onto the input grid and its post-processing, evaluation and metrics, box files
and box resampling, atomic writes and folder locks, the box-constraint and MIL losses. Each mutant runs
only the tests that execute its lines (``mutation_runner.py``; one coverage run of ``Testing/core`` and
``Testing/robustness`` without the slow accuracy tests, a context per test, maps every line to its
tests and times each test), the fastest first and as many as fit in ``--budget`` seconds of their
measured time (at least one), and is killed when one of them fails or runs past ``--timeout``. The
budget keeps a line that every training test runs from costing an hour a mutant; it can only leave a
mutant alive that a slower test would have killed (the kill rate is a lower bound). A module with more than
``--sample`` mutants is measured on a fixed random sample of them (``--seed``), so the whole run takes
hours, not days (30 per module: about 2 h for the first nine modules on one core). Everything happens
in a copy of the working tree (cosmic-ray mutates files in place).

Prints a table per module (mutants measured of all it has, killed, survived, kill rate) and every
surviving mutant: file, line, operator, the change. A mutant inside a type annotation of a module that
never evaluates them (``from __future__ import annotations``) cannot change behaviour: it is counted
apart and left out of the kill rate.

    python Testing/benchmarks/bench_mutation.py [--sample 40] [--seed 0] [--modules WeakSegLib/io/atomic.py …]
                                                [--json mutation.json]
"""

from __future__ import annotations

import ast
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bench_parser

REPO = Path(__file__).resolve().parents[2]
#: the data path's modules, by concern
MODULES = {
    "canonical space": ["WeakSegLib/engine/samples/preprocess.py"],
    "cohort preparation": ["WeakSegLib/engine/samples/cohort.py"],
    "inference onto the input grid": ["WeakSegLib/engine/predict/inference.py", "WeakSegLib/engine/predict/postprocess.py"],
    "evaluation and metrics": ["WeakSegLib/engine/predict/evaluation.py", "WeakSegLib/engine/predict/metrics.py"],
    "box files and resampling": ["WeakSegLib/io/boxes.py"],
    "atomic writes and locks": ["WeakSegLib/io/atomic.py", "WeakSegLib/io/lock.py"],
    "box-constraint and MIL losses": ["WeakSegLib/losses/box_constraints.py", "WeakSegLib/losses/mil.py"],
}
#: the tests whose coverage decides which test runs which line
TESTS = ["Testing/core", "Testing/robustness", "-m", "not slow"]


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, text=True, capture_output=True, **kw)


def workspace(into: Path) -> Path:
    """A copy of the working tree: the files git tracks and the untracked ones it does not ignore."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO, check=True).stdout
    for name in listed.splitlines():
        if (REPO / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, into / name)
    return into


def coverage_map(space: Path, modules: list[str]) -> dict:
    """``{"lines": {module: {line: [test node ids]}}, "seconds": {test node id: seconds}}``: which test
    executes which line of each module, and how long each test takes (setup, call and teardown)."""
    data = space / ".mutation-coverage"
    (space / ".mutation-coveragerc").write_text("[json]\nshow_contexts = True\n")  # the tests of each line
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", "--cov=WeakSegLib",
           f"--cov-config={space / '.mutation-coveragerc'}", "--cov-context=test", f"--cov-report=json:{data}.json",
           "--durations=0", "--durations-min=0", *TESTS]
    result = run(cmd, space, env={**_env(space), "COVERAGE_FILE": str(data)})
    if not Path(f"{data}.json").is_file():
        raise RuntimeError(f"the coverage run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    files = json.loads(Path(f"{data}.json").read_text())["files"]
    lines: dict[str, dict[str, list[str]]] = {}
    for module in modules:
        contexts = files.get(module, {}).get("contexts", {})
        lines[module] = {line: sorted({c.split("|")[0] for c in tests if c}) for line, tests in contexts.items()}
    seconds: dict[str, float] = {}
    for row in result.stdout.splitlines():  # "0.52s call     Testing/core/test_x.py::test_y[a]"
        parts = row.split()
        if len(parts) == 3 and parts[0].endswith("s") and parts[1] in ("setup", "call", "teardown"):
            seconds[parts[2]] = seconds.get(parts[2], 0.0) + float(parts[0][:-1])
    return {"lines": lines, "seconds": seconds}


def _env(space: Path) -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(space), "PYTHONDONTWRITEBYTECODE": "1"}


def mutate(space: Path, module: str, mapping: Path, sample: int, seed: int, timeout: float, budget: float) -> dict:
    """Make the module's mutants, keep a sample, run them; the counts and the survivors."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    name = module.replace("/", "_")
    config, db = space / f"{name}.toml", space / f"{name}.sqlite"
    pristine = space / ".pristine" / module
    pristine.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(space / module, pristine)
    command = f"{sys.executable} Testing/benchmarks/mutation_runner.py {mapping} {module} {pristine} {budget}"
    config.write_text("[cosmic-ray]\n"
                      f'module-path = "{module}"\n'
                      f"timeout = {timeout}\n"
                      "excluded-modules = []\n"
                      f"test-command = {json.dumps(command)}\n\n"
                      '[cosmic-ray.distributor]\nname = "local"\n')
    run(["cosmic-ray", "init", config, db], space, check=True, env=_env(space))
    with use_db(str(db), WorkDB.Mode.open) as work:
        jobs = [item.job_id for item in work.work_items]
        kept = set(random.Random(seed).sample(jobs, sample)) if len(jobs) > sample else set(jobs)
        work.set_multiple_results([j for j in jobs if j not in kept], WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    began = time.perf_counter()
    run(["cosmic-ray", "exec", config, db], space, check=True, env=_env(space))
    seconds = time.perf_counter() - began
    counts = {"total": len(jobs), "measured": 0, "killed": 0, "survived": 0, "incompetent": 0, "annotation": 0,
              "seconds": seconds}
    survivors = []
    annotations = annotation_spans(pristine.read_text())
    with use_db(str(db), WorkDB.Mode.open) as work:
        for item, result in work.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            counts["measured"] += 1
            spec = item.mutations[0]
            if in_spans(annotations, tuple(spec.start_pos)):
                counts["annotation"] += 1  # not a behaviour: never evaluated
                continue
            outcome = result.test_outcome or TestOutcome.INCOMPETENT
            counts[outcome.value] += 1
            if outcome == TestOutcome.SURVIVED:
                covered = "no test runs" not in (result.output or "")
                survivors.append({"file": module, "line": spec.start_pos[0], "column": spec.start_pos[1],
                                  "operator": spec.operator_name, "change": _change(result.diff), "covered": covered})
    scored = counts["killed"] + counts["survived"]
    counts["kill_rate"] = counts["killed"] / scored if scored else None
    return {"counts": counts, "survivors": sorted(survivors, key=lambda s: s["line"])}


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``((line, column), (end line, end column))`` of every type annotation of a module whose annotations
    are never evaluated (``from __future__ import annotations``); none for any other module, where a
    mutated annotation can fail on import."""
    tree = ast.parse(source)
    lazy = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(a.name == "annotations" for a in node.names) for node in tree.body)
    if not lazy:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found if a is not None]


def in_spans(spans: list[tuple[tuple[int, int], tuple[int, int]]], position: tuple[int, int]) -> bool:
    """Whether ``(line, column)`` lies inside one of ``spans``."""
    return any(start <= position < end for start, end in spans)


def _change(diff: str | None) -> str:
    """The diff's removed and added line, side by side."""
    lines = (diff or "").splitlines()
    old = next((line[1:].strip() for line in lines if line.startswith("-") and not line.startswith("---")), "")
    new = next((line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")), "")
    return f"{old}  →  {new}"


def _survivor(s: dict) -> str:
    return f"{s['file']}:{s['line']} {s['operator']}: {s['change']}" + ("" if s["covered"] else "  (no test runs it)")


def main() -> None:
    p = bench_parser(__doc__, threads=False)
    p.add_argument("--sample", type=int, default=40, help="mutants measured per module at most (default 40)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a mutant's tests may take (then: killed)")
    p.add_argument("--budget", type=float, default=30.0, help="measured seconds of covering tests run per mutant "
                                                             "(fastest first; default 30)")
    p.add_argument("--modules", nargs="+", help="only these modules (paths as in MODULES)")
    p.add_argument("--map", help="the coverage map (line → tests) to reuse when this file exists, else to write "
                                 "(it holds for the code it was made from)")
    args = p.parse_args()
    chosen = [m for ms in MODULES.values() for m in ms if not args.modules or m in args.modules]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="weakseg-mutation-") as tmp:
        space = workspace(Path(tmp))
        mapping = space / ".mutation-map.json"
        if args.map and Path(args.map).is_file():
            shutil.copy2(args.map, mapping)
        else:
            print(f"coverage of {' '.join(TESTS)} …", flush=True)
            mapping.write_text(json.dumps(coverage_map(space, [m for ms in MODULES.values() for m in ms])))
            if args.map:
                shutil.copy2(mapping, args.map)
        for module in chosen:
            results[module] = mutate(space, module, mapping, args.sample, args.seed, args.timeout, args.budget)
            c = results[module]["counts"]
            print(f"  {module}: {c['killed']}/{c['killed'] + c['survived']} killed ({c['measured']} of {c['total']} "
                  f"mutants, {c['annotation']} in annotations, {c['incompetent']} incompetent, {c['seconds']:.0f} s)",
                  flush=True)
            for s in results[module]["survivors"]:
                print(f"    survived {_survivor(s)}", flush=True)
    print("\n| concern | module | mutants measured / all | in annotations | killed | survived | kill rate |\n"
          "|---|---|---|---|---|---|---|")
    for concern, modules in MODULES.items():
        for module in [m for m in modules if m in results]:
            c = results[module]["counts"]
            rate = "–" if c["kill_rate"] is None else f"{100 * c['kill_rate']:.0f} %"
            print(f"| {concern} | {module} | {c['measured']} / {c['total']} | {c['annotation']} | {c['killed']} "
                  f"| {c['survived']} | {rate} |")
    print("\nsurviving mutants:")
    for module, result in results.items():
        for s in result["survivors"]:
            print(f"  {_survivor(s)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Training on a cohort: memory, throughput and cross-subject accuracy of the cohort pipeline.

Every run is the real command line (``python -m WeakSegLib``) in its own process:

* ``memory``: peak RSS (``wait4``) of ``weakseg train --dataset`` on N = 2, 4, 8, 16 cases, with the
  samples streamed from disk (``--cache-gb 0``) and held in memory (``--cache-gb 1000``: the path
  every run took before the cohort pipeline). The cases are copies of the TPTBox spine CT, each
  resampled to its own isotropic spacing (1.2–1.8 mm) and trained at ``--spacing`` (default 0.75 mm):
  about 2 M voxels per case once resampled.
* ``speed``: training slices per second (epoch times of the events, reading excluded) of the two
  paths on the same 4 cases, in interleaved rounds; the ratio is the median of the per-round ratios.
* ``cross``: cross-subject accuracy. The thoracic spine of the slicerio chest CT (stored RAS, 10 mm
  slices, −3024 outside the field of view) and the lumbar vertebrae of the TPTBox spine CT (1.5 mm):
  train on one with tight axial slice boxes, ``predict --dataset`` the other, both directions; and
  the three vertebral bodies of the spine CT as crops of their own slices, leave-one-out
  (``--pairs-only``: the two subjects only). The default box recipe (``auto``, or ``--recipe``) beside
  ``full`` (trained on the masks); each prediction is scored as the network gives it and after the
  post-processing the model decided on its training cases (Dice / HD95 mm → Dice / HD95 (step)). With
  ``--reference-checkout DIR`` (a checkout of the code before the cohort pipeline, e.g. ``git worktree
  add /tmp/before 3c1ed0a``), the same cases run through that code too (its ``train --image … --axis
  auto`` and ``predict --image``).

    python Testing/benchmarks/bench_cohort.py --parts memory speed
    python Testing/benchmarks/bench_cohort.py --parts cross --reference-checkout /tmp/before --json cross.json
    python Testing/benchmarks/bench_cohort.py --parts cross --pairs-only --json pairs.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from common import bench_parser, parse

from WeakSegLib.engine.predict.evaluation import evaluate_cases
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.sample_data import materialize, materialize_objects
from WeakSegLib.io.volume import Volume, axial_axis, read_label_volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[2]
SIZES = (2, 4, 8, 16)


def weakseg(args: list, code: Path = REPO, check: bool = True) -> tuple[int, float]:
    """Run ``python -m WeakSegLib args`` with the package of checkout ``code``; its exit code and peak RSS
    (MB)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen([sys.executable, "-m", "WeakSegLib", *map(str, args)], cwd=code, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if check and proc.returncode != 0:
        raise RuntimeError(f"weakseg {' '.join(map(str, args))} failed:\n{err.decode()[-3000:]}")
    return proc.returncode, usage.ru_maxrss / 1024.0


def boxed_case(folder: Path, name: str, image: Volume, mask: np.ndarray) -> dict:
    """Write image, mask and tight axial slice boxes of one case; its dataset entry."""
    write_volume(image, folder / f"{name}.nii.gz")
    write_volume(image.with_array(mask.astype(np.uint8)), folder / f"{name}_mask.nii.gz")
    boxes = boxes_from_mask(mask.astype(np.uint8), "slice", axial_axis(image.direction))
    save_boxes(BoxSet(boxes, mask.shape, {1: "vertebrae"}, image.geometry()), folder / f"{name}.boxes.json")
    return {"name": name, "image": f"{name}.nii.gz", "mask": f"{name}_mask.nii.gz", "boxes": f"{name}.boxes.json"}


def resample(volume: Volume, spacing: float, labels: bool) -> Volume:
    image = volume.to_sitk()
    size = [int(round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                        image.GetOrigin(), (spacing,) * 3, image.GetDirection(), 0, image.GetPixelID())
    return Volume(sitk.GetArrayFromImage(out), (spacing,) * 3, volume.origin, volume.direction)


def spine_copies(folder: Path, n: int) -> Path:
    """A dataset of ``n`` resampled copies of the spine CT (training cases with boxes and masks)."""
    sample = materialize("spine-ct", folder / "sample")
    image, mask = read_volume(sample["image"]), read_label_volume(sample["mask"])
    entries = []
    for i in range(n):
        spacing = 1.2 + 0.6 * i / max(n - 1, 1)
        entries.append(boxed_case(folder, f"spine{i:02d}", resample(image, spacing, False),
                                  resample(mask, spacing, True).array > 0))
    path = folder / "dataset.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def train_args(dataset: Path, out: Path, cache_gb: float, args) -> list:
    return ["train", "--dataset", dataset, "--out", out, "--epochs", args.epochs_cohort, "--epoch-batches",
            args.epoch_batches, "--spacing", *([args.spacing] * 3), "--cache-gb", cache_gb, "--quiet", "--no-resume",
            "--events", out.parent / f"{out.name}.jsonl"]


def memory(args, tmp: Path) -> dict:
    rows = {}
    for n in SIZES:
        dataset = spine_copies(tmp / f"n{n}", n)
        rows[n] = {}
        for mode, cache in (("disk", 0.0), ("memory", 1000.0)):
            _, rss = weakseg(train_args(dataset, tmp / f"n{n}" / f"model-{mode}", cache, args))
            rows[n][mode] = rss
            print(f"  N={n:2d} {mode:6s} peak RSS {rss:7.0f} MB", flush=True)
    print("\n| cases | peak RSS, streamed from disk (MB) | peak RSS, in memory (MB) |\n|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['disk']:.0f} | {r['memory']:.0f} |")
    ratio = {mode: rows[SIZES[-1]][mode] / rows[SIZES[0]][mode] for mode in ("disk", "memory")}
    print(f"RSS({SIZES[-1]}) / RSS({SIZES[0]}): from disk {ratio['disk']:.2f}, in memory {ratio['memory']:.2f}\n")
    return {"rss_mb": rows, "ratio": ratio}


def slices_per_second(events: Path, batch_size: int, epoch_batches: int) -> float:
    epochs = [json.loads(line) for line in events.read_text().splitlines() if '"epoch"' in line]
    seconds = sum(e["seconds"] for e in epochs if e.get("event") == "epoch")
    return len([e for e in epochs if e.get("event") == "epoch"]) * epoch_batches * batch_size / seconds


def speed(args, tmp: Path) -> dict:
    dataset = spine_copies(tmp / "speed", 4)
    rates: dict[str, list[float]] = {"disk": [], "memory": []}
    for r in range(args.rounds + 1):  # round 0 warms the file cache up
        for mode, cache in (("disk", 0.0), ("memory", 1000.0)) if r % 2 else (("memory", 1000.0), ("disk", 0.0)):
            out = tmp / "speed" / f"model-{mode}"
            weakseg(train_args(dataset, out, cache, args))
            if r:
                rates[mode].append(slices_per_second(out.parent / f"{out.name}.jsonl", 8, args.epoch_batches))
    ratios = [d / m for d, m in zip(rates["disk"], rates["memory"])]
    result = {mode: statistics.median(v) for mode, v in rates.items()}
    result["ratio"] = statistics.median(ratios)
    print(f"| 4 cases | slices/s from disk {result['disk']:.1f} | in memory {result['memory']:.1f} | "
          f"ratio {result['ratio']:.2f} (median of {args.rounds} interleaved rounds) |\n")
    return result


# ---- cross-subject -------------------------------------------------------------------------------

def subjects(folder: Path) -> dict[str, dict]:
    """The two subjects' scans with their spine masks (label 1) and boxes."""
    out = {}
    for name in ("spine-ct", "chest-ct-spine"):
        sample = materialize(name, folder / name)
        image = read_volume(sample["image"])
        out[name] = boxed_case(folder, name, image, read_label_volume(sample["mask"]).array > 0)
    return out


def vertebral_body_crops(folder: Path) -> dict[str, dict]:
    """Each vertebral body of the spine CT in a crop of the axial slices it spans (± 2)."""
    objects = materialize_objects("vertebral-bodies-ct", folder / "objects")
    image, labels = read_volume(objects["image"]), read_label_volume(objects["mask"]).array
    axis = objects["axis"]
    out = {}
    for value in objects["labels"]:
        along = np.flatnonzero(np.moveaxis(labels == value, axis, 0).any((1, 2)))
        lo, hi = max(0, along[0] - 2), min(labels.shape[axis], along[-1] + 3)
        take = [slice(None)] * 3
        take[axis] = slice(lo, hi)
        crop = image.array[tuple(take)]
        index = [0, 0, 0]
        index[2 - axis] = int(lo)  # ITK index order
        origin = image.to_sitk().TransformIndexToPhysicalPoint(index)
        vol = Volume(np.ascontiguousarray(crop), image.spacing, origin, image.direction)
        out[f"body{value}"] = boxed_case(folder, f"body{value}", vol, labels[tuple(take)] == value)
    return out


def run_pair(folder: Path, train_cases: list[dict], test_case: dict, recipe: str, code: Path, new: bool,
             epochs: int) -> dict:
    """Train ``recipe`` on ``train_cases``, predict ``test_case`` with the code of ``code``; its Dice and
    HD95 (mm), and with the new code also after the post-processing the model decided on its training
    cases (``post_dice``, ``post_hd95``, ``steps``)."""
    model, preds = folder / "model", folder / "preds"
    scores = {}
    if new:
        dataset = folder.parent / f"{folder.name}.json"  # beside the case files its paths name
        test = {k: test_case[k] for k in ("name", "image", "mask")}
        dataset.write_text(json.dumps({"training": train_cases, "test": [test]}))
        weakseg(["train", "--dataset", dataset, "--recipe", recipe, "--out", model, "--epochs", epochs, "--quiet",
                 "--no-resume", "--eval-every", epochs], code)  # scored once, by predict + evaluate
        weakseg(["predict", "--model", model, "--dataset", dataset, "--out-dir", folder / "post"], code)
        post = evaluate_cases(folder / "post", [(test_case["name"], str(folder.parent / test_case["mask"]))], [1])
        steps = json.loads((model / "model.json").read_text()).get("postprocess", {}).get("steps", {})
        scores = {"post_dice": post.scores[0].dice, "post_hd95": post.scores[0].hd95, "steps": steps.get("1")}
        weakseg(["predict", "--model", model, "--dataset", dataset, "--out-dir", preds, "--no-postprocess"], code)
    else:
        base = folder.parent
        given = [a for c in train_cases for a in ("--image", base / c["image"],
                                                   *(("--mask", base / c["mask"]) if recipe == "full"
                                                     else ("--boxes", base / c["boxes"])))]
        weakseg(["train", *given, "--recipe", recipe, "--out", model, "--epochs", epochs, "--axis", "auto",
                 "--quiet", "--no-resume"], code)
        preds.mkdir()
        weakseg(["predict", "--model", model, "--image", base / test_case["image"], "--out",
                 preds / f"{test_case['name']}.nii.gz", "--quiet"], code)
    result = evaluate_cases(preds, [(test_case["name"], str(folder.parent / test_case["mask"]))], [1])
    return {"dice": result.scores[0].dice, "hd95": result.scores[0].hd95, **scores}


def cross(args, tmp: Path) -> dict:
    codes = [("new", REPO, True)] + ([("before", Path(args.reference_checkout), False)] if args.reference_checkout
                                     else [])
    recipes = (args.recipe, "full")
    data = tmp / "cross"
    data.mkdir()
    subject = subjects(data)
    bodies = vertebral_body_crops(data)
    tasks = [(f"{a} → {b}", [subject[a]], subject[b]) for a, b in (("spine-ct", "chest-ct-spine"),
                                                                    ("chest-ct-spine", "spine-ct"))]
    if not args.pairs_only:
        tasks += [(f"vertebral bodies, leave {k} out", [c for n, c in bodies.items() if n != k], bodies[k])
                  for k in bodies]
    results: dict = {}
    for title, train_cases, test_case in tasks:
        for code_name, code, new in codes:
            for recipe in recipes:
                run = data / f"run-{len(results)}-{code_name}-{recipe}"
                run.mkdir()
                score = run_pair(run, train_cases, test_case, recipe, code, new, args.epochs)
                results.setdefault(title, {}).setdefault(code_name, {})[recipe] = score
                print(f"  {title:36s} {code_name:6s} {recipe:26s} " + _shown(score), flush=True)
    header = " | ".join(f"{recipe} ({code})" for code, _, _ in codes for recipe in recipes)
    print(f"\n| train → predict | {header} |\n|---|" + "---|" * (len(codes) * len(recipes)))
    for title, by_code in results.items():
        print(f"| {title} | " + " | ".join(_shown(by_code[c][r]) for c, _, _ in codes for r in recipes) + " |")
    loo = [t for t in results if t.startswith("vertebral")]
    for code, _, _ in codes:
        for recipe in recipes:
            if loo:
                values = [results[t][code][recipe]["dice"] for t in loo]
                print(f"leave-one-out mean Dice, {recipe} ({code}): {np.mean(values):.3f} "
                      f"± {np.std(values, ddof=1):.3f}")
    return results


def _hd(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _shown(score: dict) -> str:
    """Dice / HD95 (mm) as predicted, then after the model's post-processing (its step) when measured."""
    text = f"{score['dice']:.3f} / {_hd(score['hd95'])}"
    if "post_dice" in score:
        text += f" → {score['post_dice']:.3f} / {_hd(score['post_hd95'])} ({score['steps']})"
    return text


def main() -> None:
    p = bench_parser(__doc__, threads=False)
    p.add_argument("--parts", nargs="+", choices=("memory", "speed", "cross"), default=["memory", "speed", "cross"])
    p.add_argument("--spacing", type=float, default=0.75, help="training spacing of memory and speed (mm)")
    p.add_argument("--epochs-cohort", type=int, default=2, help="epochs of the memory and speed runs")
    p.add_argument("--epoch-batches", type=int, default=16, help="batches per epoch of the memory and speed runs")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the speed part")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the cross-subject runs")
    p.add_argument("--reference-checkout", help="a checkout of the code before the cohort pipeline (cross part)")
    p.add_argument("--recipe", default="auto", help="the box recipe of the cross part, beside full (default: auto)")
    p.add_argument("--pairs-only", action="store_true", help="cross part: the two subjects only (no leave-one-out)")
    args = parse(p)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            print(f"## {part}", flush=True)
            results[part] = {"memory": memory, "speed": speed, "cross": cross}[part](args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

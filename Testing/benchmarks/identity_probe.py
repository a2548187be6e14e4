"""Bit-identity probe for restructurings: every training, prediction and tightening path of the command
line run on one fixed synthetic cohort, each output reduced to a hash. Run it on two checkouts and
compare: a change that moves code without changing results gives the same JSON.

    python Testing/benchmarks/identity_probe.py --repo . --data /tmp/probe-data --out /tmp/probe-new
    python Testing/benchmarks/identity_probe.py --repo /tmp/base --data /tmp/probe-data --out /tmp/probe-old
    python Testing/benchmarks/identity_probe.py --compare /tmp/probe-old/result.json /tmp/probe-new/result.json

``--data`` is made by the first call and reused (the same inputs for both checkouts): three MR-like cases
(two labelled ellipsoids, slice and 3D boxes, size labels, partial labels) and the same cases in
Hounsfield units (the cohort CT mapping). The runs: every registered box, mask, size and partial-label
recipe (3 epochs), ``auto``, a 3D network, runs with non-default recipe settings given as flags, two CT
runs and ``ct-window``, each followed by ``weakseg predict``; then ``tighten-train`` and ``tighten``.
Hashed: the weights (``model.pt`` tensors), the card's post-processing decision and plan, the predicted
labels and the tightened boxes. Each command runs in its own process with one thread, so the hashes
depend on the code alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
#: the training options every run shares: 3 short epochs of a small UNet on the CPU
COMMON = ["--epochs", "3", "--epoch-batches", "2", "--batch-size", "4", "--channels", "4", "8", "16", "32", "64",
          "--device", "cpu", "--quiet"]


def weakseg(repo: Path, *args) -> int:
    """``python -m WeakSegLib ARGS`` with ``repo``'s package, one thread; its exit code (stderr shown on failure)."""
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "WeakSegLib", *map(str, args)], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        print(f"weakseg {' '.join(map(str, args[:3]))} … failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
    return proc.returncode


def make_data(repo: Path, data: Path) -> None:
    """The cohort (module docstring), written once."""
    import SimpleITK as sitk

    sys.path.insert(0, str(HELPERS))
    from synthetic import two_ellipsoids

    data.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        image, mask = (np.roll(a, 2 * i, axis=2) for a in two_ellipsoids(seed=i))
        for name, array in (("img", image), ("mask", mask), ("ct", image * 10.0 - 1000.0)):
            volume = sitk.GetImageFromArray(array.astype(np.uint8 if name == "mask" else np.float32))
            volume.SetSpacing((1.0, 1.2, 2.0))
            sitk.WriteImage(volume, str(data / f"{name}{i}.nii.gz"))
        m = data / f"mask{i}.nii.gz"
        weakseg(repo, "boxes-from-mask", m, "--out", data / f"box{i}.json")
        weakseg(repo, "boxes-from-mask", m, "--out", data / f"box3d{i}.json", "--mode", "3d", "--margin", "2")
        weakseg(repo, "sizes-from-mask", m, "--out", data / f"size{i}.json")
        weakseg(repo, "partial-from-mask", m, "--out", data / f"part{i}.nii.gz", "--erode", "2",
                "--background-margin", "4")
    (data / "done").write_text("")


def runs(data: Path) -> dict[str, list]:
    """Name → the ``weakseg train`` arguments of each run."""
    def each(flag: str, stem: str, ext: str, n: int = 3) -> list:
        return [a for i in range(n) for a in (flag, data / f"{stem}{i}.{ext}")]

    images, boxes = each("--image", "img", "nii.gz"), each("--boxes", "box", "json")
    parts, refs = each("--partial", "part", "nii.gz"), each("--reference", "mask", "nii.gz")
    box_recipes = ["tightness+size+emptiness", "tightness+emptiness", "tightness+size+masked-ce", "box-mask",
                   "gmil", "polar-mil", "boxsup"]
    out: dict[str, list] = {r: ["--recipe", r, *images, *boxes] for r in box_recipes}
    out.update({
        "deepcut": ["--recipe", "deepcut", *images, *boxes, "--proposal-every", "1", "--processes", "1"],
        "full": ["--recipe", "full", *images, *each("--mask", "mask", "nii.gz")],
        "auto-boxes": [*images, *boxes],
        "size": ["--recipe", "size", *images, *each("--sizes", "size", "json"), "--pretrain-epochs", "1"],
        "partial-ce": ["--recipe", "partial-ce", *images, *parts],
        "sccl": ["--recipe", "sccl", *images, *parts, *refs],
        "accl-partial": ["--recipe", "accl-partial", *images, *parts],
        "accl-unpaired": ["--recipe", "accl-unpaired", *images, *parts, *refs],
        "accl-paired": ["--recipe", "accl-paired", *images, *parts, *refs],
        "3d": ["--dims", "3d", *images, *each("--boxes", "box3d", "json"), "--patch-size", "16", "32", "32"],
        "tse-set": ["--recipe", "tightness+size+emptiness", *images, *boxes, "--tightness-weight", "1e-3",
                    "--band-width", "3", "--size-bounds", "0.4", "0.8", "--bounds-weight", "0.5", "--lr", "1e-3"],
        "polar-set": ["--recipe", "polar-mil", *images, *each("--boxes", "box3d", "json"), "--mil-alpha", "4",
                      "--polar-rays", "30", "--polar-centre", "box", "--mil-angles", "0", "0", "0"],
        "gmil-set": ["--recipe", "gmil", *images, *boxes, "--mil-smoothmax", "softmax", "--mil-pairwise-weight", "2"],
        "deepcut-set": ["--recipe", "deepcut", *images, *boxes, "--proposal-every", "2", "--processes", "1",
                        "--crf", "iterations=2", "--crf", "bilateral_sxy=5", "--proposal-min-fill", "0.2"],
        "boxsup-set": ["--recipe", "boxsup", *images, *boxes, "--boxsup-k", "2", "--boxsup-weight", "0.5"],
        "sccl-set": ["--recipe", "sccl", *images, *parts, "--sccl-bounds", "50", "400", "--sccl-bounds", "40", "300",
                     "--sccl-weight", "0.1"],
        "accl-set": ["--recipe", "accl-partial", *images, *parts, "--adv-weight", "0.05", "--adv-lr", "1e-3",
                     "--betas", "0.9", "0.99"],
        "ct-full": ["--recipe", "full", *each("--image", "ct", "nii.gz"), *each("--mask", "mask", "nii.gz")],
        "ct-box": ["--recipe", "tightness+size+emptiness", *each("--image", "ct", "nii.gz"), *boxes],
        "ct-window": ["--recipe", "box-mask", "--normalization", "ct-window", *each("--image", "ct", "nii.gz"), *boxes],
    })
    out["size-set"] = [*out["size"], "--size-weight", "0.5", "--size-samples", "2", "--size-anchors", "1"]
    return out


def digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def weights_hash(path: Path) -> str:
    import torch

    state = torch.load(path, weights_only=True, map_location="cpu")
    return digest(*(part for k in sorted(state) for part in (k.encode(), state[k].contiguous().numpy().tobytes())))


def labels_hash(path: Path) -> str:
    import SimpleITK as sitk

    return digest(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes())


def probe(repo: Path, data: Path, out: Path) -> dict:
    """Every run's hashes (module docstring)."""
    result = {}
    for name, args in runs(data).items():
        folder = out / name.replace("+", "_")
        entry: dict = {"rc": weakseg(repo, "train", *args, *COMMON, "--out", folder)}
        if entry["rc"] == 0:
            card = json.loads((folder / "model.json").read_text())
            entry.update(weights=weights_hash(folder / "model.pt"),
                         postprocess=json.dumps(card.get("postprocess"), sort_keys=True),
                         plan=json.dumps(card["input"].get("preprocessing"), sort_keys=True))
            image = data / ("ct0.nii.gz" if name.startswith("ct") else "img0.nii.gz")
            entry["predict_rc"] = weakseg(repo, "predict", "--model", folder, "--image", image,
                                          "--out", folder / "pred.nii.gz", "--device", "cpu", "--quiet")
            if entry["predict_rc"] == 0:
                entry["prediction"] = labels_hash(folder / "pred.nii.gz")
        result[name] = entry
        print(name, entry.get("weights", entry["rc"]), flush=True)
    tightener, boxes = out / "tightener", out / "tight.json"
    entry = {"rc": weakseg(repo, "tighten-train", "--image", data / "img0.nii.gz", "--image", data / "img1.nii.gz",
                           "--mask", data / "mask0.nii.gz", "--mask", data / "mask1.nii.gz", "--out", tightener,
                           "--epochs", "2", "--patch-size", "8", "--device", "cpu", "--quiet")}
    if entry["rc"] == 0:
        entry["weights"] = weights_hash(tightener / "model.pt")
        entry["tighten_rc"] = weakseg(repo, "tighten", "--model", tightener, "--image", data / "img2.nii.gz",
                                      "--boxes", data / "box3d2.json", "--out", boxes, "--device", "cpu")
        if entry["tighten_rc"] == 0:
            entry["boxes"] = digest(json.dumps(json.loads(boxes.read_text())["boxes"], sort_keys=True).encode())
    result["tighten"] = entry
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2], help="checkout to probe")
    p.add_argument("--data", type=Path, help="input folder, made on first use and shared between checkouts")
    p.add_argument("--out", type=Path, help="output folder (result.json holds the hashes)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two result.json files")
    args = p.parse_args()
    if args.compare:
        a, b = (json.loads(path.read_text()) for path in args.compare)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        failed = sorted(k for r in (a, b) for k, v in r.items() if any(v.get(c, 0) for c in ("rc", "predict_rc",
                                                                                                "tighten_rc")))
        print(f"{len(a)} runs; identical: {len(a) - len(differ)}; differ: {', '.join(differ) or 'none'}; "
              f"failed: {', '.join(sorted(set(failed))) or 'none'}")
        return 1 if differ or failed else 0
    if not (args.data / "done").exists():
        make_data(args.repo.resolve(), args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    result = probe(args.repo.resolve(), args.data, args.out)
    (args.out / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

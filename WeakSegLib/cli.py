"""The ``weakseg`` command line (also ``python -m WeakSegLib``).

Exit codes are those of the worker (:mod:`WeakSegLib.jobs`): 0 ok, 2 bad input, 3 cancelled
(Ctrl-C), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from WeakSegLib import __version__
from WeakSegLib.errors import CancelledError, WeakSegError
from WeakSegLib.progress import ProgressPrinter
from WeakSegLib.jobs import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_OK
from WeakSegLib.recipes import DEFAULT_RECIPE, RECIPES


def _axis(value: str) -> int | str:
    if value == "auto":
        return value
    if value not in ("0", "1", "2"):
        raise argparse.ArgumentTypeError("axis must be 0, 1, 2 (array order z, y, x) or 'auto' (axial)")
    return int(value)


def _setting(value: str) -> tuple[str, float]:
    name, sep, number = value.partition("=")
    try:
        return name.strip(), (int(number) if name.strip() == "iterations" else float(number))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {value!r}") from None


def _resolve_axis(axis: int | str, direction) -> int:
    """``--axis`` as given, or for ``auto`` the axial axis of ``direction`` (a callable returning
    the direction cosines, so that they are only looked up when needed)."""
    if axis != "auto":
        return int(axis)
    from WeakSegLib.volume import axial_axis

    return axial_axis(direction())


def cmd_boxes_from_mask(args: argparse.Namespace) -> int:
    from WeakSegLib.boxes import BoxSet, boxes_from_mask, save_boxes
    from WeakSegLib.volume import read_label_volume

    mask = read_label_volume(args.mask)
    axis = _resolve_axis(args.axis, lambda: mask.direction)
    boxes = boxes_from_mask(mask.array, args.mode, axis, args.margin, args.label, not args.per_label)
    names = {b.label: (args.name or f"label {b.label}") for b in boxes}
    save_boxes(BoxSet(boxes, mask.shape, names, mask.geometry()), args.out)
    print(f"{len(boxes)} {args.mode} boxes (axis {axis}, margin {args.margin}) → {args.out}")
    return EXIT_OK


def cmd_sizes_from_mask(args: argparse.Namespace) -> int:
    from WeakSegLib.sizes import SizeSet, save_sizes, sizes_from_mask
    from WeakSegLib.volume import read_label_volume

    mask = read_label_volume(args.mask)
    axis = _resolve_axis(args.axis, lambda: mask.direction)
    sizes = sizes_from_mask(mask.array, axis, args.label, args.slices)
    names = {s.label: (args.name or f"label {s.label}") for s in sizes}
    save_sizes(SizeSet(sizes, mask.shape, axis, names, mask.geometry()), args.out)
    present = sum(s.size > 0 for s in sizes)
    print(f"{len(sizes)} size labels on axis {axis} ({present} with an object) → {args.out}")
    return EXIT_OK


def cmd_partial_from_mask(args: argparse.Namespace) -> int:
    from WeakSegLib.partial import partial_from_mask
    from WeakSegLib.volume import read_label_volume, write_volume

    mask = read_label_volume(args.mask)
    axis = _resolve_axis(args.axis, lambda: mask.direction)
    partial, ratio = partial_from_mask(mask.array, axis, args.erode, args.background_margin, args.label)
    write_volume(mask.with_array(partial), args.out)
    r = ratio.to_dict()
    print(f"annotation ratio: object {r['object']:.1%}, background {r['background']:.1%}, overall {r['overall']:.1%}, "
          f"slices with an object scribble {r['slices_with_object']:.1%} → {args.out}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from WeakSegLib.training import TrainCase, TrainConfig, train
    from WeakSegLib.volume import read_direction

    images = args.image
    per_image = {"--boxes": args.boxes, "--mask": args.mask, "--eval-mask": args.eval_mask, "--sizes": args.sizes,
                 "--partial": args.partial, "--reference": args.reference}
    for name, files in per_image.items():
        if files and len(files) != len(images):
            raise WeakSegError(f"give one {name} per --image ({len(images)} images, {len(files)} {name}; '-' for none)")
    if not (args.boxes or args.mask or args.sizes or args.partial):
        raise WeakSegError("give --boxes (box recipes), --mask (recipe 'full'), --sizes (recipe 'size') or "
                           "--partial (partial-label recipes) for the images")
    recipe = args.recipe or ("size" if args.sizes else "partial-ce" if args.partial
                             else "full" if args.mask and not args.boxes else DEFAULT_RECIPE)

    def given(name: str, i: int) -> str | None:
        files = per_image[name]
        return files[i] if files and files[i] != "-" else None

    cases = [TrainCase(img, given("--boxes", i), given("--mask", i), given("--eval-mask", i), given("--sizes", i),
                       given("--partial", i), given("--reference", i)) for i, img in enumerate(images)]
    config = TrainConfig(recipe=recipe, network=args.network, spatial_dims=3 if args.dims == "3d" else 2,
                         context=args.context, axis=_resolve_axis(args.axis, lambda: read_direction(images[0])), epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, decay_from=args.decay_from, seed=args.seed,
                         device=args.device,
                         normalization=args.normalization, size_bounds=tuple(args.size_bounds),
                         band_width=args.band_width, labels=args.label, augment=args.augment,
                         proposal_every=args.proposal_every, processes=args.processes, crf=dict(args.crf),
                         boxsup_k=args.boxsup_k, boxsup_weight=args.boxsup_weight,
                         pretrain_epochs=args.pretrain_epochs, size_weight=args.size_weight,
                         size_samples=args.size_samples, size_anchors=args.size_anchors, sccl_weight=args.sccl_weight,
                         sccl_bounds=[list(b) for b in args.sccl_bounds] if args.sccl_bounds else None,
                         adv_weight=args.adv_weight, adv_lr=args.adv_lr)
    printer = ProgressPrinter(args.events, args.quiet)
    try:
        card = train(cases, config, args.out, on_event=printer, resume=not args.no_resume)
    finally:
        printer.close()
    print(f"model → {args.out}  metrics {json.dumps(card.get('metrics', {}))}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from WeakSegLib.inference import predict_file

    printer = ProgressPrinter(None, args.quiet)
    result = predict_file(args.model, args.image, args.out, prob_out=args.prob, device=args.device, on_event=printer)
    print(f"prediction → {result['prediction']}" + (f", probability → {result['probability']}" if args.prob else ""))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from WeakSegLib.metrics import evaluate
    from WeakSegLib.volume import check_same_grid, read_label_volume

    pred, ref = read_label_volume(args.pred), read_label_volume(args.ref)
    check_same_grid(ref, pred, "reference", "prediction")
    scores = evaluate(pred.array, ref.array, pred.spacing, args.label)
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"Dice {scores['dice']:.4f}   IoU {scores['iou']:.4f}   HD95 {scores['hd95']:.2f} mm")
    return EXIT_OK


def cmd_tighten_train(args: argparse.Namespace) -> int:
    from WeakSegLib.tightening import TightenerCase, TightenerConfig, train_tightener
    from WeakSegLib.volume import read_direction

    if len(args.mask) != len(args.image):
        raise WeakSegError(f"give one --mask per --image ({len(args.image)} images, {len(args.mask)} masks)")
    config = TightenerConfig(patch=args.patch_size, **({} if args.context is None else {"context": args.context}),
                             network=args.network, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, margin=args.margin,
                             axis=_resolve_axis(args.axis, lambda: read_direction(args.image[0])), labels=args.label,
                             per_component=args.per_component, normalization=args.normalization,
                             val_fraction=args.val_fraction, threshold_rule=args.threshold_rule, seed=args.seed,
                             device=args.device)
    printer = ProgressPrinter(args.events, args.quiet)
    try:
        card = train_tightener([TightenerCase(i, m) for i, m in zip(args.image, args.mask)], config, args.out,
                               on_event=printer, resume=not args.no_resume)
    finally:
        printer.close()
    print(f"tightener → {args.out}  {card['training']['patches']['total']} patches, metrics {json.dumps(card['metrics'])}")
    return EXIT_OK


def cmd_tighten(args: argparse.Namespace) -> int:
    from WeakSegLib.atomic import atomic_write_json
    from WeakSegLib.tightening import TightenSettings, tighten_file

    settings = TightenSettings(stride=args.stride, extent=args.extent, component=args.component,
                               threshold=args.threshold, max_gap=args.max_gap, smooth=not args.no_smooth)
    report = tighten_file(args.model, args.image, args.boxes, args.out, settings, device=args.device)
    for w in report["warnings"]:
        print(f"weakseg: warning: {w}", file=sys.stderr)
    for b in report["boxes"]:
        print(f"box #{b['box']} (label {b['label']}): {b['slices_in']} slices → {b['slices_out']} boxes "
              f"({b['dropped_ends']} empty end slices dropped, {b['outliers']} outliers, {b['filled']} filled, "
              f"{b['smoothed']} smoothed{', UNTIGHTENED' if b['fallback'] else ''})")
    if args.report:
        atomic_write_json(args.report, report)
    print(f"boxes → {args.out}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from WeakSegLib.demo import run_demo

    report = run_demo(args.out, case=args.case, epochs=args.epochs, device=args.device, quiet=args.quiet)
    print(f"report → {report}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weakseg", description="Train segmentation networks from bounding boxes.")
    p.add_argument("--version", action="version", version=f"weakseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("boxes-from-mask", help="tight boxes around the objects of a label mask")
    b.add_argument("mask")
    b.add_argument("--out", required=True, help="box JSON file to write")
    b.add_argument("--mode", choices=("slice", "3d"), default="slice")
    b.add_argument("--axis", type=_axis, default="auto", help="slice axis in array order (z,y,x): 0, 1, 2 or auto (axial)")
    b.add_argument("--margin", type=int, default=0, help="voxels added on each side")
    b.add_argument("--label", type=int, action="append", help="label value(s) to box (default: all)")
    b.add_argument("--per-label", action="store_true", help="one box per label and slice, not per connected component")
    b.add_argument("--name", help="name of the object (stored in the box file)")
    b.set_defaults(func=cmd_boxes_from_mask)

    t = sub.add_parser("train", help="train a model from boxes (or masks for recipe 'full')")
    t.add_argument("--image", action="append", required=True, help="training image (repeat for several)")
    t.add_argument("--boxes", action="append", help="box JSON file, one per --image ('-' for none)")
    t.add_argument("--mask", action="append",
                   help="label mask, one per --image ('-' for none): recipe 'full'; with 'boxsup', images given "
                        "a mask and no boxes train on the mask (semi-supervised)")
    t.add_argument("--eval-mask", action="append", help="reference mask to report Dice per epoch (not trained on)")
    t.add_argument("--out", required=True, help="model folder to write (resumes when it holds a checkpoint)")
    t.add_argument("--recipe", choices=RECIPES, help=f"default {DEFAULT_RECIPE} (full with --mask only)")
    t.add_argument("--epochs", type=int, default=100, help="default 100, as the paper (t grows ×1.1 per epoch)")
    t.add_argument("--network", choices=("unet", "enet"), default="unet")
    t.add_argument("--dims", choices=("2d", "3d"), default="2d")
    t.add_argument("--context", type=int, default=1, help="slices per input: 1 = 2D, 3 or 5 = 2.5D")
    t.add_argument("--axis", type=_axis, default="auto")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, help="Adam learning rate (default by recipe: 5e-4; accl-* 2e-4)")
    t.add_argument("--decay-from", type=float,
                   help="fraction of the epochs after which the learning rates decay linearly towards 0 "
                        "(default by recipe: 1 = constant; accl-* 0.5)")
    t.add_argument("--band-width", type=int, default=5)
    t.add_argument("--size-bounds", type=float, nargs=2, default=(0.5, 0.9), metavar=("LOWER", "UPPER"))
    t.add_argument("--normalization", choices=("percentile", "minmax", "ct-window", "none"), default="percentile")
    t.add_argument("--label", type=int, action="append", help="train only these label values")
    t.add_argument("--augment", action="store_true", help="random mirroring of each batch (boxes follow)")
    t.add_argument("--proposal-every", type=int, default=10, help="deepcut: epochs between CRF label revisions (k)")
    t.add_argument("--processes", type=int, default=2, help="deepcut: CRF worker processes")
    t.add_argument("--crf", action="append", type=_setting, default=[], metavar="NAME=VALUE",
                   help="deepcut: CRF setting (bilateral_sxy, bilateral_srgb, bilateral_compat, gauss_sxy, "
                        "gauss_compat, iterations, eps); default METHODS.md §6")
    t.add_argument("--boxsup-k", type=int, default=5, help="boxsup: draw among the k cheapest candidates")
    t.add_argument("--boxsup-weight", type=float, default=1.0, help="boxsup: λ of the network-disagreement cost")
    t.add_argument("--sizes", action="append",
                   help="size: size label file, one per --image ('-' for none); with --mask, the mask labels "
                        "the slices where it holds an object")
    t.add_argument("--pretrain-epochs", type=int, default=20,
                   help="size: first epochs on the mask slices only (then their batch-norm statistics stay fixed)")
    t.add_argument("--size-weight", type=float, default=1.0, help="size: weight of the expected size loss")
    t.add_argument("--size-samples", type=int, default=1, help="size: masks drawn per slice for the gradient estimate")
    t.add_argument("--size-anchors", type=int, default=2,
                   help="size: mask slices added to every batch once sizes join (keeps the size loss anchored)")
    t.add_argument("--partial", action="append", help="partial-label recipes: partial label volume, one per --image")
    t.add_argument("--reference", action="append",
                   help="reference masks, one per --image ('-' for none): accl-unpaired (any masks of the "
                        "structure), accl-paired (the image's true mask), sccl (to derive its size bounds)")
    t.add_argument("--sccl-weight", type=float, default=0.01, help="sccl: λ_s")
    t.add_argument("--sccl-bounds", type=float, nargs=2, action="append", metavar=("LO", "HI"),
                   help="sccl: size bounds in pixels (repeat once per label, in label order)")
    t.add_argument("--adv-weight", type=float, help="accl-*: λ_a (default 1e-3 partial, 1e-2 unpaired/paired)")
    t.add_argument("--adv-lr", type=float, default=2e-4, help="accl-*: the discriminator's learning rate")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--events", help="append JSON-lines events to this file")
    t.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    sz = sub.add_parser("sizes-from-mask", help="per-slice object size labels from a label mask")
    sz.add_argument("mask")
    sz.add_argument("--out", required=True, help="size JSON file to write")
    sz.add_argument("--axis", type=_axis, default="auto")
    sz.add_argument("--label", type=int, action="append", help="label value(s) to measure (default: all)")
    sz.add_argument("--slices", type=int, nargs="+", help="only these slice indices (default: all)")
    sz.add_argument("--name", help="name of the object (stored in the size file)")
    sz.set_defaults(func=cmd_sizes_from_mask)

    pm = sub.add_parser("partial-from-mask", help="partial labels (scribbles) made by shrinking a label mask")
    pm.add_argument("mask")
    pm.add_argument("--out", required=True, help="partial label volume to write (0 unknown, 255 background)")
    pm.add_argument("--axis", type=_axis, default="auto")
    pm.add_argument("--erode", type=float, default=3.0, help="object voxels within this distance of its edge become unknown")
    pm.add_argument("--background-margin", type=float, default=10.0,
                    help="background voxels within this distance of an object become unknown")
    pm.add_argument("--label", type=int, action="append", help="label value(s) to keep (default: all)")
    pm.set_defaults(func=cmd_partial_from_mask)

    r = sub.add_parser("predict", help="predict a label volume with a model folder")
    r.add_argument("--model", required=True)
    r.add_argument("--image", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--prob", help="also write the foreground probability volume here")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="Dice, IoU and HD95 of a prediction against a reference mask")
    e.add_argument("--pred", required=True)
    e.add_argument("--ref", required=True)
    e.add_argument("--label", type=int, help="compare only this label value (default: any non-zero)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_evaluate)

    tt = sub.add_parser("tighten-train", help="train a box tightener (patch classifier) on fully labelled volumes")
    tt.add_argument("--image", action="append", required=True, help="labelled training image (repeat for several)")
    tt.add_argument("--mask", action="append", required=True, help="its label mask, one per --image")
    tt.add_argument("--out", required=True, help="tightener folder to write (resumes when it holds a checkpoint)")
    tt.add_argument("--patch-size", type=int, default=16, help="patch side in voxels (16 default, 32; 8 for coarse images)")
    tt.add_argument("--context", type=int, help="voxels of surrounding image the classifier sees on every side of "
                    "a patch (its label stays the patch's; default: the tightener's default)")
    tt.add_argument("--network", choices=("light", "vgg16"), default="light")
    tt.add_argument("--epochs", type=int, default=50)
    tt.add_argument("--batch-size", type=int, default=32)
    tt.add_argument("--lr", type=float, default=1e-4)
    tt.add_argument("--margin", type=int, default=4, help="voxels added around each object's 3D box")
    tt.add_argument("--axis", type=_axis, default="auto")
    tt.add_argument("--label", type=int, action="append", help="objects of these label values only")
    tt.add_argument("--per-component", action="store_true", help="one object per connected component")
    tt.add_argument("--normalization", choices=("percentile", "minmax", "ct-window", "none"), default="percentile")
    tt.add_argument("--val-fraction", type=float, default=0.2, help="slices held out for validation")
    tt.add_argument("--threshold-rule", choices=("balanced", "accuracy"), default="balanced",
                    help="pick the probability threshold by balanced (default) or plain accuracy on held-out slices")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    tt.add_argument("--events", help="append JSON-lines events to this file")
    tt.add_argument("--no-resume", action="store_true")
    tt.add_argument("--quiet", action="store_true")
    tt.set_defaults(func=cmd_tighten_train)

    ti = sub.add_parser("tighten", help="tighten the per-slice boxes of 3D boxes with a trained tightener")
    ti.add_argument("--model", required=True, help="tightener folder")
    ti.add_argument("--image", required=True)
    ti.add_argument("--boxes", required=True, help="box JSON file (3D boxes, or slice boxes on the tightener's axis)")
    ti.add_argument("--out", required=True, help="box JSON file of the tightened slice boxes")
    ti.add_argument("--stride", type=int, help="patch grid stride in voxels (default: the card's, patch/4)")
    ti.add_argument("--extent", choices=("cells", "patches"), help="bound the positive cells (default) or whole patches")
    ti.add_argument("--component", choices=("largest", "all"), default="largest",
                    help="keep the largest connected group of positive patches (default) or all")
    ti.add_argument("--threshold", type=float, help="object probability threshold (default: the card's)")
    ti.add_argument("--max-gap", type=int, default=2, help="missed slices bridged inside one object")
    ti.add_argument("--no-smooth", action="store_true", help="no median filter across slices")
    ti.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ti.add_argument("--report", help="write the per-box report (JSON) here")
    ti.set_defaults(func=cmd_tighten)

    d = sub.add_parser("demo", help="the whole path on a real case: boxes → training → prediction → report")
    d.add_argument("--out", default="weakseg-demo")
    d.add_argument("--case", default="vertebral-body-ct")
    d.add_argument("--epochs", type=int, default=100)
    d.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CancelledError as exc:
        print(f"weakseg: cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("weakseg: interrupted; the last epoch's checkpoint is kept (run the same command to resume)",
              file=sys.stderr)
        return EXIT_CANCELLED
    except WeakSegError as exc:
        print(f"weakseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

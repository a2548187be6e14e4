"""The ``weakseg`` command line (also ``python -m WeakSegLib``).

The options of ``train``, ``tighten-train`` and ``tighten`` are generated from the settings classes of
:mod:`WeakSegLib.config` (:func:`add_options`): their help texts, choices and defaults live there
once. Importing this module (and ``weakseg --help``) imports no torch; each command imports what it
needs when it runs.

Exit codes are those of the worker (:mod:`WeakSegLib.app.jobs`): 0 ok, 2 bad input, 3 cancelled
(Ctrl-C), 1 internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import typing
from typing import Any, Sequence

from WeakSegLib import __version__, events
from WeakSegLib.app.job_types import (
    PredictCase,
    PredictCasesJob,
    PredictJob,
    RankJob,
    TightenJob,
    TightenTrainJob,
    TrainJob,
)
from WeakSegLib.app.jobs import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_OK
from WeakSegLib.app.progress import ProgressPrinter
from WeakSegLib.config import (
    DIST_BACKENDS,
    MODES,
    SPLITS,
    DeviceOption,
    PredictOptions,
    TightenerCase,
    TightenerConfig,
    TightenSettings,
    TrainCase,
    TrainConfig,
)
from WeakSegLib.errors import CancelledError, WeakSegError
from WeakSegLib.options import AUTO, non_optional
from WeakSegLib.registry import (
    AUTO_RECIPE,
    BOXSUP_SLICES_PER_EPOCH,
    DEFAULT_RECIPE,
    SLICE_BOX_RECIPE,
    recipe_names,
    recipe_spec,
    settings_fields,
    specs,
)

#: the per-image file options of ``train``, in :class:`~WeakSegLib.config.TrainCase` order
CASE_FILES = ("boxes", "mask", "eval_mask", "sizes", "partial", "reference")


def _axis(value: str) -> int | str:
    if value == AUTO:
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
    if axis != AUTO:
        return int(axis)
    from WeakSegLib.io.volume import axial_axis

    return axial_axis(direction())


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _by_recipe(values: Sequence[tuple[str, Any]]) -> str:
    """The help's default of a setting whose default is each recipe's own (``values``: (recipe, default)
    pairs): one value, or each value with its recipes, the most common one last as "else"."""
    recipes: dict[str, list[str]] = {}
    for name, value in values:
        recipes.setdefault(_shown(value), []).append(name)
    if len(recipes) == 1:
        return f" (default: {next(iter(recipes))})"
    *others, common = sorted(recipes, key=lambda v: len(recipes[v]))
    listed = "; ".join(f"{value} for {', '.join(recipes[value])}" for value in others)
    return f" (default by recipe: {listed}; else {common})"


def _flag(f: dataclasses.Field) -> str:
    """The command line flag of field ``f``: its ``flag`` metadata, else ``--`` + its name with ``-`` for ``_``."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _add_field(parser: Any, f: dataclasses.Field, hint: Any, default: Any, dest: str, suffix: str | None = None,
               given_only: bool = False) -> None:
    """One option for field ``f`` (type ``hint``); ``suffix``: the help's default (None: from ``default``);
    ``given_only``: the option sets its destination only when given (argparse's SUPPRESS)."""
    meta = f.metadata
    flag = _flag(f)
    kind, origin = non_optional(hint), typing.get_origin(non_optional(hint))
    kwargs: dict[str, Any] = {"dest": dest, "help": meta["help"]}
    if kind is bool and default is None:  # unset: decided later (e.g. by the boxes); either flag sets it
        kwargs.update(action=argparse.BooleanOptionalAction, default=None)
    elif kind is bool:
        if default:
            flag, kwargs["help"] = "--no-" + flag[2:], "do not " + kwargs["help"]
        kwargs.update(action="store_false" if default else "store_true", default=default)
    elif kind is dict:
        kwargs.update(action="append", type=_setting, metavar=meta["metavar"], default=None)
    elif kind is list or origin is list:
        element = (typing.get_args(kind) or (float,))[0]
        kwargs.update(action="append", type=element, default=None)
        if isinstance(meta["metavar"], tuple):
            kwargs.update(nargs=len(meta["metavar"]), metavar=meta["metavar"])
    elif origin is tuple:
        elements = typing.get_args(kind)
        nargs = "+" if elements[-1] is Ellipsis else len(elements)
        kwargs.update(type=elements[0], nargs=nargs, metavar=meta["metavar"], default=default)
    else:
        kwargs.update(type=kind, choices=meta["choices"], metavar=meta["metavar"], default=default)
    if suffix is None and default is not None and not isinstance(default, (bool, dict)):
        suffix = f" (default: {_shown(default)})"
    kwargs["help"] += suffix or ""
    if given_only:
        kwargs["default"] = argparse.SUPPRESS
    parser.add_argument(flag, **kwargs)


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the settings class ``cls`` that the command line offers (field
    metadata: :func:`WeakSegLib.options.option`); the destination is the field name. A field whose
    default is the recipe's (``by_recipe``) lists each recipe's in its help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli"):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            suffix = _by_recipe([(s.name, getattr(s, f.name)) for s in specs()]) if f.metadata["by_recipe"] else None
            _add_field(parser, f, hints[f.name], default, f.name, suffix)


def _recipe_settings() -> dict[str, tuple[dataclasses.Field, Any, tuple[tuple[str, Any], ...]]]:
    """Every recipe setting: name → (field, type hint, (recipe, default) pairs)."""
    return {name: (f, typing.get_type_hints(type(recipe_spec(users[0][0]).settings))[name], users)
            for name, (f, users) in settings_fields().items()}


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting of every registered recipe family (:func:`WeakSegLib.registry.settings_fields`),
    in one help group per set of recipes that have it, with each recipe's default; an option sets its
    setting only when given (:func:`recipe_settings_from`)."""
    groups: dict[tuple[str, ...], Any] = {}
    for name, (f, hint, users) in _recipe_settings().items():
        recipes = tuple(recipe for recipe, _ in users)
        if recipes not in groups:
            groups[recipes] = parser.add_argument_group(f"settings of {', '.join(recipes)}")
        same = len({_shown(value) for _, value in users}) == 1
        _add_field(groups[recipes], f, hint, users[0][1] if same else None, name,
                   None if same else _by_recipe(users), given_only=True)


def recipe_settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe settings given on the command line (:func:`add_recipe_options`), field → value."""
    return {name: dict(getattr(args, name)) if non_optional(hint) is dict else getattr(args, name)
            for name, (f, hint, users) in _recipe_settings().items() if hasattr(args, name)}


def settings_from(args: argparse.Namespace, cls: type, **given: Any) -> Any:
    """``cls`` built from the parsed options :func:`add_options` added, and the values ``given``."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") and f.name not in given:
            value, kind = getattr(args, f.name), non_optional(hints[f.name])
            if kind is dict:
                value = dict(value or [])
            elif isinstance(value, list) and typing.get_origin(kind) is tuple:
                value = tuple(value)
            values[f.name] = value
    return cls(**values, **given)


def cmd_boxes_from_mask(args: argparse.Namespace) -> int:
    from WeakSegLib.io.atomic import check_writable
    from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
    from WeakSegLib.io.volume import read_label_volume

    check_writable(args.out, "box file")
    mask = read_label_volume(args.mask)
    axis = _resolve_axis(args.axis, lambda: mask.direction)
    boxes = boxes_from_mask(mask.array, args.mode, axis, args.margin, args.label, not args.per_label)
    names = {b.label: (args.name or f"label {b.label}") for b in boxes}
    save_boxes(BoxSet(boxes, mask.shape, names, mask.geometry()), args.out)
    print(f"{len(boxes)} {args.mode} boxes (axis {axis}, margin {args.margin}) → {args.out}")
    return EXIT_OK


def cmd_sizes_from_mask(args: argparse.Namespace) -> int:
    from WeakSegLib.io.atomic import check_writable
    from WeakSegLib.io.sizes import SizeSet, save_sizes, sizes_from_mask
    from WeakSegLib.io.volume import read_label_volume

    check_writable(args.out, "size file")
    mask = read_label_volume(args.mask)
    axis = _resolve_axis(args.axis, lambda: mask.direction)
    sizes = sizes_from_mask(mask.array, axis, args.label, args.slices)
    names = {s.label: (args.name or f"label {s.label}") for s in sizes}
    save_sizes(SizeSet(sizes, mask.shape, axis, names, mask.geometry()), args.out)
    present = sum(s.size > 0 for s in sizes)
    print(f"{len(sizes)} size labels on axis {axis} ({present} with an object) → {args.out}")
    return EXIT_OK


def cmd_partial_from_mask(args: argparse.Namespace) -> int:
    from WeakSegLib.io.partial import partial_from_mask
    from WeakSegLib.io.volume import check_output_volume, read_label_volume, write_volume

    check_output_volume(args.out)
    mask = read_label_volume(args.mask)
    axis = _resolve_axis(args.axis, lambda: mask.direction)
    partial, ratio = partial_from_mask(mask.array, axis, args.erode, args.background_margin, args.label)
    write_volume(mask.with_array(partial), args.out)
    r = ratio.to_dict()
    print(f"annotation ratio: object {r['object']:.1%}, background {r['background']:.1%}, overall {r['overall']:.1%}, "
          f"slices with an object scribble {r['slices_with_object']:.1%} → {args.out}")
    return EXIT_OK


def _training_cases(args: argparse.Namespace) -> tuple[list[TrainCase], bool]:
    """The cases of ``train``, and whether they are a dataset's: from ``--dataset``, or from ``--image``
    and the per-image file options."""
    if args.dataset:
        from WeakSegLib.io.dataset import load_dataset

        given = [kind for kind in ("image", *CASE_FILES) if getattr(args, kind)]
        if given:
            raise WeakSegError(f"give the cases either as --dataset or as --image/--boxes/…, not both "
                               f"(--{given[0].replace('_', '-')} given)")
        cases = load_dataset(args.dataset).split("training")
        if not cases:
            raise WeakSegError(f"{args.dataset}: the dataset has no training case")
        return [c.train_case() for c in cases], True
    images = args.image
    if not images:
        raise WeakSegError("give the training cases: --dataset data.json, or --image (repeat for several)")
    per_image = {kind: getattr(args, kind) for kind in CASE_FILES}
    for kind, files in per_image.items():
        if files and len(files) != len(images):
            flag = "--" + kind.replace("_", "-")
            raise WeakSegError(f"give one {flag} per --image ({len(images)} images, {len(files)} {flag}; '-' for none)")
    if not (args.boxes or args.mask or args.sizes or args.partial):
        raise WeakSegError("give --boxes (box recipes), --mask (recipe 'full'), --sizes (recipe 'size') or "
                           "--partial (partial-label recipes) for the images")

    def given(kind: str, i: int) -> str | None:
        files = per_image[kind]
        return files[i] if files and files[i] != "-" else None

    return [TrainCase(img, **{kind: given(kind, i) for kind in CASE_FILES}) for i, img in enumerate(images)], False


def cmd_train(args: argparse.Namespace) -> int:
    from WeakSegLib.app.jobs import child_of_launcher
    from WeakSegLib.app.launch import check_processes, launch
    from WeakSegLib.engine.samples.cohort import as_trained, recipe_for
    from WeakSegLib.engine.samples.preprocess import AXIAL
    from WeakSegLib.engine.train.distributed import env_rank

    cases, dataset = _training_cases(args)
    config = settings_from(args, TrainConfig, recipe=args.recipe, spatial_dims=MODES[args.dims]["spatial_dims"],
                           axis=AXIAL if args.axis == AUTO else args.axis,
                           recipe_settings=recipe_settings_from(args))
    picked = config.validate().picking(recipe_for(cases, config))
    unused = [_flag(f) for name, (f, _, _) in _recipe_settings().items()
              if name in config.recipe_settings and name not in picked.recipe_settings]
    if unused:
        print(f"note: recipe {AUTO_RECIPE} picked {picked.recipe}, which does not use {', '.join(unused)}",
              file=sys.stderr)
    config = picked
    if dataset:  # a mask beside boxes is the Dice reference of a box recipe
        cases = [as_trained(tc, recipe_spec(config.recipe)) for tc in cases]
    if args.gpus > 1 and not child_of_launcher():
        check_processes(args.gpus, config.device, config.batch_size)
        return launch(args.gpus, args.argv)
    main = env_rank() == 0
    printer = ProgressPrinter(args.events if main else None, args.quiet or not main)
    stop = {"requested": False}

    def on_term(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        stop["requested"] = True

    previous = signal.signal(signal.SIGTERM, on_term)
    job = TrainJob(args.out, cases, config, resume=not args.no_resume, gpus=args.gpus, backend=args.backend)
    try:
        result = job.run(printer, lambda: stop["requested"])
    finally:
        signal.signal(signal.SIGTERM, previous)
        printer.close()
    if main:
        print(f"model → {args.out}  metrics {json.dumps(result['metrics'])}")
    return EXIT_OK


def _prediction_cases(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(name, image)`` of each case of ``predict --images`` or ``predict --dataset``."""
    if args.dataset:
        from WeakSegLib.io.dataset import load_dataset

        cases = load_dataset(args.dataset).split(args.split)
        if not cases:
            raise WeakSegError(f"{args.dataset}: the dataset has no {args.split} case")
        return [(c.name, c.image) for c in cases]
    from WeakSegLib.io.volume import image_stem

    return [(image_stem(path), path) for path in args.images]


def cmd_predict(args: argparse.Namespace) -> int:
    single, many = args.image is not None, bool(args.images or args.dataset)
    if single == many or (args.images and args.dataset):
        raise WeakSegError("give one of --image (one scan, with --out), --images or --dataset (with --out-dir)")
    if single:
        if not args.out:
            raise WeakSegError("give --out: the label volume to write")
        job = settings_from(args, PredictJob, model=args.model, image=args.image, out=args.out, prob_out=args.prob)
        result = job.run(ProgressPrinter(None, args.quiet))
        print(f"prediction → {result['prediction']}" + (f", probability → {result['probability']}" if args.prob else ""))
        return EXIT_OK
    if not args.out_dir or args.out or args.prob:
        raise WeakSegError("several scans are predicted into --out-dir (one <case>.nii.gz each); --out and --prob "
                           "are for one --image")

    def report(event: dict) -> None:
        if event["event"] == "case":
            what = f"→ {event['prediction']}" if "prediction" in event else f"skipped: {event['error']}"
            print(f"[{event['done']}/{event['of']}] {event['name']} {what}", flush=True)

    cases = [PredictCase(name, image) for name, image in _prediction_cases(args)]
    result = settings_from(args, PredictCasesJob, model=args.model, cases=cases, out_dir=args.out_dir).run(report)
    failed = list(result["failed"])
    if failed:
        print(f"weakseg: error: {len(failed)} of {len(cases)} cases failed ({', '.join(failed)}); the others "
              f"are in {args.out_dir}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{len(cases)} predictions → {args.out_dir}")
    return EXIT_OK


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.pred_dir is not None:
        return _evaluate_dataset(args)
    if not (args.pred and args.ref):
        raise WeakSegError("give --pred and --ref (one prediction), or --pred-dir and --dataset (a test set)")
    import numpy as np

    from WeakSegLib.engine.predict.evaluation import label_difference
    from WeakSegLib.engine.predict.metrics import evaluate
    from WeakSegLib.io.volume import check_same_grid, read_label_volume

    pred, ref = read_label_volume(args.pred), read_label_volume(args.ref)
    check_same_grid(ref, pred, "reference", "prediction")
    differs = label_difference(set(np.unique(pred.array).tolist()) - {0}, set(np.unique(ref.array).tolist()) - {0})
    if differs:
        print(f"weakseg: warning: {args.pred}: {differs} (give --label to score one value)", file=sys.stderr)
    scores = evaluate(pred.array, ref.array, pred.spacing, args.label)
    if args.json == "-":
        print(json.dumps(scores))
    elif args.json:
        from WeakSegLib.io.atomic import atomic_write_bytes, json_bytes

        atomic_write_bytes(args.json, json_bytes(scores))
    else:
        print(f"Dice {scores['dice']:.4f}   IoU {scores['iou']:.4f}   HD95 {scores['hd95']:.2f} mm")
    return EXIT_OK


def _print_scores(result) -> None:
    """The per-case table and the per-label means of an evaluation."""
    print(f"{'case':24} {'label':>5} {'Dice':>6} {'IoU':>6} {'HD95 mm':>8} {'vol mL':>8} {'ref mL':>8} {'ΔV %':>7}")
    for s in result.scores:
        print(f"{s.case:24} {s.label:5d} {s.dice:6.3f} {s.iou:6.3f} {_number(s.hd95, 2):>8} {s.volume_ml:8.2f} "
              f"{s.reference_ml:8.2f} {_number(s.volume_difference_pct, 1):>7}")
    for label, summary in result.summary().items():
        shown = "   ".join(f"{name} {_number(summary[key]['mean'], d)} ± {_number(summary[key]['sd'], d)}"
                           for key, name, d in (("dice", "Dice", 3), ("iou", "IoU", 3), ("hd95", "HD95", 2)))
        print(f"label {label}, {summary['dice']['n']} cases: {shown}")


def _evaluate_dataset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from WeakSegLib.engine.predict.evaluation import evaluate_cases
    from WeakSegLib.io.atomic import atomic_write_bytes, check_output_folder, check_writable, json_bytes
    from WeakSegLib.io.dataset import load_dataset

    if not args.dataset:
        raise WeakSegError("--pred-dir needs --dataset: the dataset file that names the cases and their masks")
    for path, what in ((args.json, "JSON file"), (args.csv, "CSV file")):
        if path not in (None, "-"):
            check_writable(path, what)
    if args.figures:
        check_output_folder(args.figures, "figure folder")
    if not Path(args.pred_dir).is_dir():
        raise WeakSegError(f"{args.pred_dir}: prediction folder not found")
    cases = load_dataset(args.dataset).split(args.split)
    unreferenced = [c.name for c in cases if "mask" not in c.files]
    scored = [c for c in cases if "mask" in c.files]
    if not scored:
        raise WeakSegError(f"{args.dataset}: no {args.split} case gives a 'mask' to score against")
    result = evaluate_cases(args.pred_dir, [(c.name, c.files["mask"]) for c in scored],
                            None if args.label is None else [args.label])
    if not result.scores:
        raise WeakSegError(f"{args.pred_dir}: nothing to score: none of the {len(scored)} {args.split} case(s) "
                           f"with a mask has a prediction there ({len(result.missing)} missing"
                           f"{f', {len(result.failed)} unreadable' if result.failed else ''}; a prediction is "
                           f"<case>.nii.gz, .nrrd or .seg.nrrd)")
    if "-" not in (args.json, args.csv):  # the table, unless the JSON or CSV goes to the standard output
        _print_scores(result)
    for name in result.missing:
        print(f"weakseg: warning: {name}: no prediction in {args.pred_dir}", file=sys.stderr)
    for name, why in result.failed.items():
        print(f"weakseg: warning: {name}: not scored: {why}", file=sys.stderr)
    for name in unreferenced:
        print(f"weakseg: warning: {name}: the dataset gives no mask to score against", file=sys.stderr)
    for name, differs in result.label_mismatches().items():
        print(f"weakseg: warning: {name}: {differs}", file=sys.stderr)
    report = {**result.to_dict(), "no_reference": unreferenced}
    if args.json == "-":
        print(json.dumps(report))
    elif args.json:
        atomic_write_bytes(args.json, json_bytes(report))
    if args.csv == "-":
        print(result.to_csv(), end="")
    elif args.csv:
        atomic_write_bytes(args.csv, result.to_csv().encode("utf-8"))
    if args.figures:
        _case_figures(args, scored, result)
    return EXIT_OK


def _case_figures(args: argparse.Namespace, cases, result) -> None:
    """``evaluate --figures``: one overlay PNG per scored case."""
    from pathlib import Path

    from WeakSegLib.app.figures import case_figure
    from WeakSegLib.engine.predict.evaluation import find_prediction
    from WeakSegLib.io.boxes import load_boxes
    from WeakSegLib.io.names import case_file
    from WeakSegLib.io.volume import read_label_volume, read_volume

    folder = Path(args.figures)
    folder.mkdir(parents=True, exist_ok=True)
    dice = {}
    for s in result.scores:
        dice.setdefault(s.case, []).append(s.dice)
    for case in cases:
        if case.name not in dice:
            continue
        boxes = load_boxes(case.files["boxes"]).boxes if "boxes" in case.files else None
        png = case_figure(read_volume(case.image), read_label_volume(case.files["mask"]).array,
                          read_label_volume(find_prediction(args.pred_dir, case.name)).array, boxes,
                          f"{case.name}: Dice {sum(dice[case.name]) / len(dice[case.name]):.3f}",
                          case_file(folder, case.name, ".png"))
        print(f"figure → {png}")


def cmd_dataset_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from WeakSegLib.io.atomic import check_writable
    from WeakSegLib.io.dataset import init_dataset, save_dataset

    out = Path(args.out) if args.out else Path(args.folder) / "dataset.json"
    check_writable(out, "dataset file")
    dataset, report = init_dataset(args.folder, masks_for_training=args.masks_for_training)
    for line in report:
        print(line)
    save_dataset(dataset, out)
    counts = ", ".join(f"{len(dataset.split(s))} {s}" for s in SPLITS)
    print(f"{len(dataset.cases)} cases ({counts}) → {out}")
    return EXIT_OK


def cmd_dataset_check(args: argparse.Namespace) -> int:
    from WeakSegLib.io.dataset import check_dataset, load_dataset

    results = check_dataset(load_dataset(args.dataset))
    for name, problems in results:
        print(f"{name}: " + ("ok" if not problems else "; ".join(problems)))
    bad = sum(bool(p) for _, p in results)
    if bad:
        print(f"weakseg: error: {bad} of {len(results)} cases have problems", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"all {len(results)} cases ok")
    return EXIT_OK


def cmd_rank(args: argparse.Namespace) -> int:
    def report(event: dict) -> None:
        if event["event"] == "case" and not args.quiet:
            what = "predicted" if "prediction" in event else f"skipped: {event['error']}"
            print(f"[{event['done']}/{event['of']}] {event['name']} {what}", flush=True)

    job = settings_from(args, RankJob, model=args.model, dataset=args.dataset, out=args.out, pred_dir=args.pred_dir,
                        split=args.split)
    result = job.run(report)
    for name, score in result["ranked"][:args.show]:
        print(f"{score:.3f}  {name}  ({result['volumes_mm3'][name] / 1000:.1f} ml)")
    print(f"{len(result['ranked'])} cases ranked, most uncertain first → {result['ranking']}")
    failed = result["failed"]
    if failed:
        print(f"weakseg: error: {len(failed)} cases failed ({', '.join(failed)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    from WeakSegLib.io import review
    from WeakSegLib.io.dataset import load_dataset

    dataset = load_dataset(args.dataset)
    if args.review_command == "accept":
        path = review.accept(dataset, args.case, args.mask, args.by)
        print(f"{args.case}: accepted → {path} (trains on this mask)")
    elif args.review_command == "reject":
        review.reject(dataset, args.case)
        print(f"{args.case}: rejected (back to boxing)")
    else:
        waiting = sorted(dataset.cases, key=lambda c: (c.status != "predicted", -(c.review.score or 0.0)
                                                       if c.review is not None else 0.0))
        for case in waiting:
            score = case.review.score if case.review is not None else None
            print(f"{case.name}\t{case.status}\t{_number(score, 3)}")
    return EXIT_OK


def cmd_tighten_train(args: argparse.Namespace) -> int:
    from WeakSegLib.io.volume import read_direction

    if len(args.mask) != len(args.image):
        raise WeakSegError(f"give one --mask per --image ({len(args.image)} images, {len(args.mask)} masks)")
    config = settings_from(args, TightenerConfig, axis=_resolve_axis(args.axis, lambda: read_direction(args.image[0])))
    printer = ProgressPrinter(args.events, args.quiet)
    job = TightenTrainJob(args.out, [TightenerCase(i, m) for i, m in zip(args.image, args.mask)], config,
                          resume=not args.no_resume)
    try:
        result = job.run(printer)
    finally:
        printer.close()
    print(f"tightener → {args.out}  {result['patches']} patches, metrics {json.dumps(result['metrics'])}")
    return EXIT_OK


def cmd_tighten(args: argparse.Namespace) -> int:
    job = settings_from(args, TightenJob, model=args.model, image=args.image, boxes=args.boxes, out=args.out,
                        settings=settings_from(args, TightenSettings), report_out=args.report)
    report = job.run(events.ignore)
    for w in report["warnings"]:
        print(f"weakseg: warning: {w}", file=sys.stderr)
    for b in report["boxes"]:
        print(f"box #{b['box']} (label {b['label']}): {b['slices_in']} slices → {b['slices_out']} boxes "
              f"({b['dropped_ends']} empty end slices dropped, {b['outliers']} outliers, {b['filled']} filled, "
              f"{b['smoothed']} smoothed{', UNTIGHTENED' if b['fallback'] else ''})")
    print(f"boxes → {args.out}" + (f", report → {args.report}" if args.report else ""))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from WeakSegLib.app.demo import run_demo

    report = run_demo(args.out, case=args.case, epochs=args.epochs, device=args.device, quiet=args.quiet)
    print(f"report → {report}")
    return EXIT_OK


def _run_options(parser: argparse.ArgumentParser) -> None:
    """``--events``, ``--no-resume`` and ``--quiet`` of the training commands."""
    parser.add_argument("--events", help="append JSON-lines events to this file")
    parser.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weakseg", description="Train segmentation networks from bounding boxes.")
    p.add_argument("--version", action="version", version=f"weakseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    axis_help = "slice axis in array order (z,y,x): 0, 1, 2 or auto (axial)"

    b = sub.add_parser("boxes-from-mask", help="tight boxes around the objects of a label mask")
    b.add_argument("mask")
    b.add_argument("--out", required=True, help="box JSON file to write")
    b.add_argument("--mode", choices=("slice", "3d"), default="slice")
    b.add_argument("--axis", type=_axis, default=AUTO, help=axis_help)
    b.add_argument("--margin", type=int, default=0, help="voxels added on each side")
    b.add_argument("--label", type=int, action="append", help="label value(s) to box (default: all)")
    b.add_argument("--per-label", action="store_true", help="one box per label and slice, not per connected component")
    b.add_argument("--name", help="name of the object (stored in the box file)")
    b.set_defaults(func=cmd_boxes_from_mask)

    ds = sub.add_parser("dataset", help="dataset files: the cases of a cohort (MONAI datalist JSON)")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    di = ds_sub.add_parser("init", help="write a dataset file from a folder of images and the files named after them")
    di.add_argument("folder")
    di.add_argument("--out", help="dataset file to write (default: FOLDER/dataset.json)")
    di.add_argument("--masks-for-training", action="store_true",
                    help="images with only a mask are training cases (recipe 'full'), not test cases")
    di.set_defaults(func=cmd_dataset_init)
    dc = ds_sub.add_parser("check", help="read every case of a dataset file and list each case's problems")
    dc.add_argument("dataset")
    dc.set_defaults(func=cmd_dataset_check)

    t = sub.add_parser("train", help="train a model from boxes (or masks, sizes, partial labels)")
    t.add_argument("--dataset", help="dataset file: its training cases (instead of --image and the per-image files)")
    t.add_argument("--image", action="append", help="training image (repeat for several)")
    t.add_argument("--boxes", action="append", help="box JSON file, one per --image ('-' for none)")
    t.add_argument("--mask", action="append",
                   help="label mask, one per --image ('-' for none): recipe 'full'; with a box recipe, images given "
                        "a mask and no boxes train on the mask (mixed supervision), and a mask beside boxes is the "
                        "reference of the Dice per epoch")
    t.add_argument("--eval-mask", action="append", help="reference mask to report Dice per epoch (not trained on)")
    t.add_argument("--sizes", action="append",
                   help="size: size label file, one per --image ('-' for none); with --mask, the mask labels "
                        "the slices where it holds an object")
    t.add_argument("--partial", action="append", help="partial-label recipes: partial label volume, one per --image")
    t.add_argument("--reference", action="append",
                   help="reference masks, one per --image ('-' for none): accl-unpaired (any masks of the "
                        "structure), accl-paired (the image's true mask), sccl (to derive its size bounds)")
    t.add_argument("--out", required=True, help="model folder to write (resumes when it holds a checkpoint)")
    by_input = ", ".join(f"{s.name} with --{s.default_for}{' only' * (s.default_for == 'mask')}"
                         for s in specs() if s.default_for)
    t.add_argument("--recipe", choices=(AUTO_RECIPE, *recipe_names()), default=AUTO_RECIPE,
                   help=f"default {AUTO_RECIPE}: {SLICE_BOX_RECIPE} for per-slice boxes on a 2D network (a cohort of "
                        f"up to {BOXSUP_SLICES_PER_EPOCH}× the slices of an epoch), {DEFAULT_RECIPE} for 3D boxes, "
                        f"3D networks or larger cohorts; {by_input}")
    t.add_argument("--dims", choices=[m for m, d in MODES.items() if d["context"] == 1], default=next(iter(MODES)),
                   help="network dimensions (2d: slices, with --context for 2.5D; 3d: volumes)")
    t.add_argument("--axis", type=_axis, default=AUTO,
                   help="slice axis of the images once reoriented to RAS: 0 axial (auto), 1 coronal, 2 sagittal")
    add_options(t, TrainConfig)
    add_recipe_options(t)
    t.add_argument("--gpus", type=int, default=1,
                   help="train in N processes on this machine, one CUDA GPU each (with --device cpu: N CPU "
                        "processes); started as torchrun --standalone --nproc_per_node N would")
    t.add_argument("--backend", choices=DIST_BACKENDS, default=TrainJob.backend,
                   help="process-group backend under torchrun / --gpus: NCCL on CUDA GPUs, gloo on the CPU")
    _run_options(t)
    t.set_defaults(func=cmd_train)

    sz = sub.add_parser("sizes-from-mask", help="per-slice object size labels from a label mask")
    sz.add_argument("mask")
    sz.add_argument("--out", required=True, help="size JSON file to write")
    sz.add_argument("--axis", type=_axis, default=AUTO, help=axis_help)
    sz.add_argument("--label", type=int, action="append", help="label value(s) to measure (default: all)")
    sz.add_argument("--slices", type=int, nargs="+", help="only these slice indices (default: all)")
    sz.add_argument("--name", help="name of the object (stored in the size file)")
    sz.set_defaults(func=cmd_sizes_from_mask)

    pm = sub.add_parser("partial-from-mask", help="partial labels (scribbles) made by shrinking a label mask")
    pm.add_argument("mask")
    pm.add_argument("--out", required=True, help="partial label volume to write (0 unknown, 255 background)")
    pm.add_argument("--axis", type=_axis, default=AUTO, help=axis_help)
    pm.add_argument("--erode", type=float, default=3.0, help="object voxels within this distance of its edge become unknown")
    pm.add_argument("--background-margin", type=float, default=10.0,
                    help="background voxels within this distance of an object become unknown")
    pm.add_argument("--label", type=int, action="append", help="label value(s) to keep (default: all)")
    pm.set_defaults(func=cmd_partial_from_mask)

    r = sub.add_parser("predict", help="predict label volumes with a model folder: one scan or many")
    r.add_argument("--model", required=True)
    r.add_argument("--image", help="one scan (with --out)")
    r.add_argument("--out", help="label volume to write for --image")
    r.add_argument("--prob", help="also write the foreground probability volume of --image here")
    r.add_argument("--images", nargs="+", help="several scans (with --out-dir): each becomes <name>.nii.gz")
    r.add_argument("--dataset", help="dataset file: predict the cases of --split (with --out-dir)")
    r.add_argument("--split", choices=SPLITS, default="test", help="cases of --dataset to predict (default: test)")
    r.add_argument("--out-dir", help="folder of the predictions of --images or --dataset (<case>.nii.gz)")
    add_options(r, PredictOptions)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_predict)

    rk = sub.add_parser("rank", help="predict the unlabelled cases (no mask, box or review decision) and rank them "
                                     "for review, most uncertain first")
    rk.add_argument("--model", required=True)
    rk.add_argument("--dataset", required=True, help="dataset file; each ranked case's prediction and score go into it")
    rk.add_argument("--split", choices=SPLITS, help="rank only the cases of this split (default: every case)")
    rk.add_argument("--out", help="ranking table (CSV) to write (default: ranking.csv beside the dataset file)")
    rk.add_argument("--pred-dir", help="folder of the predictions (default: predictions/ beside the dataset file)")
    add_options(rk, DeviceOption)
    rk.add_argument("--show", type=int, default=10, help="print the first N of the ranking")
    rk.add_argument("--quiet", action="store_true")
    rk.set_defaults(func=cmd_rank)

    rv = sub.add_parser("review", help="accept or reject a ranked prediction, or list the cases' review states")
    rv_sub = rv.add_subparsers(dest="review_command", required=True)
    ra = rv_sub.add_parser("accept", help="the case's prediction (or --mask, edited from it) becomes its training mask")
    ra.add_argument("case")
    ra.add_argument("--dataset", required=True)
    ra.add_argument("--mask", help="the edited segmentation to accept instead of the prediction (label volume)")
    ra.add_argument("--by", help="who accepts (default: the login name)")
    rj = rv_sub.add_parser("reject", help="drop the case's prediction (or accepted mask): it goes back to boxing")
    rj.add_argument("case")
    rj.add_argument("--dataset", required=True)
    rl = rv_sub.add_parser("list", help="every case's status and review score, those waiting for review first")
    rl.add_argument("--dataset", required=True)
    rv.set_defaults(func=cmd_review)

    e = sub.add_parser("evaluate", help="Dice, IoU, HD95 and volumes of predictions against reference masks")
    e.add_argument("--pred", help="one prediction (with --ref)")
    e.add_argument("--ref", help="its reference mask")
    e.add_argument("--pred-dir", help="folder of predictions <case>.nii.gz (with --dataset)")
    e.add_argument("--dataset", help="dataset file naming the cases and their reference masks")
    e.add_argument("--split", choices=SPLITS, default="test", help="cases of --dataset to score (default: test)")
    e.add_argument("--label", type=int, help="score only this label value (default: --pred/--ref: any non-zero "
                                              "label; --pred-dir: each label value present)")
    e.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the scores as JSON to FILE (no FILE: print them)")
    e.add_argument("--csv", metavar="FILE", help="--pred-dir: write one row per case and label to FILE ('-': print)")
    e.add_argument("--figures", metavar="DIR", help="--pred-dir: one overlay PNG per case in DIR")
    e.set_defaults(func=cmd_evaluate)

    tt = sub.add_parser("tighten-train", help="train a box tightener (patch classifier) on fully labelled volumes")
    tt.add_argument("--image", action="append", required=True, help="labelled training image (repeat for several)")
    tt.add_argument("--mask", action="append", required=True, help="its label mask, one per --image")
    tt.add_argument("--out", required=True, help="tightener folder to write (resumes when it holds a checkpoint)")
    tt.add_argument("--axis", type=_axis, default=AUTO, help=axis_help)
    add_options(tt, TightenerConfig)
    _run_options(tt)
    tt.set_defaults(func=cmd_tighten_train)

    ti = sub.add_parser("tighten", help="tighten the per-slice boxes of 3D boxes with a trained tightener")
    ti.add_argument("--model", required=True, help="tightener folder")
    ti.add_argument("--image", required=True)
    ti.add_argument("--boxes", required=True, help="box JSON file (3D boxes, or slice boxes on the tightener's axis)")
    ti.add_argument("--out", required=True, help="box JSON file of the tightened slice boxes")
    add_options(ti, TightenSettings)
    add_options(ti, DeviceOption)
    ti.add_argument("--report", help="write the per-box report (JSON) here")
    ti.set_defaults(func=cmd_tighten)

    d = sub.add_parser("demo", help="the whole path on a real case: boxes → training → prediction → report")
    d.add_argument("--out", default="weakseg-demo")
    d.add_argument("--case", default="vertebral-body-ct")
    d.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    add_options(d, DeviceOption)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
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

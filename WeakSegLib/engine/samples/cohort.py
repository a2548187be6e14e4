"""Reading a training cohort into the canonical space, with memory bounded by the settings.

Two passes over the cases (as nnU-Net's fingerprint, then its preprocessing):

1. cheap: every image's header (grid, for the target spacing) and the label values its annotations
   use — the inputs each case must give are checked here (the recipe's registry entry), so a bad
   case is refused before any work;
2. per case: read the image and the inputs the recipe reads, check them against the image's grid,
   move them to the canonical space (:mod:`WeakSegLib.engine.samples.preprocess`), and hand the case to a
   sink: all cases in memory (:class:`~WeakSegLib.engine.samples.data.SampleSet`, when they take at most
   ``cache_gb`` or the recipe revises labels over the whole set) or one case at a time to a
   :class:`~WeakSegLib.engine.samples.store.SliceStore` on disk.

Intensities are mapped after the pass (a CT cohort's mapping needs every case's sample first): in
memory before the samples are built, on disk when each batch is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.samples.data import Case, SampleSet, build_samples
from WeakSegLib.engine.samples.preprocess import (
    canonicalize,
    foreground_sample,
    looks_like_ct,
    target_spacing,
)
from WeakSegLib.engine.samples.store import SliceStore
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box, BoxSet, check_boxes_fit, check_drawn_grid, load_boxes, split_box
from WeakSegLib.io.canonical import IntensityMapping, Plan
from WeakSegLib.io.partial import PARTIAL_BACKGROUND
from WeakSegLib.io.sizes import SizeSet, load_sizes
from WeakSegLib.io.volume import (
    IntensityMap,
    Volume,
    check_not_constant,
    check_same_grid,
    read_header,
    read_label_volume,
    read_volume,
)
from WeakSegLib.options import AUTO
from WeakSegLib.registry import AUTO_RECIPE, INPUT_NAMES, RecipeSpec, default_recipe, recipe_spec


@dataclass
class Cohort:
    """The training samples and what they say together.

    Attributes:
        samples: in memory (:class:`SampleSet`) or on disk (:class:`SliceStore`).
        plan: the canonical space (orientation, spacing, intensities) every case was moved to.
        label_values: label values trained, in class order; ``label_names`` their names.
        names: the image paths.
        warnings: inputs given that the recipe does not use.
        summary: for the card: cases, samples, in memory or not.
        boxes_from_3d: some case trains on a 3D box (its slices are loose boxes); False when every box
            was drawn on a slice, or no case gives boxes.
    """

    samples: SampleSet | SliceStore
    plan: Plan
    label_values: list[int]
    label_names: dict[int, str]
    names: list[str]
    warnings: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    boxes_from_3d: bool = False


def inputs_to_read(tc: TrainCase, spec: RecipeSpec) -> tuple[list[str], list[str]]:
    """The inputs of case ``tc`` that recipe ``spec`` reads, in reading order, and those it gives that
    the recipe leaves unused (see :class:`~WeakSegLib.registry.RecipeSpec`).

    Raises:
        InputError: the case gives none of the recipe's label inputs, or lacks the paired reference
            mask the recipe needs.
    """
    given = [kind for kind in INPUT_NAMES if getattr(tc, kind) is not None]
    first = next((kind for kind in spec.label_inputs() if kind in given), None)
    if first is None:
        raise InputError(spec.missing_labels_message(tc.image))
    if spec.reference == "paired" and "reference" not in given:
        raise InputError(f"recipe {spec.name!r} needs this image's true mask: give --reference for {tc.image}")
    read = [kind for kind in spec.inputs()
            if kind == first or (kind in given and (kind in spec.extra or kind == "reference"))]
    return read, [kind for kind in given if kind not in read]


def recipe_for(cases: Sequence[TrainCase], config: TrainConfig) -> str:
    """``config.recipe``, or for ``auto`` the recipe :func:`~WeakSegLib.registry.default_recipe`
    picks from the inputs the cases give and the kinds of their boxes (each box file read once)."""
    if config.recipe != AUTO_RECIPE:
        return config.recipe
    given = {kind for tc in cases for kind in ("boxes", "mask", "sizes", "partial") if getattr(tc, kind) is not None}
    kinds = [box.kind for tc in cases if tc.boxes is not None for box in load_boxes(tc.boxes).boxes]
    return default_recipe(given, boxes=kinds, spatial_dims=config.spatial_dims,
                          slices_per_epoch=config.epoch_batches * config.batch_size)


def as_trained(tc: TrainCase, spec: RecipeSpec) -> TrainCase:
    """A case of a dataset as recipe ``spec`` trains on it: a mask the recipe would not read (a box
    recipe, or boxes given beside it) becomes the case's evaluation mask, the reference of the Dice
    reported each epoch."""
    if tc.mask is None or tc.eval_mask is not None or "mask" not in inputs_to_read(tc, spec)[1]:
        return tc
    return dataclasses.replace(tc, mask=None, eval_mask=tc.mask)


class _Annotations:
    """The cases' box and size files, each read once for both passes (they see the same content)."""

    def __init__(self) -> None:
        self._read: dict[tuple[str, str], BoxSet | SizeSet] = {}

    def __call__(self, kind: str, path: str) -> Any:
        """The :class:`BoxSet` (``kind`` ``boxes``) or :class:`SizeSet` (``sizes``) of ``path``."""
        key = (kind, str(path))
        if key not in self._read:
            self._read[key] = load_boxes(path) if kind == "boxes" else load_sizes(path)
        return self._read[key]


def _label_names(tc: TrainCase, read: Sequence[str], config: TrainConfig, names: dict[int, str],
                 annotations: _Annotations) -> None:
    """Pass 1: the label values (and names) the case's training inputs use join ``names`` (first
    name seen wins)."""
    for kind in read:
        if kind in ("boxes", "sizes"):
            path = getattr(tc, kind)
            given = annotations(kind, path)
            entries = given.boxes if kind == "boxes" else given.sizes
            values = {e.label for e in entries if config.labels is None or e.label in config.labels}
            if not values:
                raise InputError(f"{path}: no {dict(boxes='box', sizes='size')[kind]} with label(s) {config.labels}")
            for v in sorted(values):
                names.setdefault(v, given.labels.get(v, f"label {v}"))
        elif kind in ("mask", "partial"):
            found = config.labels or [int(v) for v in np.unique(read_label_volume(getattr(tc, kind)).array)
                                      if v and v != PARTIAL_BACKGROUND]
            for v in found:
                names.setdefault(v, f"label {v}")


def _has_3d_box(boxes: Sequence[Box]) -> bool:
    """Some box is a 3D box: its slices are loose boxes (boxes drawn on slices are tight)."""
    return any(b.kind == "3d" for b in boxes)


class _CaseReader:
    """Pass 2: the inputs of one case, read and checked against its image's grid."""

    def __init__(self, tc: TrainCase, image: Volume, config: TrainConfig, spec: RecipeSpec,
                 annotations: _Annotations) -> None:
        self.tc, self.image, self.config, self.spec, self.annotations = tc, image, config, spec, annotations

    def boxes(self) -> list[Box]:
        tc, config = self.tc, self.config
        boxset: BoxSet = self.annotations("boxes", tc.boxes)
        check_boxes_fit(boxset, self.image.geometry(), str(tc.image))
        boxes = [b for b in boxset.boxes if config.labels is None or b.label in config.labels]
        if self.spec.tight_boxes and config.spatial_dims == 2 and _has_3d_box(boxes):
            raise InputError(f"{tc.boxes}: recipe {self.spec.name!r} learns from boxes tight on every slice, and "
                             "the slices of a 3D box are not: draw slice boxes, tighten the 3D box (weakseg tighten), "
                             "or train polar-mil")
        return boxes

    def labels(self, path: str, what: str, same_grid: bool = True) -> Volume:
        vol = read_label_volume(path)
        if same_grid:
            check_same_grid(self.image, vol, str(self.tc.image), f"{what} {path}")
        return vol

    def sizes(self):
        tc, config = self.tc, self.config
        sizeset = self.annotations("sizes", tc.sizes)
        check_drawn_grid({**(sizeset.geometry or {}), "shape": list(sizeset.shape)}, self.image.geometry(), "size",
                         str(tc.image))
        return [e for e in sizeset.sizes if config.labels is None or e.label in config.labels], sizeset.axis


def _slice_boxes(boxes: Sequence[Box], config: TrainConfig, name: str) -> list[Box]:
    """Canonical boxes as the network's samples need them: slice boxes along the training axis (3D
    boxes cut) for 2D, the boxes as they are for 3D."""
    if config.spatial_dims == 3:
        return list(boxes)
    out: list[Box] = []
    for box in boxes:
        if box.kind == "slice" and box.axis != config.axis:
            raise InputError(f"{name}: boxes drawn on slices across canonical axis {box.axis} (0 axial, 1 coronal, "
                             f"2 sagittal), but training slices along axis {config.axis}")
        out.extend(split_box(box, config.axis))
    return out


def _estimate_bytes(headers: Sequence[Volume], plan: Plan, context: int) -> float:
    """Bytes the samples of these images take in memory once resampled (image with its 2.5D
    context, labels, box masks, evaluation labels)."""
    total = 0.0
    for h in headers:
        extent = np.asarray(h.shape[::-1], float) * np.asarray(h.spacing, float)  # ITK order
        voxels = np.prod(extent / np.asarray(plan.spacing)) if plan.spacing else np.prod(h.shape)
        total += voxels * (4 * context + 4)
    return total


def _modality(config: TrainConfig, first: np.ndarray) -> str:
    if config.modality != AUTO:
        return config.modality
    return "ct" if looks_like_ct(first) else "mr"


def read_cohort(cases: Sequence[TrainCase], config: TrainConfig, store_folder: Path) -> Cohort:
    """The training samples of ``cases`` (module docstring); ``store_folder`` holds them when they
    are read from disk.

    Raises:
        InputError: no case, a case without the inputs its recipe needs (named), an unreadable or
            mismatched input (named), no label at all.
    """
    if not cases:
        raise InputError("no training case given: pass at least one --image")
    spec = recipe_spec(config.recipe)
    names: dict[int, str] = {}
    warnings: list[str] = []
    reads = []
    annotations = _Annotations()
    for tc in cases:  # pass 1
        read, unused = inputs_to_read(tc, spec)
        reads.append(read)
        warnings += [f"recipe {spec.name!r} does not use the {INPUT_NAMES[kind]} given for {tc.image} "
                     f"(--{kind}): ignored" for kind in unused]
        _label_names(tc, read, config, names, annotations)
    boxed = sum("boxes" in read for read in reads)  # cases that give boxes (the others: masks)
    if spec.mixes_masks and not boxed:
        raise InputError(f"recipe {spec.name!r} learns from boxes, but no case gives boxes: give --boxes for at least "
                         "one image, or train recipe 'full' on the masks")
    for kind in spec.needs:
        if all(getattr(tc, kind) is None for tc in cases):
            raise InputError(f"recipe {spec.name!r} needs {INPUT_NAMES[kind]}: give --{kind} for at least one image"
                             + (" (any masks of the structure)" if kind == "reference" else ""))
    values = sorted(config.labels or names)
    if not values:
        raise InputError(f"no object to learn: the {' / '.join(INPUT_NAMES[k] for k in spec.labels)} of "
                         f"{', '.join(str(tc.image) for tc in cases)} hold no label")
    headers = [read_header(tc.image) for tc in cases]
    plan = Plan(list(config.spacing) if config.spacing else target_spacing(headers), "mr")
    in_memory = (spec.in_memory or config.spatial_dims == 3
                 or _estimate_bytes(headers, plan, config.context) <= config.cache_gb * 1e9)
    sink: list[Case] | SliceStore = [] if in_memory else SliceStore(store_folder, values, axis=config.axis,
                                                                    context=config.context)
    maps: list[IntensityMap] = []
    samples_inside: list[np.ndarray] = []  # a CT cohort's: intensities inside each case's boxes or masks
    covered: list[bool] = []  # per case: no voxel outside its boxes (or no boxes read)
    from_3d = False  # some case trains on a 3D box
    for index, (tc, read) in enumerate(zip(cases, reads)):  # pass 2
        image = read_volume(tc.image)
        check_not_constant(image.array, tc.image, "learn from")
        if index == 0:
            plan.modality = _modality(config, image.array)
            plan.normalization = IntensityMapping.choose(config.normalization, plan.modality, config.percentiles,
                                                         config.window)
        case, sample, boxes_everywhere, case_from_3d = _read_case(tc, read, image, spec, config, plan, annotations)
        from_3d = from_3d or case_from_3d
        covered.append(boxes_everywhere or "boxes" not in read)
        if plan.normalization.cohort:
            samples_inside.append(sample)
            maps.append(IntensityMap())  # the cohort's, below
        else:
            maps.append(plan.normalization.map_for(case.image))
        if isinstance(sink, list):
            sink.append(case)
        else:
            sink.add(case)
    if spec.labels[0] == "boxes" and all(covered):
        raise InputError(f"recipe {spec.name!r} learns the background from outside the boxes, but the boxes cover "
                         "every voxel of every training image: draw each box around its object only")
    if plan.normalization.cohort:  # one map for the cohort, fitted on every case's boxes or masks
        plan.normalization = plan.normalization.fitted(samples_inside)
        maps = [plan.normalization.map_for(case.image)] * len(maps)
    if isinstance(sink, list):
        for case, mapping in zip(sink, maps):
            case.image = mapping.apply(case.image)
        samples: SampleSet | SliceStore = build_samples(sink, values, spatial_dims=config.spatial_dims,
                                                        axis=config.axis, context=config.context)
    else:
        sink.set_intensity_maps(maps)
        samples = sink
    summary = {"cases": len(cases), "samples": len(samples), "in_memory": bool(in_memory), "spacing": plan.spacing,
               "modality": plan.modality}
    if spec.mixes_masks:  # how many cases train on each kind of label (mixed supervision)
        summary["supervision"] = {"boxes": boxed, "mask": len(reads) - boxed}
    return Cohort(samples, plan, values, {v: names.get(v, f"label {v}") for v in values},
                  [str(tc.image) for tc in cases], warnings, summary, from_3d)


def _read_case(tc: TrainCase, read: Sequence[str], image: Volume, spec: RecipeSpec, config: TrainConfig,
               plan: Plan, annotations: _Annotations) -> tuple[Case, np.ndarray, bool, bool]:
    """One case in the canonical space (raw intensities), intensities sampled inside its boxes or masks
    (the CT cohort's statistics), whether its boxes cover every voxel (it shows no background), and
    whether it trains on a 3D box."""
    reader = _CaseReader(tc, image, config, spec, annotations)
    labels: dict[str, np.ndarray] = {}
    boxes, sizes, size_axis = None, None, 0
    reference = None
    for kind in read:
        if kind == "boxes":
            boxes = reader.boxes()
        elif kind == "sizes":
            sizes, size_axis = reader.sizes()
        elif kind == "reference":
            vol = reader.labels(tc.reference, "reference masks", same_grid=spec.reference == "paired")
            if spec.reference == "paired":
                labels["reference"] = vol.array
            else:
                reference = canonicalize(vol.with_array(vol.array.astype(np.float32)), plan,
                                         {"reference": vol.array}, normalize_image=False).labels["reference"]
        else:
            labels[kind] = reader.labels(getattr(tc, kind), {"mask": "mask", "partial": "partial labels"}[kind]).array
    if tc.eval_mask is not None:
        labels["eval_mask"] = reader.labels(tc.eval_mask, "evaluation mask").array
    moved = canonicalize(image, plan, labels, boxes, sizes, size_axis, normalize_image=False)
    if sizes is not None and moved.axis_map[size_axis] != config.axis:
        raise InputError(f"{tc.sizes}: sizes were measured on slices along axis {size_axis}, which is canonical axis "
                         f"{moved.axis_map[size_axis]}, but training slices along axis {config.axis}")
    case = Case(moved.volume.array, name=str(tc.image), sizes=moved.sizes,
                boxes=None if moved.boxes is None else _slice_boxes(moved.boxes, config, str(tc.image)),
                mask=moved.labels.get("mask"), partial=moved.labels.get("partial"),
                eval_mask=moved.labels.get("eval_mask"),
                reference=moved.labels.get("reference", reference),
                full=spec.mixes_masks and "boxes" not in read)
    inside = np.zeros(case.image.shape, bool)
    for box in moved.boxes or []:
        inside[box.slices()] = True
    boxes_everywhere = bool(moved.boxes) and bool(inside.all())
    for kind in ("mask", "partial"):
        if kind in moved.labels:
            inside |= (moved.labels[kind] > 0) & (moved.labels[kind] != PARTIAL_BACKGROUND)
    return (case, foreground_sample(case.image, inside if inside.any() else np.ones_like(inside)), boxes_everywhere,
            _has_3d_box(boxes or []))

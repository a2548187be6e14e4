"""Model folders and their cards, typed and read without torch (Slicer's own process shows them).

A trained model is a folder: ``model.pt`` (the network's ``state_dict``, read with
``torch.load(weights_only=True)`` by :mod:`WeakSegLib.engine.predict.model`) and ``model.json``, its card.
Two card formats share the layout:

- ``weakseg-model`` (:class:`ModelCard`), a segmentation network::

    {"format": "weakseg-model", "version": 1,
     "network": {"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                 "channels": [16, 32, 64, 128, 256]},
     "input": {"mode": "2.5d", "axis": 0, "context": 3, "patch_size": [64, 64],
               "preprocessing": {"spacing": [sx, sy, sz], "modality": "ct", "orientation": "RAS",
                                 "normalization": {"method": "ct", "clip": [lo, hi], "mean": m, "std": s}}},
     "labels": [{"value": 1, "name": "vertebra", "color": [0.9, 0.35, 0.25]}],
     "recipe": "tightness+size+emptiness",
     "training": {... the TrainConfig, "cases": [...] ...},
     "history": [{"epoch": 1, "loss": ..., "dice": ...}, ...], "metrics": {"loss": ..., "dice": ...},
     "versions": {"weakseg": "...", "torch": "...", "monai": "..."},
     "postprocess": {"steps": {"1": "largest"}, "scores": {"1": {"none": 0.81, ...}}, "reference": "masks",
                     "cases": 3}}          # decided on the training cases; absent: none

- ``weakseg-tightener`` (:class:`TightenerCard`), a box tightener's patch classifier (network, patch
  grid, threshold, the intensity profile of its training images; :mod:`WeakSegLib.tightener`).

Spacing is ITK order (x, y, z) in mm; ``axis`` is the slice axis in array order (z, y, x).
``input.preprocessing`` is the canonical space (:class:`~WeakSegLib.io.canonical.Plan`); a card written
before it (``input.spacing`` and ``input.normalization``, no ``preprocessing``) is read as the plan that
takes images as they are stored (:func:`~WeakSegLib.io.canonical.plan_before_plans`).
Reading checks every field a user of the card relies on and names the first one missing or wrong.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from WeakSegLib.config import DEFAULT_CHANNELS, POSTPROCESS_STEPS, mode_of
from WeakSegLib.errors import InputError, ModelError
from WeakSegLib.io.canonical import IntensityMapping, Plan, plan_before_plans
from WeakSegLib.io.fields import Fields, read_versioned
from WeakSegLib.io.volume import MAX_LABEL

MODEL_FORMAT = "weakseg-model"
TIGHTENER_FORMAT = "weakseg-tightener"
CARD_VERSION = 1
WEIGHTS = "model.pt"
CARD = "model.json"

#: default segment colours (RGB in [0, 1]) for labels 1, 2, …
PALETTE = ((0.90, 0.35, 0.25), (0.30, 0.65, 0.90), (0.40, 0.80, 0.35), (0.95, 0.80, 0.25),
           (0.70, 0.45, 0.85), (0.35, 0.85, 0.80), (0.95, 0.55, 0.75), (0.60, 0.60, 0.60))


def default_color(index: int) -> list[float]:
    """Colour of the ``index``-th foreground class (0-based)."""
    return list(PALETTE[index % len(PALETTE)])


@dataclass
class NetworkSpec:
    """The segmentation network: name, 2 or 3 spatial dimensions, input channels (slices of 2.5D
    input), output channels (classes with background), UNet channels per level."""

    name: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    channels: tuple[int, ...] = DEFAULT_CHANNELS


@dataclass
class InputSpec:
    """What the network expects: ``mode`` (2d, 2.5d, 3d), slice ``axis`` (array order), ``context``
    slices per input, the training ``patch_size`` (3D sliding-window inference), and ``preprocessing``:
    the canonical space images are moved to first (spacing, orientation, intensities)."""

    mode: str
    axis: int
    context: int = 1
    patch_size: list[int] | None = None
    preprocessing: Plan = field(default_factory=lambda: Plan(None, "mr"))


@dataclass
class LabelSpec:
    """One foreground class: label value written into predictions, segment name and RGB colour."""

    value: int
    name: str
    color: list[float]


@dataclass
class ModelCard:
    """The card of a segmentation model folder (module docstring)."""

    network: NetworkSpec
    input: InputSpec
    labels: list[LabelSpec]
    recipe: str
    training: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    postprocess: dict = field(default_factory=dict)

    FORMAT = MODEL_FORMAT

    def postprocess_steps(self) -> dict[int, str]:
        """``{label value: step}`` of the card's post-processing (:mod:`WeakSegLib.engine.predict.postprocess`),
        empty for a card written before it or a model trained without it."""
        return {int(k): v for k, v in self.postprocess.get("steps", {}).items()}

    def label_table(self) -> dict[int, dict]:
        """``{value: {"name", "color"}}`` in class order (what segmentation nodes are made from)."""
        return {entry.value: {"name": entry.name, "color": list(entry.color)} for entry in self.labels}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input"]["preprocessing"] = self.input.preprocessing.to_dict()
        return {"format": MODEL_FORMAT, "version": CARD_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = "model card") -> "ModelCard":
        card = Fields(d, where, ModelError)
        net, inp = card.sub("network"), card.sub("input")
        labels = []
        for i, entry in enumerate(card.items("labels")):
            f = Fields(entry, f"{where}.labels[{i}]", ModelError)
            value = f.whole("value", low=1, high=MAX_LABEL)
            labels.append(LabelSpec(value, f.text("name", f"label {value}"), f.numbers("color", 3, default_color(i))))
        if not labels:
            raise ModelError(f"{where} lists no label")
        network = NetworkSpec(net.text("name"), net.whole("spatial_dims", low=2, high=3), net.whole("in_channels", low=1),
                              net.whole("out_channels", low=2),
                              tuple(net.wholes("channels", None, low=1, default=list(DEFAULT_CHANNELS))))
        preprocessing = inp.mapping("preprocessing", None)
        try:
            plan = (plan_before_plans(inp) if preprocessing is None
                    else Plan.from_dict(preprocessing, "input.preprocessing"))
        except InputError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        spec = InputSpec(inp.text("mode", mode_of(network.spatial_dims, 1)), inp.whole("axis", low=0, high=2),
                         inp.whole("context", 1, low=1), inp.items("patch_size", None), plan)
        if network.out_channels != len(labels) + 1:
            raise ModelError(f"{where}: {len(labels)} labels but {network.out_channels} network outputs "
                             "(one per label and the background)")
        post = card.sub("postprocess", {})
        values = {entry.value for entry in labels}
        for key, step in post.mapping("steps", {}).items():
            if not key.isdigit() or int(key) not in values or step not in POSTPROCESS_STEPS:
                raise ModelError(f"{where}: postprocess.steps maps {key!r} to {step!r}; give label values of the card "
                                 f"and steps of {', '.join(POSTPROCESS_STEPS)}")
        return cls(network, spec, labels, card.text("recipe", "?"), card.mapping("training", {}),
                   card.items("history", []), card.mapping("metrics", {}), card.mapping("versions", {}), post.obj)


@dataclass
class ClassifierSpec:
    """A tightener's patch classifier: network name, patch side and context (voxels)."""

    name: str
    patch: int
    context: int = 0


@dataclass
class PatchSpec:
    """A tightener's patch grid: ``size`` (p), training and use-time strides, the extent rule and the
    object-probability threshold."""

    size: int
    train_stride: int
    stride: int
    extent: str = "cells"
    rule: str = "object > 50 % of the patch"
    threshold: float = 0.5


@dataclass
class TightenerInput:
    """Slice ``axis``, mean training ``spacing`` (mm, ITK order), the training images' intensity
    percentiles (``p1``, ``p50``, ``p99``; the modality check) and the normalisation."""

    axis: int
    spacing: list[float]
    intensity: dict = field(default_factory=dict)
    normalization: IntensityMapping = field(default_factory=IntensityMapping)


@dataclass
class TightenerCard:
    """The card of a box tightener folder (module docstring)."""

    network: ClassifierSpec
    patch: PatchSpec
    input: TightenerInput
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)

    FORMAT = TIGHTENER_FORMAT

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input"]["normalization"] = self.input.normalization.to_dict()
        return {"format": TIGHTENER_FORMAT, "version": CARD_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = "tightener card") -> "TightenerCard":
        card = Fields(d, where, ModelError)
        net, patch, inp = card.sub("network"), card.sub("patch"), card.sub("input")
        size = patch.whole("size", low=2)
        return cls(ClassifierSpec(net.text("name"), net.whole("patch", size, low=2), net.whole("context", 0, low=0)),
                   PatchSpec(size, patch.whole("train_stride", size // 2, low=1), patch.whole("stride", size // 4, low=1),
                             patch.text("extent", "cells"), patch.text("rule", PatchSpec.rule),
                             patch.number("threshold", 0.5)),
                   TightenerInput(inp.whole("axis", low=0, high=2), inp.numbers("spacing", 3, positive=True),
                                  inp.mapping("intensity", {}),
                                  IntensityMapping.read(inp.sub("normalization", {}), f"{where}.input")),
                   card.mapping("training", {}), card.mapping("metrics", {}), card.items("history", []),
                   card.mapping("versions", {}))


def read_card(folder: str | os.PathLike, kind: type = ModelCard) -> Any:
    """Read and check the card of a model folder: a :class:`ModelCard` (default) or a
    :class:`TightenerCard`.

    Raises:
        ModelError: missing folder or card, invalid JSON, another format, a newer version, a missing
            or invalid field (named).
    """
    folder = Path(folder)
    if folder.is_file():
        raise ModelError(f"{folder}: is a file; give the model folder that holds it ({folder.parent})"
                         if folder.name == CARD else f"{folder}: is a file, not a model folder")
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    path = folder / CARD
    fields = read_versioned(path, kind.FORMAT, CARD_VERSION, f"{kind.FORMAT} card", ModelError)
    return kind.from_dict(fields.obj, str(path))

"""Model folders and their cards, typed and read without torch (Slicer's own process shows them).

A trained model is a folder: ``model.pt`` (the network's ``state_dict``, read with
``torch.load(weights_only=True)`` by :mod:`WeakSegLib.engine.model`) and ``model.json``, its card.
Two card formats share the layout:

- ``weakseg-model`` (:class:`ModelCard`), a segmentation network::

    {"format": "weakseg-model", "version": 1,
     "network": {"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                 "channels": [16, 32, 64, 128, 256]},
     "input": {"mode": "2.5d", "axis": 0, "context": 3, "spacing": [sx, sy, sz],
               "normalization": {"method": "percentile", "percentiles": [0.5, 99.5], "window": [-1000, 1000]},
               "patch_size": [64, 64]},
     "labels": [{"value": 1, "name": "vertebra", "color": [0.9, 0.35, 0.25]}],
     "recipe": "tightness+size+emptiness",
     "training": {... the TrainConfig, "cases": [...] ...},
     "history": [{"epoch": 1, "loss": ..., "dice": ...}, ...], "metrics": {"loss": ..., "dice": ...},
     "versions": {"weakseg": "...", "torch": "...", "monai": "..."}}

- ``weakseg-tightener`` (:class:`TightenerCard`), a box tightener's patch classifier (network, patch
  grid, threshold, the intensity profile of its training images; :mod:`WeakSegLib.tightener`).

Spacing is ITK order (x, y, z) in mm; ``axis`` is the slice axis in array order (z, y, x).
Reading checks every field a user of the card relies on and names the first one missing or wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from WeakSegLib.config import DEFAULT_CHANNELS
from WeakSegLib.errors import ModelError
from WeakSegLib.io.volume import Normalization

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


class _Fields:
    """Typed access to one section of a card, naming the section and field in every error."""

    def __init__(self, section: Any, where: str) -> None:
        if not isinstance(section, dict):
            raise ModelError(f"{where} is not an object")
        self.section, self.where = section, where

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.section or self.section[key] is None:
            if default is ...:
                raise ModelError(f"{self.where} has no {key!r}")
            return default
        value = self.section[key]
        try:
            if kind in (list, tuple):
                if not isinstance(value, (list, tuple)):
                    raise TypeError(f"not a list: {value!r}")
                return list(value)
            if kind is dict:
                if not isinstance(value, dict):
                    raise TypeError(f"not an object: {value!r}")
                return value
            if kind is int and float(value) != int(value):
                raise ValueError(f"not a whole number: {value!r}")
            return kind(value)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{self.where}.{key} is invalid ({exc})") from None

    def sub(self, key: str, default: Any = ...) -> "_Fields":
        return _Fields(self.get(key, dict, default), f"{self.where}.{key}")


def _normalization(f: _Fields) -> Normalization:
    default = Normalization()
    return Normalization(f.get("method", str, default.method), tuple(f.get("percentiles", list, default.percentiles)),
                         tuple(f.get("window", list, default.window)))


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
    slices per input, training ``spacing`` (mm, ITK order), ``normalization``, the training
    ``patch_size`` (3D sliding-window inference)."""

    mode: str
    axis: int
    context: int = 1
    spacing: list[float] = field(default_factory=list)
    normalization: Normalization = field(default_factory=Normalization)
    patch_size: list[int] | None = None


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

    FORMAT = MODEL_FORMAT

    def label_table(self) -> dict[int, dict]:
        """``{value: {"name", "color"}}`` in class order (what segmentation nodes are made from)."""
        return {entry.value: {"name": entry.name, "color": list(entry.color)} for entry in self.labels}

    def to_dict(self) -> dict:
        return {"format": MODEL_FORMAT, "version": CARD_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "model card") -> "ModelCard":
        card = _Fields(d, where)
        net, inp = card.sub("network"), card.sub("input")
        labels = []
        for i, entry in enumerate(card.get("labels", list)):
            f = _Fields(entry, f"{where}.labels[{i}]")
            value = f.get("value", int)
            labels.append(LabelSpec(value, f.get("name", str, f"label {value}"),
                                    f.get("color", list, default_color(i))))
        if not labels:
            raise ModelError(f"{where} lists no label")
        network = NetworkSpec(net.get("name", str), net.get("spatial_dims", int), net.get("in_channels", int),
                              net.get("out_channels", int), tuple(net.get("channels", list, list(DEFAULT_CHANNELS))))
        spec = InputSpec(inp.get("mode", str, "3d" if network.spatial_dims == 3 else "2d"), inp.get("axis", int),
                         inp.get("context", int, 1), inp.get("spacing", list, []),
                         _normalization(inp.sub("normalization", {})), inp.get("patch_size", list, None))
        if network.out_channels != len(labels) + 1:
            raise ModelError(f"{where}: {len(labels)} labels but {network.out_channels} network outputs "
                             "(one per label and the background)")
        return cls(network, spec, labels, card.get("recipe", str, "?"), card.get("training", dict, {}),
                   card.get("history", list, []), card.get("metrics", dict, {}), card.get("versions", dict, {}))


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
    normalization: Normalization = field(default_factory=Normalization)


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
        return {"format": TIGHTENER_FORMAT, "version": CARD_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "tightener card") -> "TightenerCard":
        card = _Fields(d, where)
        net, patch, inp = card.sub("network"), card.sub("patch"), card.sub("input")
        size = patch.get("size", int)
        return cls(ClassifierSpec(net.get("name", str), net.get("patch", int, size), net.get("context", int, 0)),
                   PatchSpec(size, patch.get("train_stride", int, size // 2), patch.get("stride", int, size // 4),
                             patch.get("extent", str, "cells"), patch.get("rule", str, PatchSpec.rule),
                             patch.get("threshold", float, 0.5)),
                   TightenerInput(inp.get("axis", int), inp.get("spacing", list), inp.get("intensity", dict, {}),
                                  _normalization(inp.sub("normalization", {}))),
                   card.get("training", dict, {}), card.get("metrics", dict, {}), card.get("history", list, []),
                   card.get("versions", dict, {}))


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file; a missing or unparsable one is a :class:`ModelError` naming it."""
    if not path.exists():
        raise ModelError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: {what} is corrupt (not valid JSON: {exc})") from exc


def read_card(folder: str | os.PathLike, kind: type = ModelCard) -> Any:
    """Read and check the card of a model folder: a :class:`ModelCard` (default) or a
    :class:`TightenerCard`.

    Raises:
        ModelError: missing folder or card, invalid JSON, another format, a newer version, a missing
            or invalid field (named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    path = folder / CARD
    d = read_json(path, "model card")
    found = d.get("format") if isinstance(d, dict) else None
    if found != kind.FORMAT:
        raise ModelError(f"{path}: not a {kind.FORMAT} card (its \"format\" is {found!r})")
    version = d.get("version", 0)
    if not isinstance(version, int) or version > CARD_VERSION:
        raise ModelError(f"{path}: model card version {version!r} is newer than this WeakSeg")
    return kind.from_dict(d, str(path))

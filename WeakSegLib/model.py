"""A trained model is a folder: ``model.pt`` (``state_dict``) + ``model.json`` (the card).

Card (``weakseg-model``, version 1)::

    {
      "format": "weakseg-model", "version": 1,
      "network": {"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                  "channels": [16, 32, 64, 128, 256]},
      "input": {"mode": "2.5d", "axis": 0, "context": 3, "spacing": [sx, sy, sz],
                "normalization": {"method": "percentile", "percentiles": [0.5, 99.5],
                                  "window": [-1000, 1000]}},
      "labels": [{"value": 1, "name": "vertebra", "color": [0.9, 0.3, 0.2]}],
      "recipe": "tightness+size+emptiness",
      "training": {... the TrainConfig ...},
      "metrics": {"final_dice": 0.87, ...},
      "history": [{"epoch": 1, "loss": ..., "dice": ...}, ...],
      "versions": {"weakseg": "...", "torch": "...", "monai": "..."}
    }

Inference needs nothing but the folder. Weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from WeakSegLib import __version__
from WeakSegLib.atomic import atomic_torch_save, atomic_write_json
from WeakSegLib.card import (CARD, FORMATS, MODEL_FORMAT, MODEL_FORMAT_VERSION, PALETTE, WEIGHTS,  # noqa: F401
                              default_color, read_card, read_json)
from WeakSegLib.errors import ModelError
from WeakSegLib.networks import build_network

def versions() -> dict[str, str]:
    import monai

    return {"weakseg": __version__, "torch": torch.__version__, "monai": monai.__version__}


def load_state(path: Path, what: str = "checkpoint") -> dict:
    """``torch.load(path, weights_only=True)``; missing or corrupt files are a :class:`ModelError`."""
    if not path.exists():
        raise ModelError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelError(f"{path}: {what} is corrupt or not a WeakSeg file ({type(exc).__name__}: {exc})") from exc


def save_model(folder: str | os.PathLike, network: torch.nn.Module, card: dict, fmt: str = MODEL_FORMAT) -> Path:
    """Write weights then card (format ``fmt``), each atomically; the card is written last, so a
    folder with a card always has matching weights."""
    folder = Path(folder)
    card = {"format": fmt, "version": MODEL_FORMAT_VERSION, **card, "versions": versions()}
    atomic_torch_save(folder / WEIGHTS, {k: v.detach().cpu() for k, v in network.state_dict().items()})
    atomic_write_json(folder / CARD, card)
    return folder


def build_from_card(card: dict) -> torch.nn.Module:
    net = card["network"]
    try:
        return build_network(net["name"], int(net["spatial_dims"]), int(net["in_channels"]),
                             int(net["out_channels"]), tuple(net.get("channels", (16, 32, 64, 128, 256))))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"model card network section {net} is invalid ({exc})") from exc


def load_weights(folder: str | os.PathLike, network: torch.nn.Module, card: dict) -> torch.nn.Module:
    """Load ``folder/model.pt`` into ``network`` (built from ``card``); returns it in eval mode.

    Raises:
        ModelError: missing or corrupt weights, or weights that do not fit the network (e.g. another
            channel count).
    """
    folder = Path(folder)
    state = load_state(folder / WEIGHTS, "model weights")
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(f"{folder / WEIGHTS}: weights do not fit the network in the card "
                         f"({card['network']}): {' '.join(first[:3])}") from exc
    return network.eval()


def load_model(folder: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Network (eval mode, CPU) and card of a segmentation model folder.

    Raises:
        ModelError: missing folder, card or weights; corrupt files; weights that do not fit the
            network the card describes.
    """
    card = read_card(folder)
    return load_weights(folder, build_from_card(card), card), card

"""Weights of a model folder (the card's layout: :mod:`WeakSegLib.io.card`).

Inference needs nothing but the folder. Weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from WeakSegLib import __version__
from WeakSegLib.errors import ModelError, WeakSegError
from WeakSegLib.io.atomic import atomic_torch_save, atomic_write_json
from WeakSegLib.io.card import CARD, WEIGHTS, ModelCard, read_card
from WeakSegLib.nets.segmentation import build_network


def versions() -> dict[str, str]:
    import monai

    return {"weakseg": __version__, "torch": torch.__version__, "monai": monai.__version__}


def load_state(path: Path, what: str = "checkpoint") -> dict:
    """``torch.load(path, weights_only=True)``; missing or corrupt files are a :class:`ModelError`.

    A file that holds more than tensors and plain values is refused (loading it could run code), and
    the message never suggests loading it otherwise.
    """
    if not path.exists():
        raise ModelError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{path}: {what} is corrupt or not a WeakSeg file: it holds more than weights "
                         "(not loaded, as that could run code)") from exc
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: {what} is corrupt or not a WeakSeg file ({first})") from exc


def save_model(folder: str | os.PathLike, network: torch.nn.Module, card: Any) -> Path:
    """Write weights then the card (a :class:`ModelCard` or a tightener card, its ``versions`` set
    here), each atomically; the card is written last, so a folder with a card always has matching
    weights."""
    folder = Path(folder)
    card.versions = versions()
    atomic_torch_save(folder / WEIGHTS, {k: v.detach().cpu() for k, v in network.state_dict().items()})
    atomic_write_json(folder / CARD, card.to_dict())
    return folder


def build_from_card(card: ModelCard) -> torch.nn.Module:
    """The (untrained) network a card describes."""
    net = card.network
    try:
        return build_network(net.name, net.spatial_dims, net.in_channels, net.out_channels, tuple(net.channels))
    except ValueError as exc:
        raise ModelError(f"the card's network {net.name!r} ({net.spatial_dims}D, channels {list(net.channels)}) "
                         f"cannot be built: {exc}") from exc


def load_weights(folder: str | os.PathLike, network: torch.nn.Module, card: Any) -> torch.nn.Module:
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
                         f"({card.network}): {' '.join(first[:3])}") from exc
    return network.eval()


def load_model(folder: str | os.PathLike, postprocess: bool = True) -> tuple[torch.nn.Module, ModelCard]:
    """Network (eval mode, CPU) and card of a segmentation model folder; with ``postprocess`` False the
    card's post-processing is dropped (its predictions are the network's argmax).

    Raises:
        ModelError: missing folder, card or weights; corrupt files; weights that do not fit the
            network the card describes.
    """
    card = read_card(folder)
    where = Path(folder) / CARD
    try:
        network = build_from_card(card)
    except WeakSegError as exc:  # the card is at fault: say so, in one line
        raise ModelError(f"{where}: {exc}") from exc
    if not postprocess:
        card.postprocess = {}
    return load_weights(folder, network, card), card

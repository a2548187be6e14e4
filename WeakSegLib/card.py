"""The model card of a model folder, read without torch (so Slicer's own process can show it).

See :mod:`WeakSegLib.model` for the card's fields; the weights are read there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from WeakSegLib.errors import ModelError

MODEL_FORMAT = "weakseg-model"
MODEL_FORMAT_VERSION = 1
#: card formats (a segmentation model, a box tightener: :mod:`WeakSegLib.tightening`) → required sections
FORMATS = {MODEL_FORMAT: ("network", "input", "labels"), "weakseg-tightener": ("network", "patch", "input")}
WEIGHTS = "model.pt"
CARD = "model.json"

#: default segment colours (RGB in [0, 1]) for labels 1, 2, …
PALETTE = ((0.90, 0.35, 0.25), (0.30, 0.65, 0.90), (0.40, 0.80, 0.35), (0.95, 0.80, 0.25),
           (0.70, 0.45, 0.85), (0.35, 0.85, 0.80), (0.95, 0.55, 0.75), (0.60, 0.60, 0.60))


def default_color(index: int) -> list[float]:
    """Colour of the ``index``-th foreground class (0-based)."""
    return list(PALETTE[index % len(PALETTE)])


def read_json(path: Path, what: str) -> dict:
    """Read a JSON file; a missing or unparsable one is a :class:`ModelError` naming it."""
    if not path.exists():
        raise ModelError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: {what} is corrupt (not valid JSON: {exc})") from exc


def read_card(folder: str | os.PathLike, fmt: str = MODEL_FORMAT) -> dict:
    """Read and check a card of format ``fmt`` (a segmentation model by default)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    card = read_json(folder / CARD, "model card")
    if not isinstance(card, dict) or card.get("format") != fmt:
        found = card.get("format") if isinstance(card, dict) else None
        raise ModelError(f"{folder / CARD}: not a {fmt} card (its \"format\" is {found!r})")
    if int(card.get("version", 0)) > MODEL_FORMAT_VERSION:
        raise ModelError(f"{folder / CARD}: model card version {card['version']} is newer than this WeakSeg")
    for key in FORMATS[fmt]:
        if key not in card:
            raise ModelError(f"{folder / CARD}: model card has no {key!r} section")
    return card

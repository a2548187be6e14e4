"""WeakSegLib: Slicer-free core of WeakSeg.

Trains medical image segmentation networks from bounding boxes (tightness prior, emptiness and
box-size constraints through log-barrier extensions, and the other recipes of
:mod:`WeakSegLib.registry`), predicts whole volumes and evaluates them. Nothing here imports
Slicer or Qt except :mod:`WeakSegLib.mrml`. The package layout is described in docs/architecture.md.

The public API is importable from here; ``import WeakSegLib`` itself imports no torch (each name is
imported on first use)::

    from WeakSegLib import TrainCase, TrainConfig, train, predict_file
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name → module that defines it
_API = {
    "TrainCase": "WeakSegLib.config", "TrainConfig": "WeakSegLib.config", "TightenerCase": "WeakSegLib.config",
    "TightenerConfig": "WeakSegLib.config", "TightenSettings": "WeakSegLib.config",
    "CRFSettings": "WeakSegLib.registry.proposals",
    "InputError": "WeakSegLib.errors", "ModelError": "WeakSegLib.errors", "WeakSegError": "WeakSegLib.errors",
    "CancelledError": "WeakSegLib.errors",
    "Box": "WeakSegLib.io.boxes", "BoxSet": "WeakSegLib.io.boxes", "boxes_from_mask": "WeakSegLib.io.boxes",
    "load_boxes": "WeakSegLib.io.boxes", "save_boxes": "WeakSegLib.io.boxes",
    "Volume": "WeakSegLib.io.volume", "read_volume": "WeakSegLib.io.volume",
    "read_label_volume": "WeakSegLib.io.volume", "write_volume": "WeakSegLib.io.volume",
    "ModelCard": "WeakSegLib.io.card", "read_card": "WeakSegLib.io.card",
    "recipe_names": "WeakSegLib.registry", "recipe_spec": "WeakSegLib.registry",
    "train": "WeakSegLib.engine.train.training",
    "predict_file": "WeakSegLib.engine.predict.inference", "predict_volume": "WeakSegLib.engine.predict.inference",
    "load_model": "WeakSegLib.engine.predict.model", "evaluate": "WeakSegLib.engine.predict.metrics",
    "train_tightener": "WeakSegLib.tightener.training", "tighten": "WeakSegLib.tightener.tighten",
    "tighten_file": "WeakSegLib.tightener.tighten",
    "start_job": "WeakSegLib.app.jobs",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'WeakSegLib' has no attribute {name!r}")

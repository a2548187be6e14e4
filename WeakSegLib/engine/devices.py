"""Device choice: ``auto`` takes CUDA when present, else the CPU (:data:`WeakSegLib.config.DEVICES`)."""

from __future__ import annotations

import torch

from WeakSegLib.config import DEVICES
from WeakSegLib.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(name)
    raise InputError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")

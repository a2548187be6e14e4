"""Device and arithmetic choice: ``auto`` takes a CUDA GPU when present, else an Apple GPU (MPS), else the
CPU (:data:`WeakSegLib.config.DEVICES`); mixed precision by default only on a CUDA GPU."""

from __future__ import annotations

import torch

from WeakSegLib.config import DEFAULT_DEVICE, DEVICES
from WeakSegLib.errors import InputError
from WeakSegLib.options import AUTO


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    """``"auto"`` → CUDA, else MPS, else CPU; a GPU asked for but absent is an error."""
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not _mps():
            raise InputError("device 'mps' requested but no Apple GPU is available; use --device cpu or auto")
        return torch.device("mps")
    raise InputError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of a training step, None for 32-bit: ``"auto"`` is bfloat16 on a CUDA GPU that
    supports it and 32-bit elsewhere (on the CPU mixed precision is slower, and on Apple GPUs
    not reliably faster); ``"bf16"``/``"16"`` ask for bfloat16/float16 on any device (float16 steps go
    through a gradient scaler)."""
    if precision == "32":
        return None
    if precision == AUTO:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16

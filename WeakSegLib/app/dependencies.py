"""Python packages the worker needs beyond what Slicer ships, found without importing them.

The lists are the package's own requirement files (``requirements/core.txt`` and one file per extra,
which ``pyproject.toml`` reads too), so Slicer installs exactly what ``pip install weakseg`` would.
Inside Slicer, torch comes from the PyTorch extension (``PyTorchUtils``), and numpy and SimpleITK
ship with Slicer; the rest is installed on the first Apply (the modules' ``ensureDependencies``),
never at import time.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from WeakSegLib.registry import extras_of

REQUIREMENTS_DIR = Path(__file__).resolve().parent / "requirements"
#: distributions that Slicer provides itself (torch through the PyTorch extension)
PROVIDED_BY_SLICER = ("torch", "numpy", "SimpleITK")
#: distributions whose import name differs from their pip name
IMPORT_NAMES = {"scikit-image": "skimage", "pydensecrf2": "pydensecrf"}


def read_requirements(name: str) -> list[str]:
    """The requirement lines of ``requirements/<name>.txt`` (comments and blank lines left out)."""
    lines = (REQUIREMENTS_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _distribution(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)


def requirements_for(recipes: tuple[str, ...] = ()) -> dict[str, str]:
    """Import name → pip requirement of what the worker needs in Slicer for ``recipes`` (the core list
    and the recipes' extras, without what Slicer provides)."""
    lines = read_requirements("core") + [r for extra in sorted(extras_of(recipes)) for r in read_requirements(extra)]
    wanted = {}
    for requirement in lines:
        dist = _distribution(requirement)
        if dist not in PROVIDED_BY_SLICER:
            wanted[IMPORT_NAMES.get(dist, dist)] = requirement
    return wanted


def torch_missing() -> bool:
    """Whether ``import torch`` would fail (checked without importing it)."""
    return importlib.util.find_spec("torch") is None


def missing_requirements(requirements: dict[str, str]) -> list[str]:
    """The pip requirements of ``requirements`` (import name → requirement) whose module is not importable."""
    return [requirement for module, requirement in requirements.items() if importlib.util.find_spec(module) is None]

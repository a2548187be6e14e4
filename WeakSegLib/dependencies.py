"""Python packages the worker needs beyond what Slicer ships (numpy, vtk, SimpleITK), without importing them.

Inside Slicer, torch comes from the PyTorch extension (``PyTorchUtils``) and the rest is installed on
the first Apply (see the modules' ``ensureDependencies``); never at import time.
"""

from __future__ import annotations

import importlib.util

#: import name → pip requirement (versions as in requirements.txt)
REQUIREMENTS = {"monai": "monai==1.6.1", "scipy": "scipy>=1.10", "skimage": "scikit-image>=0.21"}
#: what single recipes need on top (compiled from source where no wheel exists, so asked for only when used)
RECIPE_REQUIREMENTS = {"deepcut": {"pydensecrf": "pydensecrf2==1.1"}}


def requirements_for(recipe: str | None = None) -> dict[str, str]:
    """:data:`REQUIREMENTS` plus what ``recipe`` needs (import name → pip requirement)."""
    return {**REQUIREMENTS, **RECIPE_REQUIREMENTS.get(recipe or "", {})}


def torch_missing() -> bool:
    """Whether ``import torch`` would fail (checked without importing it)."""
    return importlib.util.find_spec("torch") is None


def missing_requirements(requirements: dict[str, str] | None = None) -> list[str]:
    """The pip requirements of ``requirements`` (default :data:`REQUIREMENTS`) whose module is not importable."""
    wanted = REQUIREMENTS if requirements is None else requirements
    return [requirement for module, requirement in wanted.items() if importlib.util.find_spec(module) is None]

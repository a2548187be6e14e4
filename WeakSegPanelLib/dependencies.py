"""The worker's Python packages inside Slicer, and the interpreter the worker runs in."""

from __future__ import annotations

import shutil
import unittest

import slicer


def ensureDependencies(confirm: bool = True, recipe: str | None = None) -> None:
    """Make sure the worker's packages are installed in Slicer's Python; ask first when ``confirm``.

    torch comes from the PyTorch extension's ``PyTorchUtils``; the rest (MONAI, SciPy, scikit-image)
    through ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.12; asking first when ``confirm``) or, on
    Slicer 5.10, ``slicer.util.pip_install`` after a confirmation. Raises RuntimeError naming what is
    still missing when the user declines or it fails.
    """
    from WeakSegLib.app import dependencies

    if dependencies.torch_missing():
        try:
            import PyTorchUtils
        except ModuleNotFoundError as exc:
            raise RuntimeError("WeakSeg needs the PyTorch extension: install 'PyTorch' from the Extensions Manager "
                               "and restart Slicer.") from exc
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=confirm) is None:
            raise RuntimeError("PyTorch is not installed; WeakSeg cannot train or predict without it.")
    wanted = dependencies.requirements_for((recipe,) if recipe else ())
    missing = dependencies.missing_requirements(wanted)
    if missing:
        try:  # Slicer ≥ 5.12; slicer/__init__ does not import this submodule, so a fresh session must
            import slicer.packaging as slicerPackaging
        except ImportError:
            slicerPackaging = None
        if slicerPackaging is not None:
            from packaging.requirements import Requirement

            slicerPackaging.pip_ensure([Requirement(r) for r in missing], prompt_install=confirm, requester="WeakSeg",
                                       skip_in_testing=False)
        else:
            question = "WeakSeg needs these Python packages:\n\n" + "\n".join(missing) + "\n\nInstall them now?"
            if confirm and not slicer.util.confirmOkCancelDisplay(question, "WeakSeg: install Python packages"):
                raise RuntimeError("WeakSeg cannot run without: " + ", ".join(missing))
            slicer.util.pip_install(missing)
    still = dependencies.missing_requirements(wanted)
    if still:
        raise RuntimeError("These Python packages could not be installed: " + ", ".join(still))


def requireDependencies(recipe: str | None = None) -> None:
    """For the self-tests, which run offline (Slicer's factory builds without the network): raise
    :class:`unittest.SkipTest`, naming what is missing, instead of installing anything."""
    from WeakSegLib.app import dependencies

    missing = (["torch (the PyTorch extension)"] if dependencies.torch_missing() else []) + \
        dependencies.missing_requirements(dependencies.requirements_for((recipe,) if recipe else ()))
    if missing:
        raise unittest.SkipTest("WeakSeg's self-test needs these packages and installs nothing from the network: "
                                + ", ".join(missing) + " (the panels install them on the first Apply)")


def workerPython() -> str | None:
    """Interpreter for the worker: ``PythonSlicer`` inside Slicer, else this Python (None)."""
    return shutil.which("PythonSlicer")

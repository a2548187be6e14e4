"""Smoke test of both panels inside a real 3D Slicer (5.10 or newer), for a maintainer before a release.

    Slicer --no-main-window --python-script Testing/slicer_smoke.py [--keep]

Loads both modules and enters them, opens a 3-case dataset (synthetic balls written to a temporary
folder), adds a box to the unboxed case, trains 2 epochs from the panel, starts a long run and cancels it
from the panel, predicts with the Infer panel, and exits with code 0 only if every step worked (1
otherwise, after printing what failed). WeakSeg's packages must be installed (the first step installs
them if not, asking nothing: it needs the network). ``--keep`` leaves the temporary folder. The pytest
suite checks the same code paths against Slicer's rules without Slicer; this runs them in Slicer.
"""

import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import slicer


def pump(until, timeout: float, what: str) -> None:
    """Let Slicer's event loop run (the panels' job timers tick) until ``until()`` or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout} s")
        slicer.app.processEvents()
        time.sleep(0.05)


def widget(module: str):
    """Enter the module (as clicking it in the module list does) and return its widget."""
    slicer.util.selectModule(module)
    panel = slicer.util.getModuleWidget(module)
    assert panel.parameters is not None, f"{module}: no parameter node bound after entering"
    return panel


def make_cases(folder: Path) -> None:
    """Three synthetic balls as NRRD images, the first two with their slice boxes (a dataset folder)."""
    import numpy as np

    from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
    from WeakSegLib.io.volume import Volume, write_volume

    z, y, x = np.mgrid[:16, :48, :48]
    for index, name in enumerate(("ball1", "ball2", "ball3")):
        ball = ((z - 8) / 6) ** 2 + ((y - 22 - index) / 11) ** 2 + ((x - 24) / (10 + index)) ** 2 < 1
        volume = Volume((200.0 * ball).astype(np.float32), (1.0, 1.0, 2.0))
        write_volume(volume, folder / f"{name}.nrrd")
        if index < 2:
            save_boxes(BoxSet(boxes_from_mask(ball.astype(np.uint8), "slice", 0), volume.shape, {1: "ball"},
                              volume.geometry()), folder / f"{name}.boxes.json")


def main() -> int:
    from WeakSegPanelLib.dependencies import ensureDependencies
    from WeakSegPanelLib.selftest import TINY_TRAINING

    steps: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="weakseg-smoke-"))
    try:
        ensureDependencies(confirm=False)
        train, infer = widget("WeakSegTrain"), widget("WeakSegInfer")
        steps.append("both modules entered")

        slicer.util.selectModule("WeakSegTrain")
        (work / "cases").mkdir()
        make_cases(work / "cases")
        rows = train.logic.openDataset(work / "cases")
        train.onLoadCase(train.logic.nextCase)
        assert len(rows) == 3 and train.logic.currentCase() == 0, rows
        train.onLoadCase(lambda: train.logic.loadCase(2))
        volume = train.logic.session.volume
        train.logic.addBox(volume, kind="3d")
        assert (work / "cases" / "ball3.boxes.json").is_file(), "the new box was not saved"
        steps.append("dataset opened, a box added and saved")

        parameters = train.parameters
        parameters.modelFolder, parameters.epochs, parameters.device = str(work / "model"), 2, "cpu"
        train.onApply()
        pump(lambda: not train.watcher.running, 600, "training 2 epochs")
        job = train.watcher.job
        assert job.error is None and (work / "model" / "model.json").is_file(), job.error
        steps.append("trained 2 epochs from the panel")

        parameters.modelFolder, parameters.epochs = str(work / "long"), 500
        train.onApply()
        job = train.watcher.job
        pump(lambda: any(e.get("event") == "epoch" for e in job.events), 600, "the long run's first epoch")
        train.onApply()  # Cancel
        assert train.watcher.cancelling, "Cancel did not return at once"
        pump(lambda: job.done, 120, "cancelling")
        assert job.cancelled and job.handle.finished(), job.error
        steps.append("a run cancelled from the panel, its worker gone")

        slicer.util.selectModule("WeakSegInfer")
        infer.parameters.modelFolder, infer.parameters.inputVolume = str(work / "model"), volume
        infer.onApply()
        pump(lambda: not infer.watcher.running, 300, "predicting")
        result = infer.watcher.job.result
        assert result is not None and result.GetSegmentation().GetNumberOfSegments() == 1, infer.watcher.job.error
        steps.append("predicted with the Infer panel")
        assert TINY_TRAINING  # the self-tests' settings import in Slicer too
    except Exception:  # noqa: BLE001 - a smoke test reports every failure and exits 1
        traceback.print_exc()
        print("WeakSeg smoke test FAILED after: " + "; ".join(steps or ["nothing"]))
        return 1
    finally:
        if "--keep" not in sys.argv:
            shutil.rmtree(work, ignore_errors=True)
    print("WeakSeg smoke test passed: " + "; ".join(steps))
    return 0


slicer.util.exit(main())

"""The modules' self-tests' fixture: a tiny model trained in the test, offline.

Slicer's factory runs the self-tests (ctest) without the network, so nothing here installs a package:
without WeakSeg's packages the self-test is skipped, saying what is missing
(:func:`~WeakSegPanelLib.dependencies.requireDependencies`).
"""

from __future__ import annotations

import os
import tempfile

from WeakSegPanelLib.dependencies import requireDependencies, workerPython

#: a network and a run small enough for a self-test: two UNet levels, one epoch of two batches, the CPU
TINY_TRAINING = {"epochs": 1, "epoch_batches": 2, "batch_size": 4, "channels": (4, 8), "device": "cpu"}


def ballVolume():
    """A synthetic ball (16 × 48 × 48 voxels, 1 × 1 × 2 mm) as a volume node, and its mask (z, y, x)."""
    import numpy as np

    from WeakSegLib import mrml
    from WeakSegLib.io.volume import Volume

    z, y, x = np.mgrid[:16, :48, :48]
    ball = ((z - 8) / 6) ** 2 + ((y - 24) / 12) ** 2 + ((x - 24) / 12) ** 2 < 1
    return mrml.add_volume_node(Volume((200.0 * ball).astype(np.float32), (1.0, 1.0, 2.0)), "ball"), ball


def trainSelfTestModel(kind: str = "slice"):
    """A ball volume with its boxes (``kind``: "slice" or "3d") as box ROIs of the volume, and a tiny model
    trained on them in a temporary folder by the background worker. Returns ``(volume node, model folder)``."""
    import numpy as np

    from WeakSegLib import mrml
    from WeakSegLib.io.boxes import boxes_from_mask
    from WeakSegLib.mrml import tasks

    requireDependencies()
    volumeNode, ball = ballVolume()
    mrml.roi_nodes_from_boxes(boxes_from_mask(ball.astype(np.uint8), kind, 0), volumeNode, name="ball box",
                              scene=volumeNode.GetScene(), attributes={mrml.VOLUME_ATTRIBUTE: volumeNode.GetID()})
    boxset = mrml.boxes_from_roi_nodes(mrml.box_nodes(volumeNode), volumeNode).boxset
    folder = os.path.join(tempfile.mkdtemp(), "model")
    tasks.start_training(volumeNode, boxset, folder, dict(TINY_TRAINING), python=workerPython()).wait()
    return volumeNode, folder

"""One wiring of the ``slicer-core`` wheel for all MRML tests: a real scene as Slicer's startup sets it up.

Also makes the module files importable (see :mod:`slicer_app_standins`).

slicer-core gives the MRML and module-logic classes without the Qt application that normally wires
them, so this fixture does what Slicer's startup does for the parts WeakSeg uses: segmentation
converter rules, an application logic with a colour logic, and the Volumes, Segmentations and Markups
module logics, all kept referenced for the test's lifetime.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import slicer  # the slicer-core wheel (requirements-test.txt)
import slicer_app_standins

from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.sample_data import materialize
from WeakSegLib.io.volume import axial_axis, read_label_volume

slicer_app_standins.install()


def _register_converter_rules() -> None:
    """Register the labelmap ↔ closed-surface rules once per process, as Slicer's Segmentations module does."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(),
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()):
        if rule.GetName() not in present:
            factory.RegisterConverterRule(rule)


@pytest.fixture
def wired():
    """A fresh ``vtkMRMLScene`` set as ``slicer.mrmlScene``, with Slicer's logics wired to it."""
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    application.SetColorLogic(colors)
    _register_converter_rules()
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    markups = slicer.vtkSlicerMarkupsLogic()  # registers the markups storage nodes with the scene
    markups.SetMRMLScene(scene)
    for name, logic in (("Volumes", volumes), ("Segmentations", segmentations), ("Colors", colors),
                        ("Markups", markups)):
        application.SetModuleLogic(name, logic)
        logic.SetMRMLApplicationLogic(application)
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    yield SimpleNamespace(scene=scene, application=application, volumes=volumes, segmentations=segmentations,
                          markups=markups)
    slicer.mrmlScene = previous
    scene.Clear(True)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """A folder of 3 real cases named as ``weakseg dataset init`` expects: ``bodies`` (vertebral bodies
    CT) and ``spine`` (spine CT) with tight axial slice boxes, ``brain`` (MNI T1) without; each with its mask."""
    folder = tmp_path_factory.mktemp("cohort")
    source = tmp_path_factory.mktemp("samples")
    for name, sample, boxed in (("bodies", "vertebral-body-ct", True), ("spine", "spine-ct", True),
                                ("brain", "brain-mri", False)):
        files = materialize(sample, source / sample)
        shutil.copy(files["image"], folder / f"{name}.nii.gz")
        shutil.copy(files["mask"], folder / f"{name}_mask.nii.gz")
        if boxed:
            mask = read_label_volume(files["mask"])
            boxes = boxes_from_mask((mask.array > 0).astype(np.uint8), "slice", axial_axis(mask.direction))
            save_boxes(BoxSet(boxes, mask.shape, {1: "bone"}, mask.geometry()), folder / f"{name}.boxes.json")
    return folder

"""One wiring of the ``slicer-core`` wheel for all MRML tests: a real scene as Slicer's startup sets it up.

Also makes the module files importable (see :mod:`slicer_app_standins`).

slicer-core gives the MRML and module-logic classes without the Qt application that normally wires
them, so this fixture does what Slicer's startup does for the parts WeakSeg uses: segmentation
converter rules, an application logic with a colour logic, and the Volumes, Segmentations and Markups
module logics, all kept referenced for the test's lifetime.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import slicer  # the slicer-core wheel (requirements-test.txt)
import slicer_app_standins

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

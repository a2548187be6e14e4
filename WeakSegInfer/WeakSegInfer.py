"""WeakSegInfer: load a trained WeakSeg model folder and predict a segmentation in the background.

Behaviour lives in :class:`WeakSegInferLogic` (scriptable) and ``WeakSegLib``; the widget binds the
panel to it. torch and MONAI are imported only by the worker process.
"""

from __future__ import annotations

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from WeakSegLib.config import DEVICES
from WeakSegLib.errors import WeakSegError
from WeakSegLib.mrml import tasks
from WeakSegTrain import ensureDependencies, workerPython


class WeakSegInfer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "WeakSeg Infer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["WeakSegTrain", "Segmentations"]
        self.parent.contributors = ["WeakSeg developers"]
        self.parent.helpText = (
            "Segment a volume with a model trained by WeakSeg Train (or the weakseg command line). The model "
            "folder's card tells the labels, their colours and the intensity normalisation.")
        self.parent.acknowledgementText = "See the WeakSeg extension's README for the methods and their papers."


class WeakSegInferWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: model folder and its card, input volume, output segmentation, Apply/Cancel, progress."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.timer = None
        self.modelOk = False

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WeakSegInfer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = WeakSegInferLogic()
        self.ui.deviceComboBox.addItems(list(DEVICES))
        self.timer = qt.QTimer()
        self.timer.setInterval(300)
        self.timer.connect("timeout()", self.onTimer)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateApply)
        self.ui.applyButton.connect("clicked()", self.onApply)
        self.onModelChanged(self.ui.modelPathLineEdit.currentPath)

    def cleanup(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()

    def onModelChanged(self, path: str) -> None:
        try:
            self.ui.modelInfoLabel.text = self.logic.modelSummary(path) if path else "No model folder selected."
            self.modelOk = bool(path)
        except WeakSegError as exc:
            self.ui.modelInfoLabel.text = str(exc)
            self.modelOk = False
        self.updateApply()

    def updateApply(self, *args) -> None:
        running = self.job is not None and not self.job.done
        self.ui.applyButton.enabled = running or (self.modelOk and self.ui.inputVolumeSelector.currentNode() is not None)
        self.ui.applyButton.text = "Cancel" if running else "Apply"

    def onApply(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the prediction.", waitCursor=True):
            ensureDependencies()
            self.job = self.logic.predict(self.ui.modelPathLineEdit.currentPath, self.ui.inputVolumeSelector.currentNode(),
                                          self.ui.outputSegmentationSelector.currentNode(),
                                          device=self.ui.deviceComboBox.currentText)
            self.ui.statusLabel.text = "Predicting…"
            self.ui.progressBar.value = 0
            self.timer.start()
            self.updateApply()

    def onTimer(self) -> None:
        self.job.poll()
        fraction = self.job.progress()
        if fraction is not None:
            self.ui.progressBar.value = int(100 * fraction)
        if not self.job.done:
            return
        self.timer.stop()
        if self.job.error:
            self.ui.statusLabel.text = "Cancelled." if self.job.cancelled else "Failed."
            if not self.job.cancelled:
                slicer.util.errorDisplay("WeakSeg prediction failed.", detailedText=self.job.error)
        else:
            self.ui.progressBar.value = 100
            self.ui.outputSegmentationSelector.setCurrentNode(self.job.result)
            self.job.result.CreateClosedSurfaceRepresentation()
            self.ui.statusLabel.text = f"Done: {self.job.result.GetName()}"
        self.updateApply()


class WeakSegInferLogic(ScriptedLoadableModuleLogic):
    """Scripting API of WeakSegInfer (no Qt).

    Example (Slicer Python console)::

        logic = slicer.util.getModuleLogic("WeakSegInfer")
        print(logic.modelSummary("/tmp/lungs-model"))
        segmentation = logic.predict("/tmp/lungs-model", slicer.util.getNode("CTChest"), wait=True)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.python = workerPython()

    def modelSummary(self, folder) -> str:
        """Recipe, network, labels, training spacing and metrics of a model folder (raises if it is not one)."""
        return tasks.model_summary(folder)

    def predict(self, folder, volumeNode, segmentationNode=None, device: str = "auto", wait: bool = False):
        """Segment ``volumeNode`` with the model in ``folder`` into ``segmentationNode`` (new when None).

        Segments are named and coloured from the model card and reference the volume's geometry. Returns
        a :class:`~WeakSegLib.mrml.tasks.NodeJob`, or with ``wait=True`` the segmentation node.
        """
        if volumeNode is None:
            raise WeakSegError("select an input volume")
        job = tasks.start_prediction(folder, volumeNode, segmentationNode, device=device, python=self.python)
        return job.wait() if wait else job


class WeakSegInferTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: train a tiny model with WeakSegTrain's logic, then predict with this one."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_predict_names_segments_from_the_card()

    def test_predict_names_segments_from_the_card(self) -> None:
        from WeakSegTrain import trainSelfTestModel

        volumeNode, folder = trainSelfTestModel("3d")
        logic = WeakSegInferLogic()
        self.assertIn("recipe", logic.modelSummary(folder))
        segmentation = logic.predict(folder, volumeNode, wait=True)
        self.assertEqual(segmentation.GetSegmentation().GetNthSegment(0).GetName(), "object")
        self.delayDisplay("WeakSegInfer self-test passed")

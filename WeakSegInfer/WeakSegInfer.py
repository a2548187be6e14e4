"""WeakSegInfer: load a trained WeakSeg model folder and predict a segmentation in the background.

Behaviour lives in :class:`WeakSegInferLogic` (scriptable) and ``WeakSegLib``; the widget binds the
panel to it. torch and MONAI are imported only by the worker process.
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from WeakSegLib import mrml
from WeakSegLib.config import DEVICES
from WeakSegLib.errors import WeakSegError
from WeakSegLib.io.fields import read_json
from WeakSegLib.io.volume import read_volume
from WeakSegLib.io.worklist import Worklist
from WeakSegLib.mrml import tasks
from WeakSegTrain import JobWatcher, ParameterNodePanel, ensureDependencies, workerPython

#: the cases "Apply to dataset" predicts: a split of the dataset file, or all of them
SPLIT_CHOICES = {"test cases": "test", "training cases": "training", "all cases": None}


@parameterNodeWrapper
class WeakSegInferParameterNode:
    """The panel's settings, kept in the module's parameter node (saved with the scene) and bound to the
    widgets whose ``SlicerParameterName`` names them."""

    modelFolder: pathlib.Path
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    device: str = "auto"
    dataset: pathlib.Path
    cases: str = next(iter(SPLIT_CHOICES))
    outputFolder: pathlib.Path


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


class WeakSegInferWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: model folder and its card, input volume, output segmentation, Apply/Cancel, progress."""

    parameterNodeClass = WeakSegInferParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.watcher = None
        self.modelOk = False
        self.datasetResult = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WeakSegInfer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = WeakSegInferLogic()
        self.ui.deviceComboBox.addItems(list(DEVICES))
        self.ui.splitComboBox.addItems(list(SPLIT_CHOICES))
        self.watcher = JobWatcher(self.ui.progressBar)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateApply)
        self.ui.applyButton.connect("clicked()", self.onApply)
        self.ui.applyDatasetButton.connect("clicked()", self.onApplyDataset)
        self.ui.datasetResultsTable.connect("cellDoubleClicked(int,int)", self.onLoadResult)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.onModelChanged(self.ui.modelPathLineEdit.currentPath)

    def cleanup(self) -> None:
        self.removeObservers()
        self.setParameterNode(None)
        if self.watcher is not None:
            self.watcher.stop()

    def onModelChanged(self, path: str) -> None:
        try:
            self.ui.modelInfoLabel.text = self.logic.modelSummary(path) if path else "No model folder selected."
            self.modelOk = bool(path)
        except WeakSegError as exc:
            self.ui.modelInfoLabel.text = str(exc)
            self.modelOk = False
        self.updateApply()

    def updateApply(self, *args) -> None:
        if self.watcher is None:
            return
        running = self.watcher.running
        self.ui.applyButton.enabled = running or (self.modelOk and self.ui.inputVolumeSelector.currentNode() is not None)
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyDatasetButton.enabled = running or self.modelOk
        self.ui.applyDatasetButton.text = "Cancel" if running else "Apply to dataset"

    def onApply(self) -> None:
        if self.watcher.running:
            self.watcher.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the prediction.", waitCursor=True):
            ensureDependencies()
            self.ui.modelPathLineEdit.addCurrentPathToHistory()  # remembered across sessions (settingKey)
            job = self.logic.predict(self.ui.modelPathLineEdit.currentPath, self.ui.inputVolumeSelector.currentNode(),
                                     self.ui.outputSegmentationSelector.currentNode(),
                                     device=self.ui.deviceComboBox.currentText)
            self.ui.statusLabel.text = "Predicting…"
            self.watcher.watch(job, onEnd=self.onPredicted)
            self.updateApply()

    def onPredicted(self, job) -> None:
        if job.error:
            self.ui.statusLabel.text = "Cancelled." if job.cancelled else "Failed."
        else:
            self.ui.outputSegmentationSelector.setCurrentNode(job.result)
            job.result.CreateClosedSurfaceRepresentation()
            self.ui.statusLabel.text = f"Done: {job.result.GetName()}"
        self.updateApply()

    # --- a dataset or a folder ------------------------------------------------------------------------
    def onApplyDataset(self) -> None:
        if self.watcher.running:
            self.watcher.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the predictions.", waitCursor=True):
            ensureDependencies()
            for edit in (self.ui.modelPathLineEdit, self.ui.datasetPathLineEdit, self.ui.outputFolderPathLineEdit):
                edit.addCurrentPathToHistory()
            job = self.logic.predictDataset(self.ui.modelPathLineEdit.currentPath, self.ui.datasetPathLineEdit.currentPath,
                                            self.ui.outputFolderPathLineEdit.currentPath,
                                            split=SPLIT_CHOICES[self.ui.splitComboBox.currentText],
                                            device=self.ui.deviceComboBox.currentText)
            self.datasetResult = None
            self.ui.datasetResultsTable.setRowCount(0)
            self.ui.statusLabel.text = "Predicting the cases…"
            self.watcher.watch(job, onEvent=self.onCaseEvent, onEnd=self.onDatasetPredicted)
            self.updateApply()

    def onCaseEvent(self, event: dict) -> None:
        if event.get("event") == "case":
            self._addResultRow(event["name"], "done" if "prediction" in event else f"skipped: {event['error']}", "")
            self.ui.statusLabel.text = f"Case {event['done']} of {event['of']}"

    def _addResultRow(self, name: str, result: str, dice: str) -> None:
        import qt

        table = self.ui.datasetResultsTable
        rows = [table.item(r, 0).text() for r in range(table.rowCount)]
        row = rows.index(name) if name in rows else table.rowCount
        if row == table.rowCount:
            table.setRowCount(row + 1)
        for column, text in enumerate((name, result, dice)):
            table.setItem(row, column, qt.QTableWidgetItem(text))

    def onDatasetPredicted(self, job) -> None:
        if not job.error:
            self.datasetResult = job.result
            dice: dict[str, list[float]] = {}
            for row in self.logic.scores(job.result):
                dice.setdefault(row["case"], []).append(row["dice"])
            for name, path in job.result["predictions"].items():
                shown = " / ".join(f"{d:.3f}" for d in dice.get(name, []))
                self._addResultRow(name, "done" if path else f"skipped: {job.result['failed'].get(name)}", shown)
            self.ui.statusLabel.text = f"{len(job.result['predictions'])} cases → {job.result['out_dir']}"
        else:
            self.ui.statusLabel.text = "Cancelled." if job.cancelled else "Failed."
        self.updateApply()

    def onLoadResult(self, row: int, column: int) -> None:
        if self.datasetResult is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not load the case.", waitCursor=True):
            name = self.ui.datasetResultsTable.item(row, 0).text()
            segmentation = self.logic.loadPrediction(self.datasetResult, name)
            self.ui.outputSegmentationSelector.setCurrentNode(segmentation)


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
        self.lastDataset: Worklist | None = None  # the cases of the last predictDataset

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

    # --- a dataset or a folder ------------------------------------------------------------------------
    def predictDataset(self, folder, dataset, outFolder, split: str | None = "test", device: str = "auto",
                       wait: bool = False):
        """Segment the cases of ``split`` (None: every case) of a dataset file, or of a folder of images,
        in the background: one ``<case>.seg.nrrd`` per case in ``outFolder`` (segments named and coloured
        from the card; a case that fails is skipped), scored against the cases' reference masks as
        ``weakseg evaluate`` scores them. The job's result (``wait=True``: returned) is the worker's
        summary: ``predictions``, ``failed`` and, with references, ``scores`` (see :meth:`scores`)."""
        worklist = Worklist.open(dataset)
        cases = [(c.name, c.image, c.files.get("mask")) for c in worklist.cases if split is None or c.split == split]
        if not cases:
            raise WeakSegError(f"{worklist.path} has no {split} case")
        self.lastDataset = worklist
        job = tasks.start_dataset_prediction(folder, cases, outFolder, device=device, python=self.python)
        return job.wait() if wait else job

    def scores(self, result) -> list[dict]:
        """The per-case, per-label scores (Dice, IoU, HD95 mm, volumes) of a :meth:`predictDataset` result
        (empty without references)."""
        return read_json(Path(result["scores"]), "scores file")["cases"] if result.get("scores") else []

    def loadPrediction(self, result, name: str):
        """Load case ``name``'s image and its predicted segmentation (a :meth:`predictDataset` result) into
        the scene; returns the segmentation node (on the image's grid, its segments named from the card)."""
        path = result["predictions"].get(name)
        if not path:
            raise WeakSegError(f"case {name!r} has no prediction: {result['failed'].get(name, 'not predicted')}")
        case = self.lastDataset.cases[self.lastDataset.index(name)]
        volume = mrml.add_volume_node(read_volume(case.image), name)
        return mrml.load_segmentation(path, volume, f"{name} prediction")


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

"""WeakSegTrain: place boxes, tighten them, train a segmentation network from them in the background.

All behaviour lives in :class:`WeakSegTrainLogic` (scriptable from the Python console) and in
``WeakSegLib``; the widget only binds the panel to the logic. Nothing heavy (torch, MONAI, scikit-image)
is imported here: the worker process imports them, after :func:`ensureDependencies` installed them.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
from pathlib import Path
from typing import Union

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
from WeakSegLib.app.jobs import cuda_gpu_count
from WeakSegLib.config import DEVICES, NETWORKS, TrainConfig
from WeakSegLib.errors import WeakSegError
from WeakSegLib.io.boxes import Box, BoxSet, check_boxes_fit, load_boxes, save_boxes
from WeakSegLib.io.dataset import DatasetCase
from WeakSegLib.io.volume import write_volume
from WeakSegLib.io.worklist import DATASET_FILE, Worklist
from WeakSegLib.mrml import tasks
from WeakSegLib.mrml.cases import CaseSession, box_nodes
from WeakSegLib.recipes.registry import AUTO_RECIPE, panel_choices

#: Attribute naming the volume node an ROI node is a box of.
VOLUME_ATTRIBUTE = "WeakSeg.Volume"
#: Parameter-node parameters (saved with the scene): the open case list and the loaded case.
DATASET_PARAMETER, CASE_PARAMETER = "DatasetPath", "CurrentCase"
#: Training modes offered in the panel (any TrainConfig field may be given from a script).
MODES = {"2D": {"spatial_dims": 2, "context": 1}, "2.5D": {"spatial_dims": 2, "context": 3}}


def ensureDependencies(confirm: bool = True, recipe: str | None = None) -> None:
    """Make sure the worker's packages are installed in Slicer's Python; ask first when ``confirm``.

    torch comes from the PyTorch extension's ``PyTorchUtils``; the rest (MONAI, SciPy, scikit-image)
    through ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.10; asking first when ``confirm``, and also when
    Slicer runs its tests) or ``slicer.util.pip_install`` after a confirmation. Raises RuntimeError
    naming what is still missing when the user declines or it fails.
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
        try:  # Slicer ≥ 5.10; slicer/__init__ does not import this submodule, so a fresh session must
            import slicer.packaging as slicerPackaging
        except ImportError:
            slicerPackaging = None
        if slicerPackaging is not None:
            from packaging.requirements import Requirement

            # skip_in_testing=False: the self-tests need the packages as much as a user does
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


def workerPython() -> str | None:
    """Interpreter for the worker: ``PythonSlicer`` inside Slicer, else this Python (None)."""
    return shutil.which("PythonSlicer")


class WeakSegTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "WeakSeg Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations", "Plots"]
        self.parent.contributors = ["WeakSeg developers"]
        self.parent.helpText = (
            "Train a segmentation network from bounding boxes: place slice boxes or 3D boxes, optionally tighten "
            "the per-slice boxes of a 3D box with a patch classifier, and train in a background process "
            "(tightness prior, emptiness and box-size constraints). See the README of the WeakSeg extension.")
        self.parent.acknowledgementText = (
            "Methods: Kervadec et al. (MIDL 2020) bounding-box tightness prior; Kervadec et al. (MedIA 2019) "
            "log-barrier extensions; Wang et al. box tightening by patch classification.")


@parameterNodeWrapper
class WeakSegTrainParameterNode:
    """The panel's settings, kept in the module's parameter node (saved with the scene) and bound to the
    widgets whose ``SlicerParameterName`` names them."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    referenceVolume: Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]
    labelValue: int = 1
    recipe: str = AUTO_RECIPE
    network: str = NETWORKS[0]
    mode: str = "2D"
    epochs: int = TrainConfig.epochs
    device: str = "auto"
    modelFolder: pathlib.Path
    loadPrediction: bool = True
    tightenerFolder: pathlib.Path


class ParameterNodePanel:
    """The parameter-node part of Slicer's scripted-module template, for both panels: the widget's
    ``parameterNodeClass`` (a ``parameterNodeWrapper`` with an ``inputVolume``) bound to its ``ui`` while the
    module is shown, released when the scene closes, and ``updateApply`` called on every change."""

    parameterNodeClass: type = type(None)
    _parameterNode = None
    _parameterNodeGuiTag = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.parameterNodeClass(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode) -> None:
        import vtk

        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApply)
        self._parameterNode, self._parameterNodeGuiTag = parameterNode, None
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApply)
        self.updateApply()


class JobWatcher:
    """Follows one background job (a :class:`WeakSegLib.mrml.tasks.NodeJob`) with a Qt timer, for both
    panels: each new event to ``onEvent``, the fraction done to ``progressBar``, and at the end an error
    dialog (unless cancelled) and ``onEnd(job)``."""

    def __init__(self, progressBar, intervalMs: int = 400) -> None:
        import qt

        self.progressBar, self.job = progressBar, None
        self.onEvent, self.onEnd = None, None
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.connect("timeout()", self._tick)

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done

    def watch(self, job, onEvent=None, onEnd=None) -> None:
        self.job, self.onEvent, self.onEnd = job, onEvent, onEnd
        self.progressBar.value = 0
        self.timer.start()

    def cancel(self) -> None:
        if self.running:
            self.job.cancel()

    def stop(self) -> None:
        """Stop following (the panel closes); a running job is cancelled."""
        self.timer.stop()
        self.cancel()

    def _tick(self) -> None:
        for event in self.job.poll():
            if self.onEvent is not None:
                self.onEvent(event)
        fraction = self.job.progress()
        if fraction is not None:
            self.progressBar.value = int(100 * fraction)
        if not self.job.done:
            return
        self.timer.stop()
        if self.job.error:
            if not self.job.cancelled:
                slicer.util.errorDisplay(f"WeakSeg {self.job.kind} failed.", detailedText=self.job.error)
        else:
            self.progressBar.value = 100
        if self.onEnd is not None:
            self.onEnd(self.job)


class WeakSegTrainWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds widgets to :class:`WeakSegTrainLogic` and polls background jobs with a timer."""

    parameterNodeClass = WeakSegTrainParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.watcher = None
        self.curves = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WeakSegTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = WeakSegTrainLogic()
        self.ui.recipeComboBox.addItems(list(panel_choices()))
        self.ui.recipeComboBox.currentText = AUTO_RECIPE
        self.ui.networkComboBox.addItems(list(NETWORKS))
        self.ui.modeComboBox.addItems(list(MODES))
        self.ui.deviceComboBox.addItems(list(DEVICES))
        self.gpusSpinBox = qt.QSpinBox()  # shown where there is more than one GPU to train on
        self.gpusSpinBox.setRange(1, max(1, cuda_gpu_count()))
        self.gpusSpinBox.toolTip = "Training processes, one GPU each (PyTorch's torchrun launcher)."
        if self.gpusSpinBox.maximum > 1:
            self.ui.deviceComboBox.parentWidget().layout().addRow("GPUs:", self.gpusSpinBox)
        self.watcher = JobWatcher(self.ui.progressBar)
        menu = qt.QMenu(self.ui.openDatasetButton)
        menu.addAction("Dataset file…").connect("triggered()", lambda: self.onOpenDataset(folder=False))
        menu.addAction("Folder of images…").connect("triggered()", lambda: self.onOpenDataset(folder=True))
        self.ui.openDatasetButton.setMenu(menu)
        self.ui.addLoadedVolumesButton.connect("clicked()", self.onAddLoadedVolumes)
        self.ui.nextCaseButton.connect("clicked()", lambda: self.onLoadCase(self.logic.nextCase))
        self.ui.previousCaseButton.connect("clicked()", lambda: self.onLoadCase(self.logic.previousCase))
        self.ui.casesTable.connect("cellDoubleClicked(int,int)",
                                   lambda row, column: self.onLoadCase(lambda: self.logic.loadCase(row)))
        self.logic.caseListeners.append(lambda *args: self.updateCasesTable())
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateBoxTable)
        self.ui.addSliceBoxButton.connect("clicked()", self.onAddSliceBox)
        self.ui.add3DBoxButton.connect("clicked()", self.onAdd3DBox)
        self.ui.deleteBoxButton.connect("clicked()", self.onDeleteBox)
        self.ui.boxTable.connect("cellDoubleClicked(int,int)", self.onJumpToBox)
        self.ui.saveBoxesButton.connect("clicked()", self.onSaveBoxes)
        self.ui.loadBoxesButton.connect("clicked()", self.onLoadBoxes)
        self.ui.addTightenerCaseButton.connect("clicked()", self.onAddTightenerCase)
        self.ui.trainTightenerButton.connect("clicked()", self.onTrainTightener)
        self.ui.tightenButton.connect("clicked()", self.onTighten)
        self.ui.applyButton.connect("clicked()", self.onApply)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.updateBoxTable)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.updateBoxTable)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.tightenerCases = []
        self.initializeParameterNode()
        self.updateBoxTable()
        self.updateCasesTable()

    def updateApply(self, *args) -> None:
        """Apply (Start training) is enabled when there is something to train on, or a job to cancel."""
        if self.logic is None:
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        boxed = volume is not None and bool(self.logic.boxNodes(volume))
        self.ui.applyButton.enabled = boxed or self.logic.session is not None or self.watcher.running

    def cleanup(self) -> None:
        self.removeObservers()
        self.setParameterNode(None)
        if self.watcher is not None:
            self.watcher.stop()
        if self.logic is not None:
            self.logic.closeDataset()

    # --- cases -------------------------------------------------------------------------------------------
    def onOpenDataset(self, folder: bool) -> None:
        import qt

        path = (qt.QFileDialog.getExistingDirectory(None, "Folder of images") if folder else
                qt.QFileDialog.getOpenFileName(None, "Dataset file", "", "Dataset file (*.json);;All files (*)"))
        if path:
            with slicer.util.tryWithErrorDisplay("Could not open the cases.", waitCursor=True):
                self.logic.openDataset(path)
                self.onLoadCase(self.logic.nextCase)

    def onAddLoadedVolumes(self) -> None:
        import qt

        path = qt.QFileDialog.getExistingDirectory(None, "Folder to save the cases in")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not add the loaded volumes.", waitCursor=True):
                self.logic.addLoadedVolumes(path)
                self.onLoadCase(self.logic.nextCase)

    def onLoadCase(self, load) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the case.", waitCursor=True):
            volume = load()
            if volume is not None:
                self.ui.inputVolumeSelector.setCurrentNode(volume)
                if self.logic.session.reference is not None:
                    self.ui.referenceSelector.setCurrentNode(self.logic.session.reference)
        self.updateCasesTable()

    def updateCasesTable(self) -> None:
        import qt

        rows = self.logic.cases() if self.logic.session is not None else []
        current = self.logic.currentCase()
        self.ui.casesTable.setRowCount(len(rows))
        for index, row in enumerate(rows):
            status = "loaded" if index == current else ("boxed" if row.boxes else "no box: not trained on")
            for column, text in enumerate((row.name, str(row.boxes), "yes" if row.reference else "no", status)):
                self.ui.casesTable.setItem(index, column, qt.QTableWidgetItem(text))
        boxed = sum(1 for row in rows if row.boxes)
        self.ui.casesSummaryLabel.text = (
            f"{boxed} of {len(rows)} cases boxed; training uses the boxed ones." if rows else
            "No case list: the panel trains on the input volume below.")
        self.ui.nextCaseButton.enabled = bool(rows) and (current is None or current + 1 < len(rows))
        self.ui.previousCaseButton.enabled = bool(rows) and bool(current)

    # --- boxes ---------------------------------------------------------------------------------------
    def _volume(self):
        node = self.ui.inputVolumeSelector.currentNode()
        if node is None:
            raise WeakSegError("select an input volume first")
        return node

    def _redSliceIndex(self, volumeNode) -> int:
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        ras = [sliceNode.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
        return self.logic.sliceIndexAt(volumeNode, ras)

    def onAddSliceBox(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add a slice box.", waitCursor=True):
            volumeNode = self._volume()
            roi = self.logic.addBox(volumeNode, kind="slice", sliceIndex=self._redSliceIndex(volumeNode),
                                    label=self.ui.labelSpinBox.value)
            slicer.modules.markups.logic().JumpSlicesToLocation(*self.logic.boxCenter(roi), True)

    def onAdd3DBox(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add a 3D box.", waitCursor=True):
            self.logic.addBox(self._volume(), kind="3d", label=self.ui.labelSpinBox.value)

    def updateBoxTable(self, *args) -> None:
        import qt

        volumeNode = self.ui.inputVolumeSelector.currentNode()
        nodes = self.logic.boxNodes(volumeNode) if volumeNode is not None else []
        self.ui.boxTable.setRowCount(len(nodes))
        for row, node in enumerate(nodes):
            for column, text in enumerate((node.GetName(), node.GetAttribute(mrml.KIND_ATTRIBUTE) or "3d",
                                           node.GetAttribute(mrml.LABEL_ATTRIBUTE) or "1")):
                item = qt.QTableWidgetItem(text)
                item.setData(qt.Qt.UserRole, node.GetID())
                self.ui.boxTable.setItem(row, column, item)
        self.updateApply()

    def _selectedBoxNode(self):
        row = self.ui.boxTable.currentRow()
        item = self.ui.boxTable.item(row, 0) if row >= 0 else None
        import qt

        return slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole)) if item is not None else None

    def onDeleteBox(self) -> None:
        node = self._selectedBoxNode()
        if node is not None:
            slicer.mrmlScene.RemoveNode(node)

    def onJumpToBox(self, row: int, column: int) -> None:
        node = self._selectedBoxNode()
        if node is not None:
            slicer.modules.markups.logic().JumpSlicesToLocation(*self.logic.boxCenter(node), True)

    def onSaveBoxes(self) -> None:
        import qt

        path = qt.QFileDialog.getSaveFileName(None, "Save boxes", "", "WeakSeg boxes (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not save the boxes.", waitCursor=True):
                self.logic.saveBoxes(self._volume(), path)

    def onLoadBoxes(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(None, "Load boxes", "", "WeakSeg boxes (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not load the boxes.", waitCursor=True):
                self.logic.loadBoxes(self._volume(), path)

    # --- box tightener -------------------------------------------------------------------------------
    def onAddTightenerCase(self) -> None:
        image, labels = self.ui.tightenerImageSelector.currentNode(), self.ui.tightenerLabelSelector.currentNode()
        if image is None or labels is None:
            slicer.util.errorDisplay("Pick a volume and its label map or segmentation first.")
            return
        self.tightenerCases.append((image, labels))
        self.ui.tightenerCasesList.addItem(f"{image.GetName()}  ←  {labels.GetName()}")

    def onTrainTightener(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start training the box tightener.", waitCursor=True):
            ensureDependencies()
            folder = self.ui.tightenerPathLineEdit.currentPath
            self.ui.tightenerPathLineEdit.addCurrentPathToHistory()  # remembered across sessions (settingKey)
            self._watch(self.logic.trainTightener(self.tightenerCases, folder, {"epochs": self.ui.epochsSpinBox.value}),
                        "val_accuracy")

    def onTighten(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not tighten the boxes.", waitCursor=True):
            ensureDependencies()
            self.ui.tightenerPathLineEdit.addCurrentPathToHistory()
            self._watch(self.logic.tightenBoxes(self.ui.tightenerPathLineEdit.currentPath, self._volume()), None)

    # --- training ------------------------------------------------------------------------------------
    def trainingConfig(self) -> dict:
        """The panel's training settings as TrainConfig fields."""
        return {"recipe": self.ui.recipeComboBox.currentText, "epochs": self.ui.epochsSpinBox.value,
                "network": self.ui.networkComboBox.currentText, "device": self.ui.deviceComboBox.currentText,
                **MODES[self.ui.modeComboBox.currentText]}

    def onApply(self) -> None:
        if self.watcher.running:
            self.watcher.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            ensureDependencies(recipe=self.ui.recipeComboBox.currentText)
            self.ui.outputModelPathLineEdit.addCurrentPathToHistory()
            folder = self.ui.outputModelPathLineEdit.currentPath
            if self.logic.session is not None:  # a case list: one model on every boxed case
                job = self.logic.trainDataset(folder, config=self.trainingConfig(), gpus=self.gpusSpinBox.value)
            else:
                job = self.logic.train(self._volume(), folder, config=self.trainingConfig(),
                                       referenceNode=self.ui.referenceSelector.currentNode(),
                                       gpus=self.gpusSpinBox.value)
            self._watch(job, "dice")
            if getattr(job, "skipped", None):
                self.ui.logTextEdit.appendPlainText(f"{len(job.skipped)} case(s) without a box are not trained on: "
                                                    + ", ".join(job.skipped))

    def _watch(self, job, metric) -> None:
        self.ui.logTextEdit.clear()
        if metric is not None:
            self.curves = mrml.TrainingCurves(f"WeakSeg {job.kind}", metric=metric)
            job.listeners.append(self.curves.add)
            slicer.modules.plots.logic().ShowChartInLayout(self.curves.chart)
        self.ui.applyButton.text = "Cancel"
        self.watcher.watch(job, self.onJobEvent, self.onJobEnd)

    def onJobEvent(self, event: dict) -> None:
        if event.get("event") in ("start", "epoch", "done", "error", "cancelled", "warning"):
            self.ui.logTextEdit.appendPlainText(", ".join(f"{k}: {v}" for k, v in event.items()))

    def onJobEnd(self, job) -> None:
        self.ui.applyButton.text = "Start training"
        if job.error:
            self.ui.logTextEdit.appendPlainText(job.error)
        elif job.kind == "train" and self.ui.loadPredictionCheckBox.checked:
            self._watch(self.logic.predict(job.result, self._volume()), None)
        self.updateBoxTable()


class WeakSegTrainLogic(ScriptedLoadableModuleLogic):
    """Scripting API of WeakSegTrain (no Qt). Every long task runs in a worker process.

    Example (Slicer Python console)::

        logic = slicer.util.getModuleLogic("WeakSegTrain")
        volume = slicer.util.getNode("CTChest")
        logic.addBox(volume, kind="3d")                       # then drag its handles onto the organ
        folder = logic.train(volume, "/tmp/lungs-model", config={"epochs": 50}, wait=True)

    Long calls return a :class:`WeakSegLib.mrml.tasks.NodeJob` (poll it), or with ``wait=True`` block and
    return its result.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.python = workerPython()
        self.session: CaseSession | None = None  # the open case list, if any
        self.caseListeners: list = []  # told (case index, box file) after each save of a case's boxes

    # --- boxes ---------------------------------------------------------------------------------------
    def boxNodes(self, volumeNode) -> list:
        """ROI nodes that are boxes of ``volumeNode`` (those added by this module or tagged for it)."""
        return box_nodes(volumeNode, VOLUME_ATTRIBUTE)

    def sliceIndexAt(self, volumeNode, ras) -> int:
        """Index along the volume's slice axis of the slice through the RAS point ``ras`` (mm), clipped."""
        ijk = mrml.world_to_index(volumeNode, ras)
        axis = mrml.slice_axis(volumeNode)
        shape = mrml.volume_shape(volumeNode)
        return int(min(max(round(ijk[axis]), 0), shape[axis] - 1))

    def addBox(self, volumeNode, kind: str = "3d", sliceIndex: int | None = None, label: int = 1,
               extent: float = 0.5):
        """Add a box ROI of ``volumeNode``: a slice box on ``sliceIndex`` or a 3D box, centred, covering
        ``extent`` of the volume along each in-box axis (the user then drags its handles)."""
        shape = mrml.volume_shape(volumeNode)
        start = [int(round(n * (1 - extent) / 2)) for n in shape]
        stop = [max(a + 1, int(round(n * (1 + extent) / 2))) for a, n in zip(start, shape)]
        axis = None
        if kind == "slice":
            axis = mrml.slice_axis(volumeNode)
            index = shape[axis] // 2 if sliceIndex is None else int(sliceIndex)
            start[axis], stop[axis] = index, index + 1
        box = Box(tuple(start), tuple(stop), int(label), kind, axis)
        return self.showBoxes([box], volumeNode, name=f"{volumeNode.GetName()} box")[0]

    def showBoxes(self, boxes, volumeNode, name: str = "box", color=None) -> list:
        """Add ROI nodes for ``boxes`` (a BoxSet or a list of Box), tagged as boxes of ``volumeNode``."""
        return mrml.roi_nodes_from_boxes(boxes, volumeNode, name=name, color=color, scene=volumeNode.GetScene(),
                                         attributes={VOLUME_ATTRIBUTE: volumeNode.GetID()})

    def boxCenter(self, roiNode) -> list[float]:
        """The RAS centre (mm) of a box ROI in world coordinates, its parent transforms applied."""
        center = roiNode.GetCenterWorld()
        return [center[0], center[1], center[2]]

    def boxes(self, volumeNode, roiNodes=None, labels=None) -> mrml.RoiConversion:
        """Boxes of ``roiNodes`` (default: :meth:`boxNodes`) on the volume's grid, with warnings."""
        result = mrml.boxes_from_roi_nodes(self.boxNodes(volumeNode) if roiNodes is None else roiNodes,
                                           volumeNode, labels=labels)
        for warning in result.warnings:
            logging.warning(warning)
        return result

    def saveBoxes(self, volumeNode, path, roiNodes=None) -> Path:
        """Write the volume's boxes to a box JSON file (atomically)."""
        return save_boxes(self.boxes(volumeNode, roiNodes).boxset, path)

    def loadBoxes(self, volumeNode, path) -> list:
        """Show the boxes of a box JSON file as ROI nodes of ``volumeNode`` (its grid must match)."""
        boxset = load_boxes(path)
        check_boxes_fit(boxset, mrml.grid_geometry(volumeNode), volumeNode.GetName())
        return self.showBoxes(boxset, volumeNode, name=f"{volumeNode.GetName()} box")

    # --- box tightener -------------------------------------------------------------------------------
    def trainTightener(self, cases, folder, config=None, wait: bool = False, resume: bool = True):
        """Train a box tightener on ``[(volume node, label volume or segmentation node)]`` into ``folder``."""
        if not cases:
            raise WeakSegError("add at least one fully labelled case to train the box tightener")
        job = tasks.start_tightener_training(cases, folder, config, resume=resume, python=self.python)
        return job.wait() if wait else job

    def tightenBoxes(self, tightenerFolder, volumeNode, roiNodes=None, settings=None, wait: bool = False):
        """Tighten the per-slice boxes of the volume's 3D boxes; the result is the new slice-box ROI nodes.

        The 3D box ROIs are hidden (kept, so the user can tighten again with other settings).
        """
        conversion = self.boxes(volumeNode, roiNodes)
        boxes3d = [box for box in conversion.boxset.boxes if box.kind == "3d"]
        if not boxes3d:
            raise WeakSegError("tightening needs at least one 3D box")
        boxset = BoxSet(boxes3d, conversion.boxset.shape, conversion.boxset.labels, conversion.boxset.geometry)
        sources = [node for node in (self.boxNodes(volumeNode) if roiNodes is None else roiNodes)
                   if (node.GetAttribute(mrml.KIND_ATTRIBUTE) or "3d") == "3d"]

        def show(result):
            tightened, report = result
            for node in sources:
                node.GetDisplayNode().SetVisibility(False)
                node.SetAttribute(VOLUME_ATTRIBUTE, "")
            return self.showBoxes(tightened, volumeNode, name=f"{volumeNode.GetName()} tightened",
                                  color=(0.1, 0.8, 0.3))

        job = tasks.start_tightening(tightenerFolder, volumeNode, boxset, settings, python=self.python).then(show)
        return job.wait() if wait else job

    # --- training ------------------------------------------------------------------------------------
    def train(self, volumeNode, folder, roiNodes=None, config=None, referenceNode=None, wait: bool = False,
              resume: bool = True, curves: bool = False, gpus: int = 1):
        """Train a segmentation model from the volume's boxes into ``folder`` (resumes its checkpoint).

        ``config``: TrainConfig fields (``recipe``, ``epochs``, ``network``, ``spatial_dims``, ``context``,
        ``device``, ...); slices are axial by default. ``referenceNode``: optional label
        volume or segmentation, used only to report Dice per epoch. ``curves``: show loss/Dice in a
        table and plot chart (the job's ``curves`` attribute). ``gpus`` > 1: that many training processes,
        one GPU each (PyTorch's launcher). The result is the model folder.
        """
        boxset = self.boxes(volumeNode, roiNodes).boxset
        config = dict(config or {})
        job = tasks.start_training(volumeNode, boxset, folder, config, reference_node=referenceNode, resume=resume,
                                   python=self.python, gpus=gpus)
        if curves:
            job.curves = mrml.TrainingCurves(f"WeakSeg training {Path(folder).name}", scene=volumeNode.GetScene())
            job.listeners.append(job.curves.add)
        return job.wait() if wait else job

    def predict(self, folder, volumeNode, segmentationNode=None, wait: bool = False):
        """Predict ``volumeNode`` with a trained model into a segmentation node (see WeakSegInfer)."""
        job = tasks.start_prediction(folder, volumeNode, segmentationNode, python=self.python)
        return job.wait() if wait else job

    # --- cases (a dataset boxed case by case) ------------------------------------------------------------
    def openDataset(self, path) -> list:
        """Open a dataset file, or a folder of images (its ``dataset.json``, made by the rules of
        ``weakseg dataset init`` when missing), as the case list; returns its rows
        (:class:`WeakSegLib.io.worklist.CaseRow`). No case is loaded yet (:meth:`loadCase`)."""
        self.closeDataset()
        worklist = Worklist.open(path)
        self.session = CaseSession(worklist, slicer.mrmlScene, VOLUME_ATTRIBUTE,
                                   on_saved=lambda *args: [listener(*args) for listener in self.caseListeners])
        parameters = self.getParameterNode()
        parameters.SetParameter(DATASET_PARAMETER, str(worklist.path))
        parameters.SetParameter(CASE_PARAMETER, "")
        return worklist.rows()

    def addLoadedVolumes(self, folder, volumeNodes=None) -> list:
        """Make the scene's volumes (default: every scalar volume) cases of the dataset in ``folder``: each
        image written there as ``<name>.nrrd`` with its boxes (if it has any) as ``<name>.boxes.json``;
        the folder's ``dataset.json`` lists them (created, or extended). Opens it; returns its rows."""
        folder = Path(folder)
        nodes = list(volumeNodes) if volumeNodes is not None else [
            n for n in slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode")
            if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        if not nodes:
            raise WeakSegError("no volume is loaded")
        Worklist.check_new_names(folder / DATASET_FILE, [node.GetName() for node in nodes])  # before any write
        cases = []
        for node in nodes:
            name = node.GetName()
            image = write_volume(mrml.volume_from_node(node), folder / f"{name}.nrrd")
            files = {}
            if self.boxNodes(node):
                files["boxes"] = str(self.saveBoxes(node, folder / f"{name}.boxes.json"))
            cases.append(DatasetCase(name, "training" if files else "test", str(image), files))
        Worklist.create(folder / DATASET_FILE, cases)
        return self.openDataset(folder / DATASET_FILE)

    def cases(self) -> list:
        """The rows of the open case list."""
        return self._session().worklist.rows()

    def currentCase(self) -> int | None:
        """The index of the loaded case, or None."""
        return self.session.current if self.session is not None else None

    def loadCase(self, index: int):
        """Load case ``index`` (the previous case's boxes saved and its nodes removed), show it in the slice
        views; returns its volume node."""
        session = self._session()
        volume = session.load(index)
        self.getParameterNode().SetParameter(CASE_PARAMETER, session.worklist.cases[index].name)
        if hasattr(slicer, "app"):  # inside Slicer: the views show the selection node's volumes
            slicer.app.applicationLogic().PropagateVolumeSelection(0)
        return volume

    def nextCase(self):
        """Load the case after the loaded one (the first when none is); None after the last."""
        current = self.currentCase()
        following = 0 if current is None else current + 1
        return self.loadCase(following) if following < len(self._session().worklist.cases) else None

    def previousCase(self):
        """Load the case before the loaded one; None before the first."""
        current = self.currentCase()
        return self.loadCase(current - 1) if current else None

    def saveCaseBoxes(self):
        """Write the loaded case's boxes to its box file now (they are also saved as the user works)."""
        return self._session().save()

    def trainDataset(self, folder, config=None, wait: bool = False, resume: bool = True, gpus: int = 1):
        """Train one model on every case of the list that has a box (their reference masks give the Dice
        per epoch); the job's ``skipped`` lists the cases left out for having none."""
        session = self._session()
        session.save()
        cases, skipped = session.worklist.training_cases()
        job = tasks.start_dataset_training(cases, folder, dict(config or {}), resume=resume, python=self.python,
                                           gpus=gpus)
        job.skipped = skipped
        return job.wait() if wait else job

    def restore(self):
        """Reopen the case list and the loaded case the parameter node names (after a scene was loaded);
        returns the loaded volume node, or None."""
        parameters = self.getParameterNode()
        path, name = parameters.GetParameter(DATASET_PARAMETER), parameters.GetParameter(CASE_PARAMETER)
        if not path:
            return None
        for node in [n for n in slicer.mrmlScene.GetNodesByClass("vtkMRMLMarkupsROINode")
                     if n.GetAttribute(VOLUME_ATTRIBUTE)]:  # the box files are what counts: no stale copies
            slicer.mrmlScene.RemoveNode(node)
        self.openDataset(path)
        return self.loadCase(self.session.worklist.index(name)) if name else None

    def closeDataset(self) -> None:
        """Save the loaded case's boxes and stop following the scene (its nodes stay)."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def _session(self) -> CaseSession:
        if self.session is None:
            raise WeakSegError("open a dataset or a folder of cases first")
        return self.session


def trainSelfTestModel(kind: str = "slice"):
    """Self-test fixture inside Slicer: a synthetic ball volume, its boxes as ROIs, a 2-epoch model.

    Returns ``(volume node, model folder)``; shared by both modules' self-tests.
    """
    import tempfile

    import numpy as np

    from WeakSegLib.io.boxes import boxes_from_mask
    from WeakSegLib.io.volume import Volume

    ensureDependencies(confirm=False)
    z, y, x = np.mgrid[:16, :48, :48]
    ball = ((z - 8) / 6) ** 2 + ((y - 24) / 12) ** 2 + ((x - 24) / 12) ** 2 < 1
    volumeNode = mrml.add_volume_node(Volume((200.0 * ball).astype(np.float32), (1.0, 1.0, 2.0)), "ball")
    logic = WeakSegTrainLogic()
    logic.showBoxes(boxes_from_mask(ball.astype(np.uint8), kind, 0), volumeNode)
    folder = os.path.join(tempfile.mkdtemp(), "model")
    logic.train(volumeNode, folder, config={"epochs": 2, "device": "cpu"}, wait=True)
    return volumeNode, folder


class WeakSegTrainTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: slice boxes on a synthetic volume, two epochs of training, a prediction."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_boxes_train_predict()

    def test_boxes_train_predict(self) -> None:
        volumeNode, folder = trainSelfTestModel("slice")
        logic = WeakSegTrainLogic()
        self.assertTrue(logic.boxNodes(volumeNode))
        self.assertTrue(os.path.isfile(os.path.join(folder, "model.json")))
        segmentation = logic.predict(folder, volumeNode, wait=True)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)
        self.delayDisplay("WeakSegTrain self-test passed")

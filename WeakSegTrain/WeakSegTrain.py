"""WeakSegTrain: place boxes, tighten them, train a segmentation network from them in the background.

All behaviour lives in :class:`WeakSegTrainLogic` (scriptable from the Python console) and in
``WeakSegLib``; the widget only binds the panel to the logic. Nothing heavy (torch, MONAI, scikit-image)
is imported here: the worker process imports them, after
:func:`WeakSegPanelLib.dependencies.ensureDependencies` installed them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional, Union

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Maximum, Minimum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from WeakSegLib import mrml
from WeakSegLib.app.jobs import GpuProbe
from WeakSegLib.config import DEFAULT_DEVICE, DEVICES, NETWORKS, TrainConfig
from WeakSegLib.config import MODES as TRAINING_MODES
from WeakSegLib.errors import WeakSegError
from WeakSegLib.io.boxes import Box, BoxSet, check_boxes_fit, load_boxes, save_boxes
from WeakSegLib.io.dataset import DatasetCase
from WeakSegLib.io.names import case_file, safe_case_name
from WeakSegLib.io.volume import MAX_LABEL, write_volume
from WeakSegLib.io.worklist import BOXES_SUFFIX, DATASET_FILE, Worklist
from WeakSegLib.mrml import VOLUME_ATTRIBUTE, tasks
from WeakSegLib.mrml.cases import CaseSession, box_nodes
from WeakSegLib.registry import AUTO_RECIPE, panel_choices
from WeakSegPanelLib import DOCUMENTATION_URL
from WeakSegPanelLib.dependencies import ensureDependencies, workerPython
from WeakSegPanelLib.panel import JobWatcher, ParameterNodePanel, PathFields
from WeakSegPanelLib.selftest import trainSelfTestModel

#: Parameter-node parameters (saved with the scene) beside the panel's: the open case list and the loaded case.
DATASET_PARAMETER, CASE_PARAMETER = "DatasetPath", "CurrentCase"
#: Training modes offered in the panel (any TrainConfig field may be given from a script).
MODES = {mode.upper(): dims for mode, dims in TRAINING_MODES.items() if dims["spatial_dims"] == 2}
#: the most epochs the panel offers (a script may ask for more)
MAX_PANEL_EPOCHS = 10000


class WeakSegTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("WeakSeg Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations", "Plots"]
        self.parent.contributors = ["WeakSeg developers"]
        self.parent.helpText = _(
            "Train a segmentation network from bounding boxes: place slice boxes or 3D boxes, optionally tighten "
            "the per-slice boxes of a 3D box with a patch classifier, and train in a background process "
            "(tightness prior, emptiness and box-size constraints). Needs Slicer 5.10 or newer.") + (
            f' <a href="{DOCUMENTATION_URL}">' + _("Documentation") + "</a>")
        self.parent.acknowledgementText = _(
            "Methods: Kervadec et al. (MIDL 2020) bounding-box tightness prior; Kervadec et al. (MedIA 2019) "
            "log-barrier extensions; Wang et al. box tightening by patch classification.")


@parameterNodeWrapper
class WeakSegTrainParameterNode:
    """The panel's settings, kept in the module's parameter node (saved with the scene). The widgets whose
    ``SlicerParameterName`` names a field are bound by Slicer's connectors; the folder fields (empty: not
    set) by :class:`WeakSegPanelLib.panel.PathFields`. Choices come from their one home (the recipe
    registry, :mod:`WeakSegLib.config`)."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    referenceVolume: Optional[Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]]
    labelValue: Annotated[int, Minimum(1), Maximum(MAX_LABEL)] = 1
    recipe: Annotated[str, Choice(list(panel_choices()))] = AUTO_RECIPE
    network: Annotated[str, Choice(list(NETWORKS))] = NETWORKS[0]
    mode: Annotated[str, Choice(list(MODES))] = next(iter(MODES))
    epochs: Annotated[int, Minimum(1), Maximum(MAX_PANEL_EPOCHS)] = TrainConfig.epochs
    device: Annotated[str, Choice(list(DEVICES))] = DEFAULT_DEVICE
    modelFolder: str = ""
    loadPrediction: bool = True
    tightenerFolder: str = ""


#: what the Cases table says of each case status (:data:`WeakSegLib.io.dataset.STATUSES`)
STATUS_TEXTS = {"new": _("no box: not trained on"), "labelled": _("no box: not trained on"), "boxed": _("boxed"),
                "predicted": _("waiting for review"), "accepted": _("accepted: trains on its mask"),
                "rejected": _("rejected: box it")}


@dataclass
class CaseTable:
    """What the Cases section shows: one row of texts per case (name, boxes, reference, status, review
    score), a summary line, and which of Previous / Next / Review next / Accept / Reject can act."""

    rows: list[tuple[str, str, str, str, str]]
    summary: str
    canPrevious: bool
    canNext: bool
    canReview: bool = False
    canAccept: bool = False
    canReject: bool = False


class WeakSegTrainWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds widgets to :class:`WeakSegTrainLogic` and polls background jobs with a timer."""

    parameterNodeClass = WeakSegTrainParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.watcher = None
        self.curves = None
        self.gpuProbe = None
        self.gpus = 1  # training processes (the GPU count chosen; shown with more than one GPU)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WeakSegTrain.ui"))
        self.layout.addWidget(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.bind(slicer.util.childWidgetVariables(uiWidget))
        self.initializeParameterNode()
        self.updateBoxTable()
        self.updateCasesTable()

    def bind(self, ui) -> None:
        """Connect the panel's widgets (``ui``: the .ui's named children) to the logic and the scene."""
        import qt

        self.ui = ui
        self.logic = WeakSegTrainLogic()
        self.pathFields = PathFields(ui)
        self.watcher = JobWatcher(ui.progressBar)
        self.gpusSpinBox = qt.QSpinBox()  # shown once nvidia-smi has told there is more than one GPU
        self.gpusSpinBox.setRange(1, 1)
        self.gpusSpinBox.valueChanged.connect(lambda value: setattr(self, "gpus", value))
        self.gpusSpinBox.setToolTip(_("Training processes, one GPU each (PyTorch's torchrun launcher)."))
        self.gpuProbe = GpuProbe()
        qt.QTimer.singleShot(500, self.showGpuChoice)
        menu = qt.QMenu(ui.openDatasetButton)
        menu.addAction(_("Dataset file…")).triggered.connect(lambda: self.onOpenDataset(folder=False))
        menu.addAction(_("Folder of images…")).triggered.connect(lambda: self.onOpenDataset(folder=True))
        ui.openDatasetButton.setMenu(menu)
        ui.addLoadedVolumesButton.clicked.connect(self.onAddLoadedVolumes)
        ui.nextCaseButton.clicked.connect(lambda: self.onLoadCase(self.logic.nextCase))
        ui.previousCaseButton.clicked.connect(lambda: self.onLoadCase(self.logic.previousCase))
        ui.casesTable.cellDoubleClicked.connect(lambda row, column: self.onLoadCase(lambda: self.logic.loadCase(row)))
        ui.rankCasesButton.clicked.connect(self.onRankCases)
        ui.reviewNextButton.clicked.connect(self.onReviewNext)
        ui.acceptCaseButton.clicked.connect(lambda: self.onReviewDecision(self.logic.acceptCase))
        ui.rejectCaseButton.clicked.connect(lambda: self.onReviewDecision(self.logic.rejectCase))
        ui.retrainButton.clicked.connect(self.onApply)
        self.logic.caseListeners.append(lambda *args: self.updateCasesTable())
        ui.inputVolumeSelector.currentNodeChanged.connect(self.updateBoxTable)
        ui.addSliceBoxButton.clicked.connect(self.onAddSliceBox)
        ui.add3DBoxButton.clicked.connect(self.onAdd3DBox)
        ui.deleteBoxButton.clicked.connect(self.onDeleteBox)
        ui.boxTable.cellDoubleClicked.connect(self.onJumpToBox)
        ui.saveBoxesButton.clicked.connect(self.onSaveBoxes)
        ui.loadBoxesButton.clicked.connect(self.onLoadBoxes)
        ui.addTightenerCaseButton.clicked.connect(self.onAddTightenerCase)
        ui.trainTightenerButton.clicked.connect(self.onTrainTightener)
        ui.tightenButton.clicked.connect(self.onTighten)
        ui.applyButton.clicked.connect(self.onApply)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.updateBoxTable)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.updateBoxTable)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.tightenerCases = []

    def showGpuChoice(self) -> None:
        """Offer the GPU count once ``nvidia-smi`` has answered (asked in the background at setup)."""
        import qt

        count = self.gpuProbe.result()
        if count is None:
            qt.QTimer.singleShot(500, self.showGpuChoice)
        elif count > 1:
            self.gpusSpinBox.setRange(1, count)
            self.ui.deviceComboBox.parentWidget().layout().addRow(_("GPUs:"), self.gpusSpinBox)

    def updateApply(self, *args) -> None:
        """Apply (Start training) is enabled when there is something to train on, or a job to cancel."""
        if self.logic is None or self.watcher is None:
            return
        running, cancelling = self.watcher.running, self.watcher.cancelling
        self.ui.applyButton.setEnabled(not cancelling and (running or self.logic.canTrain(
            self.ui.inputVolumeSelector.currentNode())))
        self.ui.applyButton.setText(_("Cancelling…") if cancelling else _("Cancel") if running else
                                    _("Start training"))

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

        path = (qt.QFileDialog.getExistingDirectory(None, _("Folder of images")) if folder else
                qt.QFileDialog.getOpenFileName(None, _("Dataset file"), "", _("Dataset file (*.json);;All files (*)")))
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not open the cases."), waitCursor=True):
                self.logic.openDataset(path)
                self.onLoadCase(self.logic.nextCase)

    def onAddLoadedVolumes(self) -> None:
        import qt

        path = qt.QFileDialog.getExistingDirectory(None, _("Folder to save the cases in"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not add the loaded volumes."), waitCursor=True):
                self.logic.addLoadedVolumes(path)
                self.onLoadCase(self.logic.nextCase)

    def onLoadCase(self, load) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the case."), waitCursor=True):
            load()
            volume = self.logic.session.volume if self.logic.session is not None else None
            if volume is not None:
                self.ui.inputVolumeSelector.setCurrentNode(volume)
                if self.logic.session.reference is not None:
                    self.ui.referenceSelector.setCurrentNode(self.logic.session.reference)
        self.updateCasesTable()

    def updateCasesTable(self) -> None:
        import qt

        table = self.logic.caseTable()
        self.ui.casesTable.setRowCount(len(table.rows))
        for index, row in enumerate(table.rows):
            for column, text in enumerate(row):
                self.ui.casesTable.setItem(index, column, qt.QTableWidgetItem(text))
        self.ui.casesSummaryLabel.setText(table.summary)
        self.ui.nextCaseButton.setEnabled(table.canNext)
        self.ui.previousCaseButton.setEnabled(table.canPrevious)
        self.ui.rankCasesButton.setEnabled(self.logic.session is not None)
        self.ui.reviewNextButton.setEnabled(table.canReview)
        self.ui.acceptCaseButton.setEnabled(table.canAccept)
        self.ui.rejectCaseButton.setEnabled(table.canReject)
        self.ui.retrainButton.setEnabled(self.logic.session is not None and not self.watcher.running)

    # --- review ----------------------------------------------------------------------------------------
    def onRankCases(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start ranking the cases."), waitCursor=True):
            ensureDependencies()
            self.pathFields.remember()
            self._watch(self.logic.rankCases(self.parameters.modelFolder, self.parameters.device), None)

    def onReviewNext(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the case to review."), waitCursor=True):
            self.onLoadCase(self.logic.reviewNext)
            self.ui.logTextEdit.appendPlainText(
                _("Check the prediction (edit it in the Segment Editor if needed), then Accept or Reject."))

    def onReviewDecision(self, decide) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not record the review."), waitCursor=True):
            decide()
        self.updateCasesTable()

    # --- boxes ---------------------------------------------------------------------------------------
    def _volume(self):
        node = self.ui.inputVolumeSelector.currentNode()
        if node is None:
            raise WeakSegError(_("select an input volume first"))
        return node

    def _redSliceIndex(self, volumeNode) -> int:
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        ras = [sliceNode.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
        return self.logic.sliceIndexAt(volumeNode, ras)

    def onAddSliceBox(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not add a slice box."), waitCursor=True):
            volumeNode = self._volume()
            roi = self.logic.addBox(volumeNode, kind="slice", sliceIndex=self._redSliceIndex(volumeNode),
                                    label=self.parameters.labelValue)
            slicer.modules.markups.logic().JumpSlicesToLocation(*self.logic.boxCenter(roi), True)

    def onAdd3DBox(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not add a 3D box."), waitCursor=True):
            self.logic.addBox(self._volume(), kind="3d", label=self.parameters.labelValue)

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
        import qt

        row = self.ui.boxTable.currentRow()
        item = self.ui.boxTable.item(row, 0) if row >= 0 else None
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

        path = qt.QFileDialog.getSaveFileName(None, _("Save boxes"), "", _("WeakSeg boxes (*.json)"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not save the boxes."), waitCursor=True):
                self.logic.saveBoxes(self._volume(), path)

    def onLoadBoxes(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(None, _("Load boxes"), "", _("WeakSeg boxes (*.json)"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not load the boxes."), waitCursor=True):
                self.logic.loadBoxes(self._volume(), path)

    # --- box tightener -------------------------------------------------------------------------------
    def onAddTightenerCase(self) -> None:
        image, labels = self.ui.tightenerImageSelector.currentNode(), self.ui.tightenerLabelSelector.currentNode()
        if image is None or labels is None:
            slicer.util.errorDisplay(_("Pick a volume and its label map or segmentation first."))
            return
        self.tightenerCases.append((image, labels))
        self.ui.tightenerCasesList.addItem(f"{image.GetName()}  ←  {labels.GetName()}")

    def onTrainTightener(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start training the box tightener."), waitCursor=True):
            ensureDependencies()
            self.pathFields.remember()
            self._watch(self.logic.trainTightener(self.tightenerCases, self.parameters.tightenerFolder,
                                                  {"epochs": self.parameters.epochs}), "val_accuracy")

    def onTighten(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not tighten the boxes."), waitCursor=True):
            ensureDependencies()
            self.pathFields.remember()
            self._watch(self.logic.tightenBoxes(self.parameters.tightenerFolder, self._volume()), None)

    # --- training ------------------------------------------------------------------------------------
    def onApply(self) -> None:
        if self.watcher.running:
            self.watcher.cancel()
            self.updateApply()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            parameters = self.parameters
            ensureDependencies(recipe=parameters.recipe)
            self.pathFields.remember()
            job = self.logic.trainFromParameters(parameters, gpus=self.gpus)
            self._watch(job, "dice")
            if getattr(job, "skipped", None):
                self.ui.logTextEdit.appendPlainText(
                    _("{count} case(s) without a box are not trained on: {names}").format(
                        count=len(job.skipped), names=", ".join(job.skipped)))

    def _watch(self, job, metric) -> None:
        self.ui.logTextEdit.clear()
        if metric is not None:
            self.curves = mrml.TrainingCurves(f"WeakSeg {job.kind}", metric=metric)
            job.listeners.append(self.curves.add)
            slicer.modules.plots.logic().ShowChartInLayout(self.curves.chart)
        self.watcher.watch(job, self.onJobEvent, self.onJobEnd)
        self.updateApply()

    def onJobEvent(self, event: dict) -> None:
        if event.get("event") in ("start", "epoch", "done", "error", "cancelled", "warning"):
            self.ui.logTextEdit.appendPlainText(", ".join(f"{k}: {v}" for k, v in event.items()))

    def onJobEnd(self, job) -> None:
        if job.cancelled:
            self.ui.logTextEdit.appendPlainText(_("Cancelled; a training run resumes from its last epoch."))
        elif job.error:
            self.ui.logTextEdit.appendPlainText(job.error)
        elif (job.kind == "train" and not job.detached and self.parameters is not None
              and self.parameters.loadPrediction and self.ui.inputVolumeSelector.currentNode() is not None):
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
        self.caseListeners: list = []  # told of every change of the case list (after a box save: case index, box file)

    # --- boxes ---------------------------------------------------------------------------------------
    def boxNodes(self, volumeNode) -> list:
        """ROI nodes that are boxes of ``volumeNode`` (those added by this module or tagged for it)."""
        return box_nodes(volumeNode)

    def canTrain(self, volumeNode) -> bool:
        """Whether the panel has something to train on: a case list, or boxes of ``volumeNode``."""
        return self.session is not None or (volumeNode is not None and bool(self.boxNodes(volumeNode)))

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

    def trainingConfig(self, parameters) -> dict:
        """The panel's training settings (a :class:`WeakSegTrainParameterNode`) as TrainConfig fields."""
        return {"recipe": parameters.recipe, "epochs": parameters.epochs, "network": parameters.network,
                "device": parameters.device, **MODES[parameters.mode]}

    def trainFromParameters(self, parameters, gpus: int = 1):
        """Start what the panel's Apply starts, from its parameter node: one model on every boxed case of
        the open case list, or else on the boxes of the input volume (its reference, if any, reports Dice
        per epoch), into the model folder (empty: an error, never the working directory)."""
        config = self.trainingConfig(parameters)
        if self.session is not None:
            return self.trainDataset(parameters.modelFolder, config=config, gpus=gpus)
        if parameters.inputVolume is None:
            raise WeakSegError("select an input volume first")
        return self.train(parameters.inputVolume, parameters.modelFolder, config=config,
                          referenceNode=parameters.referenceVolume, gpus=gpus)

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
        self.session = CaseSession(worklist, slicer.mrmlScene,
                                   on_saved=lambda *args: [listener(*args) for listener in self.caseListeners])
        parameters = self.getParameterNode()
        parameters.SetParameter(DATASET_PARAMETER, str(worklist.path))
        parameters.SetParameter(CASE_PARAMETER, "")
        return worklist.rows()

    def addLoadedVolumes(self, folder, volumeNodes=None) -> list:
        """Make the scene's volumes (default: every scalar volume) cases of the dataset in ``folder``: each
        image written there as ``<name>.nrrd`` with its boxes (if it has any) as ``<name>.boxes.json``, the
        name made from the node's (characters a file name cannot hold become ``_``);
        the folder's ``dataset.json`` lists them (created, or extended). Opens it; returns its rows."""
        folder = Path(folder)
        nodes = list(volumeNodes) if volumeNodes is not None else [
            n for n in slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode")
            if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        if not nodes:
            raise WeakSegError("no volume is loaded")
        names = [safe_case_name(node.GetName()) for node in nodes]  # node names are free text: "1: CT/chest"
        Worklist.check_new_names(folder / DATASET_FILE, names)  # before any write
        cases = []
        for node, name in zip(nodes, names):
            image = write_volume(mrml.volume_from_node(node), case_file(folder, name, ".nrrd"))
            files = {}
            if self.boxNodes(node):
                files["boxes"] = str(self.saveBoxes(node, case_file(folder, name, BOXES_SUFFIX)))
            cases.append(DatasetCase(name, "training" if files else "test", str(image), files))
        Worklist.create(folder / DATASET_FILE, cases)
        return self.openDataset(folder / DATASET_FILE)

    def cases(self) -> list:
        """The rows of the open case list."""
        return self._session().worklist.rows()

    def caseTable(self) -> CaseTable:
        """What the panel's Cases section shows (empty without a case list)."""
        rows = self.cases() if self.session is not None else []
        current = self.currentCase()
        texts = []
        for index, row in enumerate(rows):
            status = _("loaded") if index == current else STATUS_TEXTS[row.status]
            texts.append((row.name, str(row.boxes), _("yes") if row.reference else _("no"), status,
                          "" if row.score is None else f"{row.score:.2f}"))
        if not rows:
            return CaseTable(texts, _("No case list: the panel trains on the input volume below."), False, False)
        count = {status: sum(1 for row in rows if row.status == status) for status in STATUS_TEXTS}
        summary = _("{boxed} of {total} cases boxed").format(boxed=sum(1 for row in rows if row.boxes), total=len(rows))
        if count["accepted"] or count["predicted"]:
            summary += _(", {accepted} accepted, {waiting} waiting for review; training uses the boxed and accepted "
                         "ones.").format(accepted=count["accepted"], waiting=count["predicted"])
        else:
            summary += _("; training uses the boxed ones.")
        loaded = rows[current] if current is not None else None
        reviewing = self.session.prediction is not None
        others = [i for i, row in enumerate(rows) if row.status == "predicted" and not (reviewing and i == current)]
        return CaseTable(texts, summary, canPrevious=bool(current), canNext=current is None or current + 1 < len(rows),
                         canReview=bool(others), canAccept=reviewing,
                         canReject=reviewing or (loaded is not None and loaded.status == "accepted"))

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

    # --- review (rank, accept or reject, retrain) -------------------------------------------------------
    def rankCases(self, modelFolder, device: str = DEFAULT_DEVICE, wait: bool = False):
        """Rank the case list's cases that have neither a mask nor a decision with the model in
        ``modelFolder`` (``weakseg rank``, in a worker): each gets a prediction and a review score, shown in
        the case table once the job ends. The result is the worker's ``done`` payload."""
        session = self._session()
        session.save()
        job = tasks.start_ranking(modelFolder, session.worklist.path, device, python=self.python)
        job.then(self._reloadAfter)
        return job.wait() if wait else job

    def _reloadAfter(self, result):
        self.reloadCases()
        return result

    def reloadCases(self) -> None:
        """Read the case list's dataset file again (a rank job wrote it) and tell the listeners."""
        session = self._session()
        session.worklist = Worklist.open(session.worklist.path)
        self._casesChanged()

    def reviewNext(self):
        """Load the case waiting for review with the highest score, its prediction shown as a segmentation
        (edit it in the Segment Editor, then :meth:`acceptCase` or :meth:`rejectCase`); returns the
        segmentation node, or None when no case waits."""
        order = self._session().worklist.review_order()
        if not order:
            return None
        self.loadCase(order[0])
        return self.session.show_prediction()

    def acceptCase(self, segmentationNode=None, by: str | None = None) -> Path:
        """Save the loaded case's prediction, as the user edited it (or ``segmentationNode``), as its mask:
        it trains on that mask from now on (:func:`WeakSegLib.io.review.accept`). Returns the mask file."""
        session = self._session()
        if session.current is None:
            raise WeakSegError("load the case to accept first")
        path = session.worklist.accept(session.current, session.reviewed_labels(segmentationNode), by)
        self._casesChanged()
        return path

    def rejectCase(self) -> None:
        """Drop the loaded case's prediction (or accepted mask): the case goes back to boxing."""
        session = self._session()
        if session.current is None:
            raise WeakSegError("load the case to reject first")
        session.worklist.reject(session.current)
        if session.prediction is not None:
            session.scene.RemoveNode(session.prediction)
            session.prediction = None
        self._casesChanged()

    def _casesChanged(self) -> None:
        for listener in self.caseListeners:
            listener()

    def saveCaseBoxes(self):
        """Write the loaded case's boxes to its box file now (they are also saved as the user works)."""
        return self._session().save()

    def trainDataset(self, folder, config=None, wait: bool = False, resume: bool = True, gpus: int = 1):
        """Train one model on every case of the list that has a box (their reference masks give the Dice
        per epoch) or an accepted mask (mixed supervision: the review loop's Retrain); the job's
        ``skipped`` lists the cases left out for having neither."""
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


class WeakSegTrainTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer, offline: slice boxes on a synthetic volume, a tiny model trained on them, a
    prediction (skipped, saying why, when WeakSeg's packages are not installed)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_boxes_train_predict()

    def test_boxes_train_predict(self) -> None:
        logic = WeakSegTrainLogic()
        volumeNode, folder = trainSelfTestModel("slice")
        self.assertTrue(logic.boxNodes(volumeNode))
        self.assertTrue((Path(folder) / "model.json").is_file())
        segmentation = logic.predict(folder, volumeNode, wait=True)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)
        self.delayDisplay("WeakSegTrain self-test passed")

"""WeakSegInfer: load a trained WeakSeg model folder and predict a segmentation in the background.

Behaviour lives in :class:`WeakSegInferLogic` (scriptable) and ``WeakSegLib``; the widget binds the
panel to it. torch and MONAI are imported only by the worker process.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from WeakSegLib import mrml
from WeakSegLib.config import DEVICES, PredictOptions
from WeakSegLib.errors import WeakSegError
from WeakSegLib.io.fields import read_json
from WeakSegLib.io.volume import read_volume
from WeakSegLib.io.worklist import Worklist
from WeakSegLib.mrml import tasks
from WeakSegPanelLib import DOCUMENTATION_URL
from WeakSegPanelLib.dependencies import ensureDependencies, workerPython
from WeakSegPanelLib.panel import JobWatcher, ParameterNodePanel, PathFields
from WeakSegPanelLib.selftest import trainSelfTestModel

#: the cases "Apply to dataset" predicts: a split of the dataset file, or all of them
SPLIT_CHOICES = {"test cases": "test", "training cases": "training", "all cases": None}


def predictOptions(parameters) -> PredictOptions:
    """How to predict, from the parameter node: it has one field per :class:`~WeakSegLib.config.PredictOptions`
    field, of the same name."""
    return PredictOptions(**{f.name: getattr(parameters, f.name) for f in dataclasses.fields(PredictOptions)})


@parameterNodeWrapper
class WeakSegInferParameterNode:
    """The panel's settings, kept in the module's parameter node (saved with the scene). The widgets whose
    ``SlicerParameterName`` names a field are bound by Slicer's connectors; the folder and file fields
    (empty: not set) by :class:`WeakSegPanelLib.panel.PathFields`."""

    modelFolder: str = ""
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    device: Annotated[str, Choice(list(DEVICES))] = PredictOptions.device
    postprocess: bool = PredictOptions.postprocess
    dataset: str = ""
    cases: Annotated[str, Choice(list(SPLIT_CHOICES))] = next(iter(SPLIT_CHOICES))
    outputFolder: str = ""


class WeakSegInfer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("WeakSeg Infer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["WeakSeg developers"]
        self.parent.helpText = _(
            "Segment a volume, or the cases of a dataset, with a model trained by WeakSeg Train (or the weakseg "
            "command line). The model folder's card tells the labels, their colours and the intensity "
            "normalisation. Needs Slicer 5.10 or newer.") + (
            f' <a href="{DOCUMENTATION_URL}">' + _("Documentation") + "</a>")
        self.parent.acknowledgementText = _("See the WeakSeg extension's README for the methods and their papers.")


class WeakSegInferWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: model folder and its card, input volume, output segmentation, Apply/Cancel, progress."""

    parameterNodeClass = WeakSegInferParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.watcher = None
        self.datasetResult = None
        self.resultNames: list[str] = []  # the results table's rows, by case name
        self._model: tuple = (None, "", False)  # (folder, summary shown, whether it can predict)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WeakSegInfer.ui"))
        self.layout.addWidget(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.bind(slicer.util.childWidgetVariables(uiWidget))
        self.initializeParameterNode()

    def bind(self, ui) -> None:
        """Connect the panel's widgets (``ui``: the .ui's named children) to the logic and the scene."""
        self.ui = ui
        self.logic = WeakSegInferLogic()
        self.pathFields = PathFields(ui)
        self.watcher = JobWatcher(ui.progressBar)
        ui.applyButton.clicked.connect(self.onApply)
        ui.applyDatasetButton.clicked.connect(self.onApplyDataset)
        ui.datasetResultsTable.cellDoubleClicked.connect(self.onLoadResult)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self) -> None:
        self.removeObservers()
        self.setParameterNode(None)
        if self.watcher is not None:
            self.watcher.stop()

    def updateApply(self, *args) -> None:
        """The model's card (or why the folder is not a model) and the Apply buttons' states."""
        if self.watcher is None or self.parameters is None:
            return
        if self._model[0] != self.parameters.modelFolder:  # read the card once per folder chosen
            self._model = (self.parameters.modelFolder, *self.logic.modelState(self.parameters.modelFolder))
            self.ui.modelInfoLabel.setText(self._model[1])
        modelOk = self._model[2]
        running, cancelling = self.watcher.running, self.watcher.cancelling
        label = _("Cancelling…") if cancelling else _("Cancel") if running else None
        self.ui.applyButton.setEnabled(not cancelling and (running or (
            modelOk and self.parameters.inputVolume is not None)))
        self.ui.applyButton.setText(label or _("Apply"))
        self.ui.applyDatasetButton.setEnabled(not cancelling and (running or modelOk))
        self.ui.applyDatasetButton.setText(label or _("Apply to dataset"))

    def onApply(self) -> None:
        if self.watcher.running:
            self.watcher.cancel()
            self.updateApply()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the prediction."), waitCursor=True):
            ensureDependencies()
            self.pathFields.remember()
            parameters = self.parameters
            job = self.logic.predict(parameters.modelFolder, parameters.inputVolume, parameters.outputSegmentation,
                                     options=predictOptions(parameters))
            self.ui.statusLabel.setText(_("Predicting…"))
            self.watcher.watch(job, onEnd=self.onPredicted)
            self.updateApply()

    def onPredicted(self, job) -> None:
        if job.error:
            self.ui.statusLabel.setText(_("Cancelled.") if job.cancelled else _("Failed."))
        elif job.result is not None:
            self.parameters.outputSegmentation = job.result
            job.result.CreateClosedSurfaceRepresentation()
            self.ui.statusLabel.setText(_("Done: {name}").format(name=job.result.GetName()))
        self.updateApply()

    # --- a dataset or a folder ------------------------------------------------------------------------
    def onApplyDataset(self) -> None:
        if self.watcher.running:
            self.watcher.cancel()
            self.updateApply()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the predictions."), waitCursor=True):
            ensureDependencies()
            self.pathFields.remember()
            parameters = self.parameters
            job = self.logic.predictDataset(parameters.modelFolder, parameters.dataset, parameters.outputFolder,
                                            split=SPLIT_CHOICES[parameters.cases], options=predictOptions(parameters))
            self.datasetResult, self.resultNames = None, []
            self.ui.datasetResultsTable.setRowCount(0)
            self.ui.statusLabel.setText(_("Predicting the cases…"))
            self.watcher.watch(job, onEvent=self.onCaseEvent, onEnd=self.onDatasetPredicted)
            self.updateApply()

    def onCaseEvent(self, event: dict) -> None:
        if event.get("event") == "case":
            self._setResultRow(event["name"], "done" if "prediction" in event else f"skipped: {event['error']}", "")
            self.ui.statusLabel.setText(_("Case {done} of {total}").format(done=event["done"], total=event["of"]))

    def _setResultRow(self, name: str, result: str, dice: str) -> None:
        import qt

        if name not in self.resultNames:
            self.resultNames.append(name)
            self.ui.datasetResultsTable.setRowCount(len(self.resultNames))
        row = self.resultNames.index(name)
        for column, text in enumerate((name, result, dice)):
            self.ui.datasetResultsTable.setItem(row, column, qt.QTableWidgetItem(text))

    def onDatasetPredicted(self, job) -> None:
        if not job.error:
            self.datasetResult = job.result
            for row in self.logic.resultRows(job.result):
                self._setResultRow(*row)
            self.ui.statusLabel.setText(_("{count} cases → {folder}").format(count=len(job.result["predictions"]),
                                                                              folder=job.result["out_dir"]))
        else:
            self.ui.statusLabel.setText(_("Cancelled.") if job.cancelled else _("Failed."))
        self.updateApply()

    def onLoadResult(self, row: int, column: int) -> None:
        if self.datasetResult is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the case."), waitCursor=True):
            self.parameters.outputSegmentation = self.logic.loadPrediction(self.datasetResult, self.resultNames[row])


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

    def modelState(self, folder) -> tuple[str, bool]:
        """What the panel says of a model folder, and whether it can predict: its summary, or why not."""
        if not folder:
            return _("No model folder selected."), False
        try:
            return self.modelSummary(folder), True
        except WeakSegError as exc:
            return str(exc), False

    def predict(self, folder, volumeNode, segmentationNode=None, options: PredictOptions | None = None,
                wait: bool = False):
        """Segment ``volumeNode`` with the model in ``folder`` into ``segmentationNode`` (new when None).

        Segments are named and coloured from the model card and reference the volume's geometry;
        ``options`` (default: :class:`~WeakSegLib.config.PredictOptions`' defaults) say how to predict, e.g.
        ``PredictOptions(device="cpu", postprocess=False)``. Returns a :class:`~WeakSegLib.mrml.tasks.NodeJob`,
        or with ``wait=True`` the segmentation node.
        """
        if volumeNode is None:
            raise WeakSegError("select an input volume")
        job = tasks.start_prediction(folder, volumeNode, segmentationNode, options, python=self.python)
        return job.wait() if wait else job

    # --- a dataset or a folder ------------------------------------------------------------------------
    def predictDataset(self, folder, dataset, outFolder, split: str | None = "test",
                       options: PredictOptions | None = None, wait: bool = False):
        """Segment the cases of ``split`` (None: every case) of a dataset file, or of a folder of images,
        in the background: one ``<case>.seg.nrrd`` per case in ``outFolder`` (segments named and coloured
        from the card; a case that fails is skipped), scored against the cases' reference masks as
        ``weakseg evaluate`` scores them; ``options`` as for :meth:`predict`. The job's result (``wait=True``:
        returned) is the worker's summary: ``predictions``, ``failed`` and, with references, ``scores`` (see
        :meth:`scores`)."""
        worklist = Worklist.open(dataset)
        cases = [(c.name, c.image, c.files.get("mask")) for c in worklist.cases if split is None or c.split == split]
        if not cases:
            raise WeakSegError(f"{worklist.path} has no {split} case")
        self.lastDataset = worklist
        job = tasks.start_dataset_prediction(folder, cases, outFolder, options, python=self.python)
        return job.wait() if wait else job

    def scores(self, result) -> list[dict]:
        """The per-case, per-label scores (Dice, IoU, HD95 mm, volumes) of a :meth:`predictDataset` result
        (empty without references)."""
        return read_json(Path(result["scores"]), "scores file")["cases"] if result.get("scores") else []

    def resultRows(self, result) -> list[tuple[str, str, str]]:
        """The rows of the panel's results table for a :meth:`predictDataset` result: case, outcome and
        its Dice per label (" / "-joined, empty without a reference)."""
        dice: dict[str, list[float]] = {}
        for row in self.scores(result):
            dice.setdefault(row["case"], []).append(row["dice"])
        return [(name, "done" if path else f"skipped: {result['failed'].get(name)}",
                 " / ".join(f"{d:.3f}" for d in dice.get(name, []))) for name, path in result["predictions"].items()]

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
    """Self-test inside Slicer, offline: a tiny model trained on a synthetic volume's 3D box, then predicted
    with this module (skipped, saying why, when WeakSeg's packages are not installed)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_predict_names_segments_from_the_card()

    def test_predict_names_segments_from_the_card(self) -> None:
        volumeNode, folder = trainSelfTestModel("3d")
        logic = WeakSegInferLogic()
        self.assertIn("recipe", logic.modelSummary(folder))
        segmentation = logic.predict(folder, volumeNode, wait=True)
        self.assertEqual(segmentation.GetSegmentation().GetNthSegment(0).GetName(), "object")
        self.delayDisplay("WeakSegInfer self-test passed")

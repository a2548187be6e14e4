"""The panels as Slicer runs them: their parameter nodes under Slicer's parameterNodeWrapper rules
(:mod:`slicer_conformance`, read from Slicer's source), bound to the widgets of their real .ui files, and
their Qt code — entering the module, Apply, the case table, cancel — driven through the Logic on a real
MRML scene."""

from __future__ import annotations

import pathlib
import shutil
import sys
import time
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional, Union

import numpy as np
import pytest
import slicer
from slicer_conformance import (
    Choice,
    Maximum,
    Minimum,
    NotModelled,
    boundWidgets,
    parameterNodeWrapper,
)
from slicer_widgets import application, child_widget_variables, ctkPathLineEdit, install_qt, load_ui, qMRMLNodeComboBox

from WeakSegLib.config import DEVICES, MODES, NETWORKS, PredictOptions
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import boxes_from_mask
from WeakSegLib.io.volume import MAX_LABEL
from WeakSegLib.registry import panel_choices
from WeakSegPanelLib.panel import PathFields

REPO = Path(__file__).resolve().parents[2]
MODULES = ["WeakSegTrain", "WeakSegInfer"]
install_qt()
application()  # widgets need the QApplication first


def form(**widgets):
    """Widgets bound by name, as a .ui's ``SlicerParameterName`` binds them; returned as the ``ui``
    namespace a panel passes to ``connectGui``."""
    application()
    for name, widget in widgets.items():
        widget.setProperty("SlicerParameterName", name)
    return SimpleNamespace(**widgets)


@pytest.fixture
def node(wired):
    return wired.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")


# ---- the rules reject what Slicer rejects ---------------------------------------------------------------

def test_a_union_of_nodes_needs_none(wired, node):
    """serializers.py UnionSerializer: the wrapper writes the default None at construction (wrapper.py
    _initMethod) and no member but a NoneSerializer takes None (util.py: "the None is necessary")."""
    @parameterNodeWrapper
    class WithoutNone:
        reference: Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]

    with pytest.raises(TypeError, match="Unable to write value 'None'"):
        WithoutNone(node)

    @parameterNodeWrapper
    class WithNone:
        reference: Optional[Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]]

    parameters = WithNone(node)
    assert parameters.reference is None
    for kind in ("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"):
        chosen = wired.scene.AddNewNodeByClass(kind)
        parameters.reference = chosen
        assert parameters.reference is chosen
    with pytest.raises(TypeError):
        parameters.reference = wired.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")


def test_a_stringable_combo_box_needs_a_choice_and_shows_exactly_it(wired, node):
    """guiConnectors.py QComboBoxToStringableConnector: RuntimeError without Choice; with it the combo box
    is cleared and refilled with the choices."""
    from PySide6.QtWidgets import QComboBox

    @parameterNodeWrapper
    class Plain:
        mode: str = "2D"

    combo = QComboBox()
    with pytest.raises(RuntimeError, match="requires the Choice annotation"):
        Plain(node).connectGui(form(mode=combo))

    @parameterNodeWrapper
    class Chosen:
        mode: Annotated[str, Choice(["2D", "2.5D"])] = "2.5D"

    combo = QComboBox()
    combo.addItems(["left over"])
    parameters = Chosen(wired.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    parameters.connectGui(form(mode=combo))
    assert [combo.itemText(i) for i in range(combo.count())] == ["2D", "2.5D"] and combo.currentText() == "2.5D"
    combo.setCurrentIndex(0)
    assert parameters.mode == "2D"
    with pytest.raises(ValueError):
        parameters.mode = "3D"


def test_an_int_spin_box_without_bounds_gets_the_whole_int_range(node):
    """guiConnectors.py QSliderOrSpinBoxToIntConnector: a missing Minimum/Maximum sets ∓2^31 (so 0 and
    negative epochs become selectable); a QSlider needs both bounds."""
    from PySide6.QtWidgets import QSlider, QSpinBox

    @parameterNodeWrapper
    class Unbounded:
        epochs: int = 5

    spin = QSpinBox()
    spin.setRange(1, 100)
    Unbounded(node).connectGui(form(epochs=spin))
    assert (spin.minimum(), spin.maximum()) == (-(2 ** 31), 2 ** 31 - 1)
    with pytest.raises(RuntimeError, match="unbounded"):
        Unbounded(node).connectGui(form(epochs=QSlider()))

    @parameterNodeWrapper
    class Bounded:
        epochs: Annotated[int, Minimum(1), Maximum(50)] = 5

    spin = QSpinBox()
    parameters = Bounded(node.GetScene().AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    parameters.connectGui(form(epochs=spin))
    assert (spin.minimum(), spin.maximum(), spin.value()) == (1, 50, 5)
    with pytest.raises(ValueError):
        parameters.epochs = 0


def test_a_path_field_writes_a_dot_over_the_remembered_folder_and_a_str_has_no_path_connector(node):
    """guiConnectors.py ctkPathLineEditToPathConnector writes ``str(Path())`` = "." into the widget at
    connect time; a ``str`` field has no connector for a ctkPathLineEdit at all."""
    ctkPathLineEdit.SETTINGS["rules/folder"] = ["/data/models"]

    @parameterNodeWrapper
    class WithPath:
        folder: pathlib.Path

    edit = ctkPathLineEdit()
    edit.settingKey = "rules/folder"
    assert edit.currentPath == "/data/models"  # the remembered folder (CTK's retrieveHistory)
    WithPath(node).connectGui(form(folder=edit))
    assert edit.currentPath == "."

    @parameterNodeWrapper
    class WithStr:
        folder: str = ""

    with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
        WithStr(node).connectGui(form(folder=ctkPathLineEdit()))


def test_other_rules_slicer_applies(wired, node):
    """A default its Choice rejects fails at construction; reserved names are refused; a node combo box
    gets its node types from the annotation; what is not modelled says so rather than passing."""
    @parameterNodeWrapper
    class BadDefault:
        device: Annotated[str, Choice(["cpu"])] = "tpu"

    with pytest.raises(ValueError, match="must be in one of"):
        BadDefault(node)
    with pytest.raises(ValueError, match="reserved name"):
        @parameterNodeWrapper
        class Reserved:
            setValue: int = 1
    with pytest.raises(Exception, match="Unable to create serializer"):
        @parameterNodeWrapper
        class Unknown:
            thing: complex

    @parameterNodeWrapper
    class Nodes:
        reference: Optional[Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]]

    combo = qMRMLNodeComboBox()
    Nodes(node).connectGui(form(reference=combo))
    assert combo.nodeTypes == ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]
    with pytest.raises(NotModelled):
        @parameterNodeWrapper
        class Listed:
            values: list[int]


# ---- the panels' parameter nodes ------------------------------------------------------------------------

def _module(name: str):
    import importlib

    return importlib.import_module(name)


def _choices(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def test_the_train_panels_modes_are_the_2d_training_modes():
    assert _module("WeakSegTrain").MODES == {"2D": MODES["2d"], "2.5D": MODES["2.5d"]}


EXPECTED_CHOICES = {  # each combo box lists its choices' one home, in that order
    "WeakSegTrain": {"recipe": list(panel_choices()), "network": list(NETWORKS), "mode": ["2D", "2.5D"],
                     "device": list(DEVICES)},
    "WeakSegInfer": {"device": list(DEVICES), "cases": ["test cases", "training cases", "all cases"]},
}


@pytest.mark.parametrize("module", MODULES)
def test_every_field_constructs_and_binds_to_the_panels_widgets(wired, module):
    """Every field of the panel's parameter node has a serializer and a default Slicer accepts, is bound to
    one widget of the .ui (by Slicer's connectors, or a folder by PathFields), and connecting the .ui
    succeeds: combo boxes show their choices' one home, spin boxes keep label ≥ 1 and epochs ≥ 1."""
    cls = getattr(_module(module), f"{module}ParameterNode")
    logic = getattr(_module(module), f"{module}Logic")()
    parameters = cls(logic.getParameterNode())
    assert not getattr(cls, "_unusedAnnotations", {})
    for name in cls.allParameters:
        assert parameters.getValue(name) == parameters.default(name).value
    ui = child_widget_variables(load_ui(module))
    bound, paths = boundWidgets(ui), PathFields(ui).widgets
    assert set(bound) | set(paths) == set(cls.allParameters) and not set(bound) & set(paths)
    assert all(typing.get_type_hints(cls)[name] is str and parameters.getValue(name) == "" for name in paths)
    tag = parameters.connectGui(ui)
    for name, choices in EXPECTED_CHOICES[module].items():
        assert _choices(bound[name]) == choices and bound[name].currentText() == parameters.getValue(name), name
    for name, widget in bound.items():
        if type(widget).__name__ == "QSpinBox":
            assert widget.minimum() >= 1 and widget.value() == parameters.getValue(name), name
        if type(widget).__name__ == "qMRMLNodeComboBox":
            declared = [s.text for s in _ui_node_types(module, widget.objectName())]
            assert widget.nodeTypes == declared, name
    parameters.disconnectGui(tag)


def _ui_node_types(module, widget_name):
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    widget = next(w for w in root.iter("widget") if w.get("name") == widget_name)
    return [s for p in widget.iter("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]


def test_the_train_panels_widgets_and_parameter_node_follow_each_other(wired):
    import WeakSegTrain

    parameters = WeakSegTrain.WeakSegTrainParameterNode(WeakSegTrain.WeakSegTrainLogic().getParameterNode())
    ui = child_widget_variables(load_ui("WeakSegTrain"))
    parameters.connectGui(ui)
    ui.recipeComboBox.setCurrentIndex(_choices(ui.recipeComboBox).index("gmil"))
    ui.modeComboBox.setCurrentIndex(1)
    assert (parameters.recipe, parameters.mode) == ("gmil", "2.5D")
    parameters.epochs = 7
    parameters.labelValue = MAX_LABEL
    assert (ui.epochsSpinBox.value(), ui.labelSpinBox.value()) == (7, MAX_LABEL)
    labels = wired.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ui.referenceSelector.setCurrentNode(labels)
    assert parameters.referenceVolume is labels
    ui.labelSpinBox.setValue(0)  # the spin box's range stops it at 1
    assert parameters.labelValue == 1
    assert WeakSegTrain.WeakSegTrainLogic().trainingConfig(parameters) == {
        "recipe": "gmil", "epochs": 7, "network": NETWORKS[0], "device": DEVICES[0], "spatial_dims": 2, "context": 3}


# ---- the panels' Qt code, through the Logic ------------------------------------------------------------

@pytest.fixture
def app(wired, monkeypatch):
    """``slicer.app`` and ``slicer.modules`` for the members Slicer's ``util.tryWithErrorDisplay`` and the
    panels use (qSlicerApplication: ``testingEnabled``, ``applicationLogic``, QApplication's override
    cursor; the Plots module's logic, the real vtkSlicerPlotsLogic); error dialogs are recorded."""
    application()
    plots = slicer.vtkSlicerPlotsLogic()
    plots.SetMRMLScene(wired.scene)
    plots.SetMRMLApplicationLogic(wired.application)
    monkeypatch.setattr(slicer, "app", SimpleNamespace(
        testingEnabled=lambda: True, applicationLogic=lambda: wired.application,
        setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None), raising=False)
    monkeypatch.setattr(slicer, "modules", SimpleNamespace(plots=SimpleNamespace(logic=lambda: plots)), raising=False)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append((text, kw)))
    return SimpleNamespace(errors=errors)


@pytest.fixture
def panels(app):
    """``make(module, settings)``: the module's widget bound to its .ui (``setup()`` but for Slicer's
    loadUI and layout), shown; ``settings`` are the path edits' remembered histories. Cleaned up after."""
    made = []

    def make(module: str, settings: dict | None = None):
        ctkPathLineEdit.SETTINGS.clear()
        ctkPathLineEdit.SETTINGS.update(settings or {})
        widget = getattr(_module(module), f"{module}Widget")(SimpleNamespace(isEntered=True))
        widget.bind(child_widget_variables(load_ui(module)))
        made.append(widget)
        return widget

    yield make
    for widget in made:
        widget.cleanup()


@pytest.mark.parametrize("module", MODULES)
def test_entering_exiting_and_closing_the_scene_keep_the_panel_bound(wired, app, panels, module):
    """Both panels raised in setup() and on every enter(); now the parameter node binds on entering, lets
    go on leaving (the widgets no longer write it) and rebinds after a scene close while shown."""
    panel = panels(module)
    panel.enter()
    combo = panel.ui.deviceComboBox
    assert _choices(combo) == list(DEVICES)
    combo.setCurrentIndex(1)
    assert panel.parameters.device == DEVICES[1]
    panel.exit()
    assert panel.parameters is None
    combo.setCurrentIndex(2)
    parameters = getattr(_module(module), f"{module}ParameterNode")(panel.logic.getParameterNode())
    assert parameters.device == DEVICES[1]
    panel.enter()
    panel.onSceneStartClose(None, None)
    wired.scene.Clear(False)
    panel.onSceneEndClose(None, None)
    assert panel.parameters is not None and panel.parameters.device == DEVICES[0]  # a fresh parameter node


def test_the_infer_panels_widgets_give_the_prediction_options(wired, panels):
    """The Infer panel's parameter node has one field per prediction option, with the option's default;
    its device combo box and post-processing check box set the options every prediction it starts takes."""
    import WeakSegInfer

    panel = panels("WeakSegInfer")
    panel.enter()
    assert WeakSegInfer.predictOptions(panel.parameters) == PredictOptions()
    panel.ui.deviceComboBox.setCurrentIndex(_choices(panel.ui.deviceComboBox).index("cpu"))
    panel.ui.postprocessCheckBox.setChecked(False)
    assert WeakSegInfer.predictOptions(panel.parameters) == PredictOptions(device="cpu", postprocess=False)


def test_a_scene_saved_with_a_choice_that_no_longer_exists_opens_with_the_default(wired, app, panels):
    """A scene saved by another WeakSeg version may hold a recipe since renamed: Slicer's combo-box
    connector would raise on it, so the panel resets such a value before connecting."""
    panel = panels("WeakSegTrain")
    panel.logic.getParameterNode().SetParameter("recipe", "tightness-prior-2019")
    panel.enter()
    assert panel.parameters.recipe == "auto" and panel.ui.recipeComboBox.currentText() == "auto"


def test_the_remembered_folder_stays_and_an_empty_folder_is_refused(wired, app, panels, spine_ct, tmp_path,
                                                                   monkeypatch):
    """The folders are ``str`` fields shown by PathFields: the folder the widget remembers (its settingKey)
    fills an empty field instead of being overwritten by "."; an empty folder stops training with a
    one-line error instead of writing into Slicer's working directory."""
    panel = panels("WeakSegTrain", {"WeakSegTrain/ModelFolder": [str(tmp_path / "remembered")]})
    panel.enter()
    assert panel.parameters.modelFolder == str(tmp_path / "remembered")
    assert panel.ui.outputModelPathLineEdit.currentPath == str(tmp_path / "remembered")
    panel.ui.outputModelPathLineEdit.setCurrentPath(str(tmp_path / "picked"))
    assert panel.parameters.modelFolder == str(tmp_path / "picked")
    panel.parameters.modelFolder = str(tmp_path / "scripted")  # a script or a loaded scene sets it
    assert panel.ui.outputModelPathLineEdit.currentPath == str(tmp_path / "scripted")

    panel = panels("WeakSegTrain")  # nothing remembered
    panel.logic.getParameterNode().SetParameter("modelFolder", "")
    panel.enter()
    assert panel.parameters.modelFolder == "" and panel.ui.outputModelPathLineEdit.currentPath == ""
    volume = _volume(wired, spine_ct)
    panel.parameters.inputVolume = volume
    panel.logic.showBoxes(boxes_from_mask(_mask(spine_ct), "3d"), volume)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="choose the output model folder first"):
        panel.logic.trainFromParameters(panel.parameters)
    assert not list(tmp_path.iterdir())


def _volume(wired, spine_ct):
    from WeakSegLib import mrml
    from WeakSegLib.io.volume import read_volume

    return mrml.add_volume_node(read_volume(spine_ct["image"]), "spine", scene=wired.scene)


def _mask(spine_ct):
    from WeakSegLib.io.volume import read_label_volume

    return (read_label_volume(spine_ct["mask"]).array > 0).astype(np.uint8)


def test_apply_follows_the_boxes_starts_training_and_cancel_never_blocks(wired, app, panels, spine_ct, tmp_path):
    """Apply is enabled by the boxes of the input volume (the box table fills from the scene's events);
    Apply starts training from the parameter node; Apply again asks the job to stop and returns at once
    ("Cancelling…", disabled); the timer's ticks end it as cancelled — under Slicer's launcher, whose
    child must stop too — with no error dialog."""
    panel = panels("WeakSegTrain", {"WeakSegTrain/ModelFolder": [str(tmp_path / "model")]})
    panel.logic.python = [sys.executable, str(REPO / "Testing" / "helpers" / "ctk_launcher.py")]
    panel.enter()
    volume = _volume(wired, spine_ct)
    panel.ui.inputVolumeSelector.setCurrentNode(volume)
    assert panel.parameters.inputVolume is volume
    panel.updateApply()
    assert not panel.ui.applyButton.isEnabled()
    panel.logic.showBoxes(boxes_from_mask(_mask(spine_ct), "3d"), volume)
    assert panel.ui.boxTable.rowCount() == 1 and panel.ui.applyButton.isEnabled()
    panel.parameters.epochs = 500
    panel.parameters.device = "cpu"
    panel.onApply()
    job = panel.watcher.job
    assert job is not None and panel.ui.applyButton.text() == "Cancel"
    deadline = time.monotonic() + 300
    while not any(e.get("event") == "epoch" for e in job.events):
        assert time.monotonic() < deadline and not job.done, job.handle.log()
        panel.watcher._tick()
        time.sleep(0.05)
    panel.onApply()  # cancel
    assert not job.done and panel.watcher.cancelling
    assert panel.ui.applyButton.text() == "Cancelling…" and not panel.ui.applyButton.isEnabled()
    while not job.done:
        assert time.monotonic() < deadline, job.handle.log()
        panel.watcher._tick()
        time.sleep(0.05)
    assert job.cancelled and app.errors == []
    assert "Cancelled" in panel.ui.logTextEdit.toPlainText()
    panel.updateApply()
    assert panel.ui.applyButton.text() == "Start training" and panel.ui.applyButton.isEnabled()


def test_the_case_table_and_previous_next_follow_the_case_list(wired, app, panels, cohort, tmp_path):
    folder = tmp_path / "cases"
    shutil.copytree(cohort, folder)
    panel = panels("WeakSegTrain")
    panel.enter()
    panel.updateCasesTable()
    assert panel.ui.casesTable.rowCount() == 0 and not panel.ui.nextCaseButton.isEnabled()
    panel.logic.openDataset(folder)
    panel.onLoadCase(panel.logic.nextCase)
    table = panel.ui.casesTable
    assert [[table.item(r, c).text() for c in range(4)] for r in range(table.rowCount())] == [
        ["bodies", str(panel.logic.cases()[0].boxes), "yes", "loaded"],
        ["spine", str(panel.logic.cases()[1].boxes), "yes", "boxed"],
        ["brain", "0", "yes", "no box: not trained on"]]
    assert panel.ui.casesSummaryLabel.text() == "2 of 3 cases boxed; training uses the boxed ones."
    assert panel.ui.nextCaseButton.isEnabled() and not panel.ui.previousCaseButton.isEnabled()
    assert panel.ui.inputVolumeSelector.currentNode().GetName() == "bodies"
    panel.ui.nextCaseButton.click()
    panel.ui.nextCaseButton.click()
    assert panel.ui.inputVolumeSelector.currentNode().GetName() == "brain"
    assert not panel.ui.nextCaseButton.isEnabled() and panel.ui.previousCaseButton.isEnabled()
    assert panel.ui.applyButton.isEnabled()  # a case list trains on its boxed cases
    panel.ui.previousCaseButton.click()
    assert table.item(1, 3).text() == "loaded"


def test_the_review_buttons_and_columns_follow_the_review_state(wired, app, panels, cohort, tmp_path):
    """Rank's scores and states show in the case table; Review next, Accept and Reject act through the
    Logic and are enabled only when they can act."""
    from WeakSegLib.io import review
    from WeakSegLib.io.dataset import load_dataset, save_dataset
    from WeakSegLib.io.volume import read_volume, write_volume

    folder = tmp_path / "cases"
    shutil.copytree(cohort, folder)
    (folder / "brain_mask.nii.gz").unlink()
    panel = panels("WeakSegTrain")
    panel.enter()
    panel.logic.openDataset(folder)
    image = read_volume(folder / "brain.nii.gz")
    write_volume(image.with_array((image.array > image.array.mean()).astype(np.uint8)), folder / "brain.pred.nii.gz")
    dataset = load_dataset(folder / "dataset.json")
    review.record_prediction(review.find_case(dataset, "brain"), folder / "brain.pred.nii.gz", 0.5)
    save_dataset(dataset, dataset.path)
    panel.logic.reloadCases()
    table = panel.ui.casesTable
    assert table.columnCount() == 5 and table.horizontalHeaderItem(4).text() == "Score"
    assert [table.item(2, c).text() for c in range(5)] == ["brain", "0", "no", "waiting for review", "0.50"]
    assert panel.ui.casesSummaryLabel.text() == ("2 of 3 cases boxed, 0 accepted, 1 waiting for review; training "
                                                 "uses the boxed and accepted ones.")
    buttons = {name: getattr(panel.ui, f"{name}Button") for name in ("reviewNext", "acceptCase", "rejectCase",
                                                                     "rankCases", "retrain")}
    assert [b.isEnabled() for b in buttons.values()] == [True, False, False, True, True]
    buttons["reviewNext"].click()
    assert panel.ui.inputVolumeSelector.currentNode().GetName() == "brain"
    assert panel.logic.session.prediction is not None and table.item(2, 3).text() == "loaded"
    assert [b.isEnabled() for b in buttons.values()] == [False, True, True, True, True]
    buttons["acceptCase"].click()
    assert review.find_case(load_dataset(folder / "dataset.json"), "brain").status == "accepted"
    assert "accepted" in panel.ui.casesSummaryLabel.text() and buttons["rejectCase"].isEnabled()
    buttons["rejectCase"].click()
    assert review.find_case(load_dataset(folder / "dataset.json"), "brain").status == "rejected"
    assert not buttons["rejectCase"].isEnabled() and not buttons["acceptCase"].isEnabled()
    with pytest.raises(InputError, match="choose the model folder first"):  # (Slicer shows it; tests re-raise)
        panel.onRankCases()
    assert not panel.watcher.running

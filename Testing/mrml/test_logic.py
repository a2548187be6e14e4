"""The modules' Logic classes on a real MRML scene, with real files and real worker processes."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import slicer

from WeakSegInfer import WeakSegInferLogic
from WeakSegLib import mrml
from WeakSegLib.config import PredictOptions
from WeakSegLib.engine.predict.inference import predict_file
from WeakSegLib.engine.samples.preprocess import AXIAL
from WeakSegLib.errors import InputError, ModelError, WeakSegError
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, load_boxes, save_boxes
from WeakSegLib.io.card import TightenerCard, read_card
from WeakSegLib.io.volume import read_label_volume
from WeakSegLib.mrml.tasks import JobFailed
from WeakSegTrain import VOLUME_ATTRIBUTE, WeakSegTrainLogic


def _load(scene, path, labelmap=False):
    """Read a file as Slicer does (archetype storage node)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    node.SetName(path.split("/")[-1].split(".")[0])
    return node


@pytest.fixture
def spine_nodes(wired, spine_ct):
    volume = _load(wired.scene, spine_ct["image"])
    labels = _load(wired.scene, spine_ct["mask"], labelmap=True)
    return volume, labels, mrml.volume_from_node(labels).array


def test_boxes_train_and_predict_from_nodes(wired, spine_ct, spine_nodes, tmp_path):
    volume, _, mask = spine_nodes
    train = WeakSegTrainLogic()
    axis = mrml.slice_axis(volume)
    boxes = boxes_from_mask(mask, "slice", axis)
    train.showBoxes(boxes, volume)
    assert len(train.boxNodes(volume)) == len(boxes)
    # The boxes the logic reads back from the ROI nodes are the boxes drawn, also through a box file.
    assert sorted(train.boxes(volume).boxset.boxes, key=str) == sorted(boxes, key=str)
    train.saveBoxes(volume, tmp_path / "boxes.json")
    assert sorted(load_boxes(tmp_path / "boxes.json").boxes, key=str) == sorted(boxes, key=str)

    job = train.train(volume, tmp_path / "model", config={"epochs": 2, "device": "cpu"}, referenceNode=spine_nodes[1],
                      curves=True)
    assert job.wait(timeout=300) == tmp_path / "model"
    assert job.status() == "finished" and job.progress() == 1.0
    card = read_card(tmp_path / "model")
    assert card.training["axis"] == AXIAL and card.training["epochs"] == 2  # the boxes' axis, reoriented
    rows = job.curves.rows()
    assert rows[:, 0].tolist() == [1.0, 2.0] and np.isfinite(rows[:, 1:]).all()  # loss and Dice each epoch

    infer = WeakSegInferLogic()
    assert "tightness+size+emptiness" in infer.modelSummary(tmp_path / "model")
    prediction = infer.predict(tmp_path / "model", volume)
    segmentation = prediction.wait(timeout=120)
    assert [e["event"] for e in prediction.events].count("predict") > 1  # per-batch progress events
    assert prediction.progress() == 1.0 and prediction.status() == "finished"
    segment = segmentation.GetSegmentation().GetNthSegment(0)
    assert segment.GetName() == card.labels[0].name
    np.testing.assert_allclose(segment.GetColor(), card.labels[0].color)
    # Reference: the same model run on the same file by the command-line path.
    predict_file(tmp_path / "model", spine_ct["image"], tmp_path / "reference.nii.gz", device="cpu")
    got, _ = mrml.labelmap_from_segmentation(segmentation, volume)
    np.testing.assert_array_equal(got, read_label_volume(tmp_path / "reference.nii.gz").array)
    # Predicting again into the same node replaces its content.
    assert infer.predict(tmp_path / "model", volume, segmentation, wait=True) is segmentation
    assert segmentation.GetSegmentation().GetNumberOfSegments() == len(card.labels)


def test_cancelled_training_resumes_from_its_checkpoint(wired, spine_nodes, tmp_path):
    volume, _, mask = spine_nodes
    train = WeakSegTrainLogic()
    train.showBoxes(boxes_from_mask(mask, "3d"), volume)
    job = train.train(volume, tmp_path / "model", config={"epochs": 500, "device": "cpu"})
    deadline = time.monotonic() + 300
    while not any(e.get("event") == "epoch" for e in job.events):
        assert time.monotonic() < deadline and not job.done, job.handle.log()
        job.poll()
        time.sleep(0.05)
    job.cancel()  # asks and returns: the job ends on a later poll
    with pytest.raises(JobFailed, match="cancelled"):
        job.wait(timeout=120)
    assert job.done and job.cancelled and "cancelled" in job.error
    epochs = max(e["epoch"] for e in job.events if e.get("event") == "epoch")
    again = train.train(volume, tmp_path / "model", config={"epochs": epochs + 1, "device": "cpu"})
    again.wait(timeout=300)
    assert next(e for e in again.events if e.get("event") == "start")["first_epoch"] == epochs + 1


def test_tightener_from_a_segmentation_then_tighten_a_3d_box(wired, spine_ct, spine_nodes, tmp_path):
    volume, labels, mask = spine_nodes
    segmentation = mrml.segmentation_from_labelmap(mask, volume, {1: {"name": "vertebrae", "color": [1, 1, 0]}})
    train = WeakSegTrainLogic()
    folder = train.trainTightener([(volume, segmentation)], tmp_path / "tightener",
                                  {"patch": 8, "epochs": 2, "device": "cpu", "axis": spine_ct["axis"]}, wait=True)
    assert "val_accuracy" in read_card(folder, TightenerCard).metrics
    (box3d,) = train.showBoxes(boxes_from_mask(mask, "3d", margin=2), volume)
    tightened = train.tightenBoxes(folder, volume, settings={"stride": 2}, wait=True)
    boxes = mrml.boxes_from_roi_nodes(tightened, volume).boxset.boxes
    assert boxes and all(b.kind == "slice" and b.axis == spine_ct["axis"] for b in boxes)
    assert not box3d.GetDisplayNode().GetVisibility()          # the 3D box is hidden ...
    assert box3d.GetAttribute(VOLUME_ATTRIBUTE) == ""          # ... and no longer one of the volume's boxes
    assert {n.GetID() for n in train.boxNodes(volume)} == {n.GetID() for n in tightened}
    # Every tightened slice box lies inside the 3D box it was cut from.
    outer = mrml.box_from_roi(box3d, volume)[0]
    assert all(np.all(np.array(b.start) >= outer.start) and np.all(np.array(b.stop) <= outer.stop) for b in boxes)


def test_logic_input_errors(wired, spine_nodes, tmp_path):
    volume, _, mask = spine_nodes
    train, infer = WeakSegTrainLogic(), WeakSegInferLogic()
    with pytest.raises(InputError, match="no usable box"):
        train.train(volume, tmp_path / "model")
    with pytest.raises(ModelError, match="model folder not found"):
        infer.predict(tmp_path / "nowhere", volume)
    with pytest.raises(ModelError):
        infer.modelSummary(tmp_path)
    train.showBoxes(boxes_from_mask(mask, "slice", mrml.slice_axis(volume)), volume)
    for bad, message in (({"epochs": 0}, "epochs"), ({"recipe": "magic"}, "unknown recipe"),
                         ({"learning_speed": 3}, "unknown settings: learning_speed")):
        with pytest.raises(InputError, match=message):  # checked before any file is written
            train.train(volume, tmp_path / "refused", config=bad)
    for bad, message in (({"epochs": 0}, "epochs"), ({"patch": 5}, "even number")):
        with pytest.raises(InputError, match=message):
            train.trainTightener([(volume, spine_nodes[1])], tmp_path / "refused", bad)
    assert not (tmp_path / "refused").exists()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "model.json").write_text(json.dumps({"format": "weakseg-tightener", "network": {},
                                                            "patch": {}, "input": {}}))
    with pytest.raises(WeakSegError, match="3D box"):
        train.tightenBoxes(tmp_path / "t", volume)
    with pytest.raises(WeakSegError, match="at least one"):
        train.trainTightener([], tmp_path / "t2")
    geometry = mrml.volume_from_node(volume).geometry()
    geometry["spacing"] = [9.0, 9.0, 9.0]  # boxes drawn on another grid of the same shape
    save_boxes(BoxSet(boxes_from_mask(mask, "3d"), mask.shape, geometry=geometry), tmp_path / "other.json")
    with pytest.raises(InputError, match="spacing"):
        train.loadBoxes(volume, tmp_path / "other.json")


def test_boxes_are_saved_with_the_scene(wired, spine_nodes, tmp_path):
    """ROI boxes (with their kind, label and volume) survive a scene save and reload."""
    volume, _, mask = spine_nodes
    train = WeakSegTrainLogic()
    boxes = boxes_from_mask(mask, "slice", mrml.slice_axis(volume))[:5] + boxes_from_mask(mask, "3d")
    for node in train.showBoxes(boxes, volume):
        storage = wired.scene.AddNewNodeByClass("vtkMRMLMarkupsROIJsonStorageNode")
        storage.SetFileName(str(tmp_path / f"{node.GetID()}.mrk.json"))
        node.SetAndObserveStorageNodeID(storage.GetID())
        assert storage.WriteData(node)
    for storage in [volume.CreateDefaultStorageNode()]:
        wired.scene.AddNode(storage)
        storage.SetFileName(str(tmp_path / "volume.nrrd"))
        volume.SetAndObserveStorageNodeID(storage.GetID())
        assert storage.WriteData(volume)
    name = volume.GetName()
    wired.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert wired.scene.Commit()
    wired.scene.Clear(True)
    wired.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert wired.scene.Connect()
    reloaded = wired.scene.GetFirstNodeByName(name)
    assert sorted(train.boxes(reloaded).boxset.boxes, key=str) == sorted(boxes, key=str)


@pytest.mark.parametrize("module", ["WeakSegTrain", "WeakSegInfer"])
def test_module_self_tests_run(wired, module):
    """The ScriptedLoadableModuleTest classes (run by ctest inside Slicer) also run here on slicer-core."""
    import importlib

    test = getattr(importlib.import_module(module), f"{module}Test")()
    test.runTest()
    assert wired.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


def test_a_new_box_is_a_box_of_its_volume_when_the_scene_announces_it(wired, spine_nodes):
    """The panel refreshes its box table on the scene's node-added event: by then the ROI must already
    name its volume (and carry its kind and label), whether added, loaded or tightened."""
    import vtk

    volume = spine_nodes[0]
    seen = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def added(caller, event, node):
        if node.IsA("vtkMRMLMarkupsROINode"):
            seen.append((node.GetAttribute(VOLUME_ATTRIBUTE), node.GetAttribute(mrml.KIND_ATTRIBUTE)))

    tag = wired.scene.AddObserver(wired.scene.NodeAddedEvent, added)
    try:
        logic = WeakSegTrainLogic()
        logic.addBox(volume, kind="slice")
        logic.addBox(volume, kind="3d")
    finally:
        wired.scene.RemoveObserver(tag)
    assert seen == [(volume.GetID(), "slice"), (volume.GetID(), "3d")]


def test_jumping_to_a_box_uses_its_world_centre(wired, spine_nodes):
    volume = spine_nodes[0]
    logic = WeakSegTrainLogic()
    roi = logic.addBox(volume, kind="3d")
    local = [roi.GetCenter()[i] for i in range(3)]
    assert np.allclose(logic.boxCenter(roi), local)
    transform = wired.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = (10.0, -20.0, 30.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    roi.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(logic.boxCenter(roi), np.add(local, (10.0, -20.0, 30.0)))


def test_a_removed_volume_has_no_boxes_when_the_scene_announces_its_removal(wired, spine_nodes):
    """MRML detaches a node from its scene before telling the scene's observers it was removed
    (vtkMRMLScene::RemoveNode); the panel refreshes its box table from that event."""
    import vtk

    volume = spine_nodes[0]
    logic = WeakSegTrainLogic()
    logic.addBox(volume, kind="3d")
    seen = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def removed(caller, event, node):
        if node is volume:
            seen.append((node.GetScene(), logic.boxNodes(node), logic.canTrain(node)))

    tag = wired.scene.AddObserver(wired.scene.NodeRemovedEvent, removed)
    try:
        wired.scene.RemoveNode(volume)
    finally:
        wired.scene.RemoveObserver(tag)
    assert seen == [(None, [], False)]


TINY = {"epochs": 1, "epoch_batches": 1, "batch_size": 2, "channels": (4, 8), "device": "cpu"}


@pytest.fixture
def tiny_model(wired, spine_nodes, tmp_path):
    volume, _, mask = spine_nodes
    logic = WeakSegTrainLogic()
    logic.showBoxes(boxes_from_mask(mask, "3d"), volume)
    return logic.train(volume, tmp_path / "tiny", config=TINY, wait=True)


def test_closing_the_scene_cancels_a_prediction_and_detaches_a_training(wired, spine_nodes, tiny_model, tmp_path):
    """A job whose result goes into nodes must not fill the next scene (or tag ROIs with a dead volume's
    ID); a training, whose result is a folder, runs on to its model without touching the scene."""
    volume = spine_nodes[0]
    prediction = WeakSegInferLogic().predict(tiny_model, volume)
    training = WeakSegTrainLogic().train(volume, tmp_path / "again", config={**TINY, "epochs": 2}, curves=True)
    curves = training.curves
    wired.scene.Clear(False)
    assert prediction.detached and training.detached and not training.listeners
    with pytest.raises(JobFailed, match="cancelled"):
        prediction.wait(timeout=120)
    assert training.wait(timeout=300) == tmp_path / "again" and read_card(tmp_path / "again").training["epochs"] == 2
    assert wired.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert curves.rows().shape[0] == 0  # no epoch reached the closed scene's table


def test_an_error_while_reading_a_result_back_ends_the_job_with_it(wired, spine_nodes, tiny_model):
    """Only WeakSegError used to be caught: any other error escaped the timer's slot and the next tick took
    the job for done with result None."""
    job = WeakSegInferLogic().predict(tiny_model, spine_nodes[0]).then(lambda segmentation: segmentation.NoSuchCall())
    with pytest.raises(JobFailed, match="could not be read back: AttributeError"):
        job.wait(timeout=120)
    assert job.done and job.result is None and not job.cancelled and "Traceback" in job.error


def test_the_self_tests_install_nothing_and_skip_without_the_packages(wired, monkeypatch):
    """Slicer's factory runs the self-tests offline: without WeakSeg's packages they skip, saying which,
    and install nothing (neither pip_install nor pip_ensure is called)."""
    import importlib
    import types
    import unittest

    from WeakSegLib.app import dependencies

    installs = []
    monkeypatch.setattr(dependencies, "missing_requirements", lambda wanted: ["monai==1.6.1"])
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: installs.append(a), raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: True, raising=False)
    monkeypatch.setitem(sys.modules, "slicer.packaging",
                        types.SimpleNamespace(pip_ensure=lambda *a, **k: installs.append(a)))
    for module in ("WeakSegTrain", "WeakSegInfer"):
        test = getattr(importlib.import_module(module), f"{module}Test")()
        with pytest.raises(unittest.SkipTest, match="monai==1.6.1"):
            test.runTest()
    assert installs == []


def test_the_infer_panels_post_processing_switch_reaches_the_worker(wired, spine_nodes, tiny_model, tmp_path):
    """Predictions from the panels apply the card's post-processing unless the panel's switch is off: the
    worker job says which, for one volume and for a dataset."""
    infer = WeakSegInferLogic()
    for postprocess in (True, False):
        job = infer.predict(tiny_model, spine_nodes[0], options=PredictOptions(postprocess=postprocess))
        assert json.loads(job.handle.job_path.read_text())["postprocess"] is postprocess
        assert job.wait(timeout=120).GetSegmentation().GetNumberOfSegments() == 1

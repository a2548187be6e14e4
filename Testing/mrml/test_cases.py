"""The Train panel's case list and the Infer panel's dataset prediction, through the modules' Logic on a
real MRML scene, with real files and real worker processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import slicer

from WeakSegInfer import WeakSegInferLogic
from WeakSegLib import mrml
from WeakSegLib.config import PredictOptions
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import load_boxes
from WeakSegLib.io.card import read_card
from WeakSegLib.io.dataset import load_dataset
from WeakSegLib.io.volume import read_label_volume, read_volume
from WeakSegTrain import CASE_PARAMETER, DATASET_PARAMETER, WeakSegTrainLogic

SMALL = [8, 16, 32, 64, 128]


def box_count(path):
    return len(load_boxes(path).boxes)


def test_step_through_cases_box_as_you_go_and_get_everything_back_after_reloading_the_scene(wired, cohort,
                                                                                            tmp_path):
    folder = tmp_path / "cases"
    shutil.copytree(cohort, folder)
    logic = WeakSegTrainLogic()
    rows = logic.openDataset(folder)  # a folder: its dataset.json is written by `dataset init`'s rules
    assert [(r.name, r.boxes > 0, r.reference, r.split) for r in rows] == [
        ("bodies", True, True, "training"), ("spine", True, True, "training"), ("brain", False, True, "test")]
    assert (folder / "dataset.json").is_file()

    first = logic.nextCase()
    assert first.GetName() == "bodies" and logic.currentCase() == 0
    assert len(logic.session.box_nodes()) == rows[0].boxes
    selection = wired.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert selection.GetActiveVolumeID() == first.GetID()
    assert selection.GetActiveLabelVolumeID() == logic.session.reference.GetID()

    assert logic.nextCase().GetName() == "spine"
    assert not wired.scene.IsNodePresent(first), "the previous case's nodes are removed"
    brain = logic.nextCase()  # no box yet
    assert brain.GetName() == "brain" and not logic.session.box_nodes()
    assert [n.GetName() for n in wired.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")] == ["brain", "brain reference"]
    assert logic.nextCase() is None and logic.currentCase() == 2  # after the last: stays

    roi = logic.addBox(brain, kind="3d")  # saved as soon as it is added: the case becomes a training case
    assert box_count(folder / "brain.boxes.json") == 1
    case = {c.name: c for c in load_dataset(folder / "dataset.json").cases}["brain"]
    assert case.split == "training" and case.files["boxes"] == str(folder / "brain.boxes.json")
    before = load_boxes(folder / "brain.boxes.json").boxes[0]
    roi.SetSize(*[0.5 * s for s in roi.GetSize()])  # the user drags a handle …
    roi.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # … and lets go
    after = load_boxes(folder / "brain.boxes.json").boxes[0]
    assert all(b - a < d - c for a, b, c, d in zip(after.start, after.stop, before.start, before.stop))

    assert logic.previousCase().GetName() == "spine"
    assert logic.nextCase().GetName() == "brain"
    assert logic.boxes(logic.session.volume).boxset.boxes == [after]  # back from its file

    scene_file = tmp_path / "scene.mrml"
    wired.scene.SetURL(str(scene_file))
    assert wired.scene.Commit()
    logic.closeDataset()
    wired.scene.Clear(False)
    assert wired.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0
    wired.scene.SetURL(str(scene_file))
    assert wired.scene.Import()
    reloaded = WeakSegTrainLogic()
    parameters = reloaded.getParameterNode()
    assert parameters.GetParameter(DATASET_PARAMETER) == str(folder / "dataset.json")
    assert parameters.GetParameter(CASE_PARAMETER) == "brain"
    volume = reloaded.restore()
    assert volume.GetName() == "brain" and reloaded.currentCase() == 2
    assert reloaded.boxes(volume).boxset.boxes == [after] == load_boxes(folder / "brain.boxes.json").boxes
    assert [r.boxes for r in reloaded.cases()] == [rows[0].boxes, rows[1].boxes, 1]


def test_train_on_the_boxed_cases_predict_the_dataset_and_score_it_as_evaluate_does(wired, cohort, tmp_path):
    folder = tmp_path / "cases"
    shutil.copytree(cohort, folder)
    train = WeakSegTrainLogic()
    train.openDataset(folder)
    job = train.trainDataset(tmp_path / "model", config={"epochs": 1, "epoch_batches": 2, "device": "cpu",
                                                         "channels": SMALL})
    assert job.skipped == ["brain"]  # no box: left out
    assert job.wait(timeout=600) == tmp_path / "model"
    card = read_card(tmp_path / "model")
    assert card.training["dataset"]["cases"] == 2 and "dice" in card.history[-1]  # the masks: Dice per epoch

    infer = WeakSegInferLogic()
    result = infer.predictDataset(tmp_path / "model", folder / "dataset.json", tmp_path / "out", split=None,
                                  options=PredictOptions(device="cpu"), wait=True)
    assert sorted(result["predictions"]) == ["bodies", "brain", "spine"] and not result["failed"]
    for name in ("spine", "brain"):
        segmentation = infer.loadPrediction(result, name)
        image = read_volume(folder / f"{name}.nii.gz")
        volume = wired.scene.GetFirstNodeByName(name)
        seg = segmentation.GetSegmentation()
        names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
        assert names == [e.name for e in card.labels]
        np.testing.assert_allclose(seg.GetNthSegment(0).GetColor(), card.labels[0].color, atol=1e-6)
        labels, _ = mrml.labelmap_from_segmentation(segmentation, volume)
        written = read_label_volume(tmp_path / "out" / f"{name}.seg.nrrd")
        assert labels.shape == image.shape and written.geometry() == image.geometry()
        np.testing.assert_array_equal(labels, written.array)

    table = infer.scores(result)
    cli = {}
    for split in ("training", "test"):
        run = subprocess.run([sys.executable, "-m", "WeakSegLib", "evaluate", "--pred-dir", str(tmp_path / "out"),
                              "--dataset", str(folder / "dataset.json"), "--split", split, "--json", "-"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        cli.update({(row["case"], row["label"]): row for row in json.loads(run.stdout)["cases"]})
    assert {(row["case"], row["label"]): row for row in table} == cli and len(cli) == 3


def test_the_loaded_volumes_become_the_cases_of_a_folder_with_their_boxes(wired, cohort, tmp_path):
    logic = WeakSegTrainLogic()
    spine = mrml.add_volume_node(read_volume(cohort / "spine.nii.gz"), "spine")
    brain = mrml.add_volume_node(read_volume(cohort / "brain.nii.gz"), "brain")
    boxes = load_boxes(cohort / "spine.boxes.json")
    logic.showBoxes(boxes, spine)
    rows = logic.addLoadedVolumes(tmp_path / "new")
    assert [(r.name, r.boxes, r.split) for r in rows] == [("spine", len(boxes.boxes), "training"), ("brain", 0, "test")]
    new = tmp_path / "new"
    np.testing.assert_array_equal(read_volume(new / "spine.nrrd").array, read_volume(cohort / "spine.nii.gz").array)
    assert load_boxes(new / "spine.boxes.json").boxes == boxes.boxes
    assert load_dataset(new / "dataset.json").cases[0].files["boxes"] == str(new / "spine.boxes.json")
    written = (tmp_path / "new" / "brain.nrrd").stat().st_mtime_ns
    with pytest.raises(InputError, match="already has case"):  # the same volume again: refused, nothing written
        logic.addLoadedVolumes(tmp_path / "new", [brain])
    assert (tmp_path / "new" / "brain.nrrd").stat().st_mtime_ns == written


def test_a_node_name_or_a_dataset_case_name_never_leads_outside_the_folder(wired, cohort, tmp_path):
    """A Slicer node's name is free text ("2: CT/../chest"): it becomes a safe case name; a dataset file
    whose case name leads elsewhere is refused when opened, with a one-line error naming the case."""
    logic = WeakSegTrainLogic()
    spine = mrml.add_volume_node(read_volume(cohort / "spine.nii.gz"), "2: CT/../chest")
    rows = logic.addLoadedVolumes(tmp_path / "new", [spine])
    assert [r.name for r in rows] == ["2_ CT_.._chest"]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["2_ CT_.._chest.nrrd", "dataset.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    (tmp_path / "bad.json").write_text(json.dumps({"test": [{"name": "../../x", "image": str(cohort / "spine.nii.gz")}]}))
    with pytest.raises(InputError, match=r"test\[0\]: the case name '../../x' cannot be a file name"):
        logic.openDataset(tmp_path / "bad.json")


def test_a_case_left_without_boxes_is_saved_so_and_stays_a_normal_case(wired, cohort, tmp_path):
    """Deleting a case's last box used to raise "no usable box" on every save (next/previous, reopening,
    scene close) and was never written, so the box came back on reload. Now the case loses its box file,
    is no longer trained on, and every move works."""
    folder = tmp_path / "cases"
    shutil.copytree(cohort, folder)
    logic = WeakSegTrainLogic()
    logic.openDataset(folder)
    logic.nextCase()  # bodies, boxed
    nodes = logic.session.box_nodes()
    wired.scene.RemoveNode(nodes[0])  # one box deleted: the file says so at once
    assert box_count(folder / "bodies.boxes.json") == len(nodes) - 1
    for node in nodes[1:]:
        wired.scene.RemoveNode(node)  # the user deletes every box, one by one
    assert not (folder / "bodies.boxes.json").exists()
    case = {c.name: c for c in load_dataset(folder / "dataset.json").cases}["bodies"]
    assert "boxes" not in case.files and case.split == "test"
    assert [r.boxes for r in logic.cases()][0] == 0
    assert logic.nextCase().GetName() == "spine" and logic.previousCase().GetName() == "bodies"
    assert not logic.session.box_nodes()
    cases, skipped = logic.session.worklist.training_cases()
    assert skipped == ["bodies", "brain"] and len(cases) == 1
    logic.openDataset(folder)  # reopening saves the loaded (empty) case first
    assert {r.name: r.boxes for r in logic.cases()}["bodies"] == 0
    volume = logic.loadCase(logic.session.worklist.index("bodies"))
    wired.scene.Clear(False)  # closing the scene saves too
    logic.closeDataset()
    logic.openDataset(folder)
    volume = logic.loadCase(logic.session.worklist.index("bodies"))
    logic.addBox(volume, kind="3d")  # boxing it again makes it a training case again
    assert box_count(folder / "bodies.boxes.json") == 1
    assert {c.name: c for c in load_dataset(folder / "dataset.json").cases}["bodies"].split == "training"


def test_rank_review_an_edited_prediction_reject_another_and_retrain_on_boxes_and_accepted_masks(wired, cohort,
                                                                                                   tmp_path):
    """The review loop through the Train module's Logic: a model trained on the boxed cases ranks the
    unlabelled ones (a real worker), the most uncertain is loaded with its prediction as a segmentation,
    the user's edit of it is accepted as the case's mask, another is rejected, and retraining takes the
    boxed cases and the accepted mask together."""
    folder = tmp_path / "cases"
    shutil.copytree(cohort, folder)
    (folder / "brain_mask.nii.gz").unlink()  # unlabelled: brain, and a second spine scan
    shutil.copy(folder / "spine.nii.gz", folder / "other.nii.gz")
    logic = WeakSegTrainLogic()
    logic.openDataset(folder)
    config = {"epochs": 1, "epoch_batches": 2, "device": "cpu", "channels": SMALL}
    assert logic.trainDataset(tmp_path / "model", config=config).wait(timeout=600) == tmp_path / "model"
    told = []
    logic.caseListeners.append(lambda *args: told.append(args))
    result = logic.rankCases(tmp_path / "model", device="cpu", wait=True)
    assert sorted(name for name, _ in result["ranked"]) == ["brain", "other"] and told  # the table was told
    scores = {r.name: r.score for r in logic.cases() if r.status == "predicted"}
    assert set(scores) == {"brain", "other"} and (folder / "ranking.csv").is_file()
    table = logic.caseTable()
    assert table.canReview and not table.canAccept
    assert {row[0]: row[4] for row in table.rows}["brain"] == f"{scores['brain']:.2f}"

    segmentation = logic.reviewNext()
    first = max(scores, key=scores.get)
    assert logic.session.volume.GetName() == first and logic.caseTable().canAccept
    predicted = read_label_volume(folder / "predictions" / f"{first}.nii.gz").array
    labels, _ = mrml.labelmap_from_segmentation(segmentation, logic.session.volume)
    np.testing.assert_array_equal(labels > 0, predicted > 0)
    edited = predicted.copy()
    edited[: edited.shape[0] // 2] = 0  # the user erases the top half …
    edited[-3:, :4, :4] = 1  # … and paints a corner
    segment = segmentation.GetSegmentation().GetNthSegment(0)
    mrml.segmentation_from_labelmap(edited, logic.session.volume, {1: {"name": segment.GetName()}},
                                    segmentation_node=segmentation)
    path = logic.acceptCase(by="tester")
    np.testing.assert_array_equal(read_label_volume(path).array, edited)
    sidecar = json.loads((folder / f"{first}.accepted.json").read_text())
    assert sidecar["by"] == "tester" and sidecar["changed_voxels"] == int((edited != predicted).sum()) > 0
    assert {r.name: r.status for r in logic.cases()}[first] == "accepted"

    logic.reviewNext()
    second = ({"brain", "other"} - {first}).pop()
    assert logic.session.volume.GetName() == second
    logic.rejectCase()
    assert logic.session.prediction is None and wired.scene.GetFirstNodeByName(f"{second} prediction") is None
    assert {r.name: r.status for r in logic.cases()}[second] == "rejected" and logic.reviewNext() is None

    job = logic.trainDataset(tmp_path / "again", config=config)
    assert job.skipped == [second]
    assert job.wait(timeout=600) == tmp_path / "again"
    assert read_card(tmp_path / "again").training["dataset"]["supervision"] == {"boxes": 2, "mask": 1}

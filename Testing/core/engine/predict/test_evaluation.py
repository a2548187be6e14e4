"""The evaluation table of a test set against values worked out by hand."""

import csv
import io

import numpy as np
import pytest

from WeakSegLib.engine.predict.evaluation import Evaluation, Score, evaluate_cases, score_volumes
from WeakSegLib.io.volume import Volume, write_volume

SPACING = (2.0, 1.0, 0.5)  # x, y, z mm: one voxel is 1 mm³


def cube(lo_x, hi_x, value=1, shape=(10, 10, 10)):
    a = np.zeros(shape, np.uint8)
    a[2:7, 3:7, lo_x:hi_x] = value  # 5 × 4 × (hi − lo) voxels
    return a


@pytest.fixture
def folders(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()

    def case(name, p, r):
        if p is not None:
            write_volume(Volume(p, SPACING), pred / f"{name}.nii.gz")
        write_volume(Volume(r, SPACING), ref / f"{name}.nii.gz")
        return name, str(ref / f"{name}.nii.gz")

    one = np.zeros((10, 10, 10), np.uint8)
    one[5, 5, 1] = 1
    far = np.zeros((10, 10, 10), np.uint8)
    far[5, 5, 4] = 1
    cases = [case("shifted", cube(2, 7), cube(0, 5)),  # 100 voxels each, 60 shared
             case("grown", cube(0, 8), cube(0, 5)),  # 160 predicted, 100 reference, all shared
             case("points", one, far),  # one voxel each, 3 voxels (6 mm) apart
             case("absent", None, cube(0, 5))]
    write_volume(Volume(cube(0, 5), (1.0, 1.0, 1.0)), pred / "regrid.nii.gz")
    write_volume(Volume(cube(0, 5), SPACING), ref / "regrid.nii.gz")
    return pred, cases + [("regrid", str(ref / "regrid.nii.gz"))]


def test_per_case_scores_and_summary_equal_hand_computed_values(folders):
    pred, cases = folders
    result = evaluate_cases(pred, cases)
    rows = {s.case: s for s in result.scores}
    assert set(rows) == {"shifted", "grown", "points"}
    assert result.missing == ["absent"] and "regrid" in result.failed
    assert "spacing" in result.failed["regrid"]
    s, g, p = rows["shifted"], rows["grown"], rows["points"]
    assert (s.dice, s.iou) == pytest.approx((2 * 60 / 200, 60 / 140))
    assert (g.dice, g.iou) == pytest.approx((2 * 100 / 260, 100 / 160))
    assert (p.dice, p.iou, p.hd95) == (0.0, 0.0, pytest.approx(6.0))  # 3 voxels × 2 mm along x
    assert (s.volume_ml, s.reference_ml, s.volume_difference_ml, s.volume_difference_pct) == \
        pytest.approx((0.1, 0.1, 0.0, 0.0))
    assert (g.volume_difference_ml, g.volume_difference_pct) == pytest.approx((0.06, 60.0))
    dices = [0.6, 200 / 260, 0.0]
    summary = result.summary()[1]
    assert summary["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert summary["dice"]["sd"] == pytest.approx(np.std(dices, ddof=1)) and summary["dice"]["n"] == 3
    table = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert [(r["case"], r["note"]) for r in table][-2:] == [("absent", "no prediction"),
                                                             ("regrid", result.failed["regrid"])]
    assert float(table[0]["dice"]) == pytest.approx(0.6)


def test_each_label_is_scored_on_its_own_and_an_empty_prediction_has_no_hd95(tmp_path):
    ref = cube(0, 5) + cube(5, 10, value=2)
    pred = cube(0, 5)  # label 2 missed entirely
    write_volume(Volume(pred, SPACING), tmp_path / "a.nii.gz")
    write_volume(Volume(ref, SPACING), tmp_path / "a_ref.nii.gz")
    result = evaluate_cases(tmp_path, [("a", str(tmp_path / "a_ref.nii.gz"))])
    by_label = {s.label: s for s in result.scores}
    assert by_label[1].dice == 1.0 and by_label[1].hd95 == 0.0
    assert by_label[2].dice == 0.0 and by_label[2].hd95 is None and by_label[2].volume_difference_pct == -100.0
    assert result.summary()[2]["hd95"] == {"mean": None, "sd": None, "n": 0}
    only = evaluate_cases(tmp_path, [("a", str(tmp_path / "a_ref.nii.gz"))], labels=[2])
    assert [s.label for s in only.scores] == [2]
    unreadable = evaluate_cases(tmp_path, [("a", str(tmp_path / "missing.nii.gz"))])
    assert unreadable.scores == [] and "missing.nii.gz" in unreadable.failed["a"]


def test_a_label_only_in_the_prediction_is_scored_as_a_false_class(tmp_path):
    """A class the reference lacks but the prediction holds is a row of its own (Dice 0, no HD95, a volume
    against a reference of 0 mL), in the summary too — not dropped."""
    ref = cube(0, 5)
    pred = cube(0, 5) + cube(6, 9, value=3)  # label 3: a false class
    write_volume(Volume(pred, SPACING), tmp_path / "b.nii.gz")
    write_volume(Volume(ref, SPACING), tmp_path / "b_ref.nii.gz")
    result = evaluate_cases(tmp_path, [("b", str(tmp_path / "b_ref.nii.gz"))])
    by_label = {s.label: s for s in result.scores}
    assert set(by_label) == {1, 3} and set(result.summary()) == {1, 3}
    false = by_label[3]
    assert false.dice == 0.0 and false.hd95 is None and false.reference_ml == 0.0
    assert false.volume_ml == pytest.approx((pred == 3).sum() * np.prod(SPACING) / 1000)
    assert false.volume_difference_pct is None and by_label[1].dice == 1.0
    assert result.label_mismatches() == {"b": "label(s) [3] only in the prediction"}


def test_a_volume_without_background_scores_only_its_labels():
    full = Volume(np.ones((3, 4, 4), np.uint8))
    assert [s.label for s in score_volumes("c", full, full)] == [1]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_the_summary_sd_is_the_sample_sd_and_zero_for_one_case(n):
    scores = [Score(f"c{i}", 1, 0.5 + 0.1 * i, 0.4, None, 1.0, 1.0, 0.0, 0.0) for i in range(n)]
    dice_summary = Evaluation(scores).summary()[1]["dice"]
    values = [0.5 + 0.1 * i for i in range(n)]
    want = 0.0 if n == 1 else (sum((v - sum(values) / n) ** 2 for v in values) / (n - 1)) ** 0.5
    assert dice_summary["sd"] == pytest.approx(want) and dice_summary["n"] == n


def test_label_mismatches_are_found_per_case():
    """Case a holds label 1 in both volumes; case b's reference holds label 2 that its prediction lacks."""
    scores = [Score("a", 1, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0), Score("b", 1, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0),
              Score("b", 2, 0.0, 0.0, None, 0.0, 2.0, -2.0, -100.0)]
    assert Evaluation(scores).label_mismatches() == {"b": "label(s) [2] only in the reference"}

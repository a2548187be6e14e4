"""``weakseg rank``: the review score against slow references, and a ranking of real scan windows in
which an intensity-inverted scan (a case the model cannot read) comes first."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from WeakSegLib.app.cli import main
from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import input_probabilities, label_volume
from WeakSegLib.engine.predict.model import load_model
from WeakSegLib.engine.predict.ranking import Ranked, agreement, plausibility, rank_dataset, score_cases
from WeakSegLib.engine.train.training import train
from WeakSegLib.errors import InputError
from WeakSegLib.io.dataset import Dataset, DatasetCase, Review, load_dataset, save_dataset
from WeakSegLib.io.sample_data import crop_axial
from WeakSegLib.io.volume import read_label_volume, read_volume, write_volume

WINDOWS = ((0, 40), (20, 60), (33, 73))


def test_agreement_is_the_soft_dice_of_the_two_maps_voxel_by_voxel():
    gen = torch.Generator().manual_seed(0)
    p, q = torch.rand(2, 4, 5, 6, generator=gen), torch.rand(2, 4, 5, 6, generator=gen)
    q[1] = 0.0
    p[1] = 0.0
    for c, got in enumerate(agreement(p, q)):
        num = sum(float(p[c, i, j, k] * q[c, i, j, k]) for i in range(4) for j in range(5) for k in range(6))
        den = float(p[c].sum() + q[c].sum())
        assert got == pytest.approx(2 * num / den if den else 0.0, rel=1e-6)
    assert agreement(p[:1], p[:1])[0] < 1.0 and agreement(torch.ones(1, 3), torch.ones(1, 3))[0] == 1.0


def test_plausibility_compares_each_volume_with_the_class_median_and_the_score_combines_both():
    volumes = np.array([[10.0, 0.0], [20.0, 5.0], [40.0, 5.0], [0.0, 5.0]])
    got = plausibility(volumes)
    for i in range(4):
        for c in range(2):
            m = sorted(volumes[:, c])[1:3]
            median = (m[0] + m[1]) / 2
            v = volumes[i, c]
            assert got[i, c] == pytest.approx(0.0 if v == 0 or median == 0 else min(v / median, median / v))
    ranked = [Ranked(f"c{i}", "", [0.9, 0.5], list(v)) for i, v in enumerate(volumes)]
    score_cases(ranked)
    for r, v in zip(ranked, got):
        assert r.score == pytest.approx(1 - (0.9 * v[0] + 0.5 * v[1]) / 2)


@pytest.fixture(scope="module")
def windows(spine_ct, tmp_path_factory):
    """A model trained on the spine CT, and a dataset of three axial windows of the scan, the scan with
    its intensities inverted, an accepted, a rejected and a labelled case (not ranked)."""
    folder = tmp_path_factory.mktemp("rank")
    train([TrainCase(spine_ct["image"], mask=spine_ct["mask"])],
          TrainConfig(recipe="full", epochs=10, batch_size=8, channels=(8, 16, 32, 64, 128), device="cpu",
                      epoch_batches=4), folder / "model")
    image, mask = read_volume(spine_ct["image"]), read_label_volume(spine_ct["mask"])
    cases = []
    for i, (a, b) in enumerate(WINDOWS):
        write_volume(crop_axial(image, a, b), folder / f"w{i}.nii.gz")
        write_volume(crop_axial(mask, a, b), folder / f"w{i}_ref.nii.gz")
        cases.append(DatasetCase(f"w{i}", "test", str(folder / f"w{i}.nii.gz")))
    write_volume(image.with_array(image.array.max() + image.array.min() - image.array), folder / "inverted.nii.gz")
    cases.append(DatasetCase("inverted", "test", str(folder / "inverted.nii.gz")))
    cases += [DatasetCase("done", "training", spine_ct["image"], {"mask": spine_ct["mask"]}, Review("accepted")),
              DatasetCase("redo", "test", spine_ct["image"], {}, Review("rejected")),
              DatasetCase("known", "test", spine_ct["image"], {"mask": spine_ct["mask"]})]
    save_dataset(Dataset(folder / "dataset.json", cases), folder / "dataset.json")
    return folder


def test_rank_lists_every_unlabelled_case_once_by_score_with_the_inverted_scan_first(windows, tmp_path, capsys):
    dataset = save_dataset(load_dataset(windows / "dataset.json"), tmp_path / "dataset.json")
    assert main(["rank", "--model", str(windows / "model"), "--dataset", str(dataset), "--out",
                 str(tmp_path / "r.csv"), "--pred-dir", str(tmp_path / "p"), "--device", "cpu", "--quiet"]) == 0
    assert "4 cases ranked" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert sorted(r["case"] for r in rows) == ["inverted", "w0", "w1", "w2"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and rows[0]["case"] == "inverted"
    recorded = {c.name: c for c in load_dataset(dataset).cases}
    for row in rows:
        case = recorded[row["case"]]
        assert case.status == "predicted" and case.review.score == pytest.approx(float(row["score"]), abs=1e-4)
        assert case.review.prediction == row["prediction"] == str(tmp_path / "p" / f"{row['case']}.nii.gz")
        assert read_label_volume(row["prediction"]).shape == read_volume(case.image).shape
    assert {recorded[n].status for n in ("done", "redo", "known")} == {"accepted", "rejected", "labelled"}


def test_the_ranked_prediction_is_the_mean_of_the_plain_and_mirrored_probabilities(windows, tmp_path):
    dataset = load_dataset(windows / "dataset.json")
    ranked, failed = rank_dataset(windows / "model", dataset, tmp_path / "r.csv", tmp_path / "p", split="test",
                                  device="cpu")
    assert not failed and {r.name for r in ranked} == {"inverted", "w0", "w1", "w2"}
    network, card = load_model(windows / "model")
    volume = read_volume(windows / "w1.nii.gz")
    cpu = torch.device("cpu")
    plain = input_probabilities(network, card, volume, cpu)
    mirrored = input_probabilities(network, card, volume, cpu, mirror=True)
    w1 = next(r for r in ranked if r.name == "w1")
    assert np.array_equal(read_label_volume(w1.prediction).array, label_volume(card, (plain + mirrored) / 2))
    assert w1.agreement == pytest.approx(agreement(plain[1:], mirrored[1:]))
    assert not np.array_equal(label_volume(card, plain), label_volume(card, mirrored))  # the mirror adds something


def test_an_unreadable_case_is_reported_and_the_others_ranked(windows, tmp_path):
    dataset = load_dataset(windows / "dataset.json")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    dataset.cases.append(DatasetCase("broken", "test", str(tmp_path / "broken.nii.gz")))
    save_dataset(dataset, tmp_path / "dataset.json")
    ranked, failed = rank_dataset(windows / "model", load_dataset(tmp_path / "dataset.json"), tmp_path / "r.csv",
                                  tmp_path / "p", device="cpu")
    assert [name for name, _ in failed] == ["broken"] and len(ranked) == 4
    assert load_dataset(tmp_path / "dataset.json").cases[-1].status == "new"


def test_nothing_to_rank_is_one_line_and_writes_nothing(windows, tmp_path):
    dataset = load_dataset(windows / "dataset.json")
    with pytest.raises(InputError, match="no case to rank"):
        rank_dataset(windows / "model", Dataset(dataset.path, [c for c in dataset.cases if c.name[0] not in "wi"]),
                     tmp_path / "r.csv", tmp_path / "p")
    assert not list(tmp_path.iterdir())

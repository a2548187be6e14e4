"""The canonical space as cards record it (WeakSegLib/io/canonical.py): one intensity mapping type from
the cohort to prediction, the plan stored once, and the cards written before it (stored in
Testing/data/cards) read as plans."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from WeakSegLib.config import TightenerConfig
from WeakSegLib.engine.predict.inference import _class_probabilities, predict_volume
from WeakSegLib.engine.predict.model import build_from_card
from WeakSegLib.errors import InputError, ModelError
from WeakSegLib.io.canonical import RAS, STORED, IntensityMapping, Plan
from WeakSegLib.io.card import WEIGHTS, read_card
from WeakSegLib.io.volume import Volume, intensity_map, normalize

CARDS = Path(__file__).resolve().parents[2] / "data" / "cards"


@pytest.mark.parametrize("normalization, modality, method", [
    ("auto", "ct", "ct"), ("auto", "mr", "percentile"), ("ct", "ct", "ct"), ("minmax", "ct", "minmax"),
    ("ct-window", "mr", "ct-window"), ("none", "mr", "none")])
def test_the_setting_and_the_modality_choose_the_mapping(normalization, modality, method):
    mapping = IntensityMapping.choose(normalization, modality, (1.0, 99.0), (-200.0, 300.0))
    assert (mapping.method, mapping.cohort) == (method, method == "ct")
    assert (mapping.percentiles, mapping.window) == ((1.0, 99.0), (-200.0, 300.0))


def test_the_cohort_ct_mapping_on_an_mr_cohort_is_a_one_line_error():
    with pytest.raises(InputError, match="normalisation ct maps a CT cohort, but the first image reads as MR"):
        IntensityMapping.choose("ct", "mr")


@pytest.mark.parametrize("method", ["percentile", "minmax", "ct-window", "none"])
def test_a_per_image_mapping_is_normalize_with_its_settings(method):
    array = np.random.default_rng(0).normal(50, 30, (4, 9, 11)).astype(np.float32)
    mapping = IntensityMapping(method, (2.0, 98.0), (-20.0, 80.0))
    np.testing.assert_array_equal(mapping.apply(array), normalize(array, method, percentiles=(2.0, 98.0),
                                                                  window=(-20.0, 80.0)))
    assert IntensityMapping.of(TightenerConfig(normalization=method, percentiles=(2.0, 98.0),
                                               window=(-20.0, 80.0))) == mapping


def test_the_cohort_mapping_is_fitted_once_and_applied_to_every_image_alike():
    samples = [np.arange(100.0), np.arange(50.0, 250.0)]
    mapping = IntensityMapping("ct", (5.0, 95.0)).fitted(samples)
    values = np.concatenate(samples)
    lo, hi = np.percentile(values, (5.0, 95.0))
    assert mapping.clip == pytest.approx((lo, hi))
    assert (mapping.mean, mapping.std) == pytest.approx((np.clip(values, lo, hi).mean(), np.clip(values, lo, hi).std()))
    image = np.array([-1000.0, 0.0, 100.0, 5000.0], np.float32)
    want = ((np.clip(image, lo, hi) - mapping.mean) / mapping.std).astype(np.float32)
    np.testing.assert_allclose(mapping.apply(image), want, rtol=1e-6)
    np.testing.assert_array_equal(mapping.apply(image), mapping.apply(image.copy()))  # not the image's own
    with pytest.raises(ValueError, match="before it is fitted"):
        IntensityMapping("ct").apply(image)


@pytest.mark.parametrize("mapping", [IntensityMapping("ct", clip=(-100.0, 400.0), mean=50.0, std=80.0),
                                     IntensityMapping("minmax", (1.0, 99.0), (-50.0, 50.0))], ids=["ct", "minmax"])
def test_a_plan_survives_its_card(mapping):
    plan = Plan([0.7, 0.7, 2.0], "ct", mapping)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("name, modality, method", [("plan-and-copies", "mr", "percentile"),
                                                     ("plan-and-copies-ct", "ct", "ct")])
def test_a_card_of_the_previous_format_reads_its_plan_and_is_written_back_with_it_once(name, modality, method):
    """Written with the plan in ``input.preprocessing`` and its spacing and normalisation copied beside it
    (an MR model, and a CT model with its cohort mapping): the plan is read, and the card written again
    holds it once, exactly as stored."""
    stored = json.loads((CARDS / name / "model.json").read_text())
    card = read_card(CARDS / name)
    plan = card.input.preprocessing
    want = stored["input"]["preprocessing"]
    assert (plan.orientation, plan.spacing, plan.modality) == (RAS, want["spacing"], modality)
    assert plan.normalization.method == method and plan.normalization.cohort == (method == "ct")
    if method == "ct":
        assert (list(plan.normalization.clip), plan.normalization.mean, plan.normalization.std) == (
            want["normalization"]["clip"], want["normalization"]["mean"], want["normalization"]["std"])
    written = card.to_dict()["input"]
    assert written["preprocessing"] == stored["input"]["preprocessing"]
    assert "spacing" not in written and "normalization" not in written


@pytest.fixture
def model_before_plans(tmp_path):
    """The stored card of a model trained before plans, with weights drawn for its network."""
    folder = tmp_path / "model"
    shutil.copytree(CARDS / "before-plans", folder)
    card = read_card(folder)
    torch.manual_seed(0)
    network = build_from_card(card).eval()
    torch.save(network.state_dict(), folder / WEIGHTS)
    return folder, network, card


def test_a_card_written_before_plans_takes_images_as_they_are_stored(model_before_plans):
    """The card's spacing and normalisation become a plan that keeps each image's grid: the prediction is
    the network's on the image normalised by the card's method, slice by slice as it is stored — what
    such models were trained on — with no reorientation or resampling."""
    folder, network, card = model_before_plans
    plan = card.input.preprocessing
    assert (plan.orientation, plan.spacing, plan.keeps_grid) == (STORED, [0.8, 0.9, 2.5], True)
    assert plan.normalization.method == "minmax"
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # stored rotated: RAS would move the axes
    array = np.random.default_rng(1).normal(100, 20, (6, 40, 48)).astype(np.float32)
    volume = Volume(array, (0.8, 0.9, 2.5), (3.0, -4.0, 5.0), direction)
    labels, _ = predict_volume(folder, volume, device="cpu")
    normalised = intensity_map(array, "minmax").apply(array)
    with torch.no_grad():
        probs = _class_probabilities(network, card, normalised, torch.device("cpu"), lambda i, n: None, None)
    values = np.array([0] + [entry.value for entry in card.labels])
    np.testing.assert_array_equal(labels.array, values[probs.argmax(0).numpy()])
    assert labels.spacing == volume.spacing and labels.direction == volume.direction


def test_a_card_written_before_plans_warns_of_another_spacing(model_before_plans):
    folder = model_before_plans[0]
    array = np.random.default_rng(2).normal(100, 20, (4, 32, 32)).astype(np.float32)
    seen = []
    predict_volume(folder, Volume(array, (0.8, 0.9, 5.0)), device="cpu", on_event=seen.append)
    assert [e["message"] for e in seen if e["event"] == "warning"] == [
        "image spacing (0.8, 0.9, 5.0) mm differs from the training spacing (0.8, 0.9, 2.5) mm"]


def test_a_bad_stored_normalisation_is_a_card_error_naming_it(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(CARDS / "before-plans", folder)
    card = json.loads((folder / "model.json").read_text())
    card["input"]["normalization"]["method"] = "zscore"
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="normalization method 'zscore' is unknown"):
        read_card(folder)

"""Whole-volume prediction against a slow, obviously correct reference, with a fixed hand-made network.

A trained model hides the plumbing's mistakes (a wrong slice axis or context, a far-end pad filled with
the wrong value, probabilities of the wrong class, label values mapped off by one): the network learns
around them or the Dice barely moves. Here the network is a fixed random convolution, so every voxel's
prediction is known: the reference cuts each slice on its own, stacks its neighbours by hand (border
slices repeated), pads the far ends to a multiple of 16 with the volume's minimum, runs the network on
that slice alone, and maps the argmax to the card's label values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import plain_card

from WeakSegLib.engine.predict.inference import input_probabilities, predict_cases, predict_volume
from WeakSegLib.engine.predict.model import build_from_card, save_model
from WeakSegLib.io.volume import Volume, write_volume

SHAPE = (17, 13, 18)  # (z, y, x): one slice more than a prediction batch (16) along z, two along x


def probe(dims: int, context: int, classes: int, seed: int = 0) -> torch.nn.Module:
    """A fixed random 3×3(×3) convolution: its edge voxels see the padding, its classes the context."""
    torch.manual_seed(seed)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(context, classes, 3, padding=1)
    torch.nn.init.normal_(conv.weight, std=2.0)
    return conv.eval()


def volume() -> Volume:
    rng = np.random.default_rng(3)
    array = rng.normal(size=SHAPE).astype(np.float32)
    array[-1, -1, -1] = -9.0  # the minimum (the pad's fill) sits in the last batch of z and x slices
    return Volume(array, (0.8, 0.9, 2.5))


def reference_2d(network: torch.nn.Module, array: np.ndarray, axis: int, context: int) -> np.ndarray:
    """Class probabilities ``(classes, *array.shape)``, one slice at a time."""
    slices = np.moveaxis(array, axis, 0)
    n, half, fill = slices.shape[0], context // 2, float(array.min())
    out = []
    for k in range(n):
        stack = np.stack([slices[min(max(j, 0), n - 1)] for j in range(k - half, k + half + 1)])
        a, b = stack.shape[1:]
        padded = np.full((context, -(-a // 16) * 16, -(-b // 16) * 16), fill, np.float32)
        padded[:, :a, :b] = stack
        with torch.no_grad():
            p = torch.softmax(network(torch.from_numpy(padded)[None]), 1)[0, :, :a, :b]
        out.append(p.numpy())
    return np.moveaxis(np.stack(out, 1), 1, axis + 1)


@pytest.mark.parametrize("axis, context", [(0, 1), (0, 3), (1, 3), (2, 5)])
def test_slice_prediction_equals_the_slice_by_slice_reference(axis, context):
    values = [2, 7]
    network, image = probe(2, context, 3), volume()
    labels, prob = predict_volume((network, plain_card(2, axis, context, values)), image, device="cpu",
                                  probabilities=True)
    want = reference_2d(network, image.array, axis, context)
    assert labels.array.shape == SHAPE and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(labels.array, np.array([0, *values])[want.argmax(0)])
    assert set(np.unique(labels.array)) == {0, *values}  # every class occurs: a swapped value would show
    np.testing.assert_allclose(prob.array, 1.0 - want[0], atol=1e-5)
    assert (labels.spacing, labels.origin, labels.direction) == (image.spacing, image.origin, image.direction)


def test_label_values_above_255_are_written_as_uint16():
    network, image = probe(2, 1, 2), volume()
    labels, _ = predict_volume((network, plain_card(2, 0, 1, [300])), image, device="cpu")
    want = reference_2d(network, image.array, 0, 1).argmax(0)
    assert labels.array.dtype == np.uint16
    np.testing.assert_array_equal(labels.array, np.where(want == 1, 300, 0))


def test_3d_prediction_of_one_window_is_the_network_on_the_whole_volume():
    network, image = probe(3, 1, 3), volume()
    labels, prob = predict_volume((network, plain_card(3, 0, 1, [1, 2], patch=list(SHAPE))), image, device="cpu",
                                  probabilities=True)
    with torch.no_grad():
        want = torch.softmax(network(torch.from_numpy(image.array)[None, None]), 1)[0].numpy()
    np.testing.assert_array_equal(labels.array, want.argmax(0))
    np.testing.assert_allclose(prob.array, 1.0 - want[0], atol=1e-5)


def test_a_card_whose_context_differs_from_the_network_input_is_refused():
    card = plain_card(2, 0, 3, [1])
    card.network.in_channels = 1
    with pytest.raises(Exception, match="inconsistent"):
        predict_volume((probe(2, 3, 2), card), volume(), device="cpu")


@pytest.mark.parametrize("spacing, warned", [((0.8, 0.9, 2.5), False), ((0.8, 0.9, 5.0), True)])
def test_a_card_without_a_plan_warns_when_the_spacing_differs_from_training(spacing, warned):
    """A card written before the canonical space takes the image as it is: a scan of another voxel size
    is predicted, with a warning that names both spacings."""
    card = plain_card(2, 0, 1, [1], spacing=list(spacing))
    seen = []
    predict_volume((probe(2, 1, 2), card), volume(), device="cpu", on_event=seen.append)
    warnings = [e["message"] for e in seen if e["event"] == "warning"]
    assert (warnings != []) == warned
    if warned:
        assert "(0.8, 0.9, 2.5) mm differs from the training spacing (0.8, 0.9, 5.0) mm" in warnings[0]


def test_a_dataset_prediction_reports_each_case_in_order_as_done_of_all(tmp_path):
    """``case`` events count 1..n of n, the failed case too, with its error; the others are written."""
    card = plain_card(2, 0, 1, [1], network="unet", spacing=[0.8, 0.9, 2.5])
    save_model(tmp_path / "m", build_from_card(card), card)
    write_volume(volume(), tmp_path / "a.nrrd")
    (tmp_path / "broken.nrrd").write_text("not an image")
    seen = []
    cases = [("a", str(tmp_path / "a.nrrd")), ("b", str(tmp_path / "broken.nrrd")), ("c", str(tmp_path / "a.nrrd"))]
    results = predict_cases(tmp_path / "m", cases, tmp_path / "out", device="cpu", on_event=seen.append)
    done = [(e["done"], e["of"], e["name"], "error" in e) for e in seen if e["event"] == "case"]
    assert done == [(1, 3, "a", False), (2, 3, "b", True), (3, 3, "c", False)]
    assert [r.error is None for r in results] == [True, False, True] and (tmp_path / "out" / "c.nii.gz").is_file()


@pytest.mark.parametrize("axis, flipped", [(0, 2), (1, 2), (2, 1)])
def test_mirrored_prediction_is_the_reference_of_the_mirror_image_mirrored_back(axis, flipped):
    """Test-time mirroring (ranking) flips an axis in the slices' plane: x, or y for slices along x."""
    network, image = probe(2, 3, 3), volume()
    got = input_probabilities(network, plain_card(2, axis, 3, [1, 2]), image, torch.device("cpu"), mirror=True)
    want = np.flip(reference_2d(network, np.flip(image.array, flipped).copy(), axis, 3), flipped + 1)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    plain = input_probabilities(network, plain_card(2, axis, 3, [1, 2]), image, torch.device("cpu"))
    assert not np.allclose(plain.numpy(), want, atol=1e-3)  # the probe is not symmetric: mirroring shows

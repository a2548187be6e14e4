"""Recipes ``size``, ``partial-ce``, ``sccl`` and ``accl-*`` in the one training loop: what each trains
on, bit-exact resume (discriminator included), and bad input."""

import numpy as np
import pytest
import torch
from configs import quick

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import predict_volume
from WeakSegLib.engine.predict.model import load_model, load_state
from WeakSegLib.engine.train.training import CHECKPOINT, train
from WeakSegLib.errors import InputError
from WeakSegLib.io.partial import partial_from_mask
from WeakSegLib.io.sizes import SizeSet, save_sizes, sizes_from_mask
from WeakSegLib.io.volume import read_label_volume, read_volume, write_volume


@pytest.fixture
def weak_case(synthetic_case, tmp_path):
    """The synthetic case with: a mask of 3 labelled slices, sizes on the other slices, partial labels,
    and reference masks on the image's grid and on another grid."""
    mask = read_label_volume(synthetic_case["mask"])
    few = np.zeros_like(mask.array)
    labelled = [8, 12, 16]
    few[labelled] = mask.array[labelled]
    write_volume(mask.with_array(few), tmp_path / "few.nrrd")
    others = [k for k in range(mask.shape[0]) if k not in labelled]
    save_sizes(SizeSet(sizes_from_mask(mask.array, 0, slices=others), mask.shape, 0, {1: "left", 2: "right"},
                       mask.geometry()), tmp_path / "sizes.json")
    partial, _ = partial_from_mask(mask.array, 0, erode=2, background_margin=4)
    write_volume(mask.with_array(partial), tmp_path / "partial.nrrd")
    return dict(synthetic_case, few=str(tmp_path / "few.nrrd"), sizes=str(tmp_path / "sizes.json"),
                partial=str(tmp_path / "partial.nrrd"), labelled=labelled)


def test_size_recipe_pretrains_on_mask_slices_then_adds_the_size_loss(weak_case, tmp_path):
    """Epoch 1 trains on the 3 mask slices alone; then the size loss joins and the batch-norm
    statistics stay those of pre-training while the weights move on."""
    events = []
    case = TrainCase(weak_case["image"], mask=weak_case["few"], sizes=weak_case["sizes"], eval_mask=weak_case["mask"])
    train([case], quick(recipe="size", epochs=1, pretrain_epochs=1), tmp_path / "m", on_event=events.append)
    pretrained = load_state(tmp_path / "m" / CHECKPOINT)["model"]
    card = train([case], quick(recipe="size", epochs=3, pretrain_epochs=1), tmp_path / "m", on_event=events.append)
    first, second, third = [e for e in events if e["event"] == "epoch"]
    assert "size" not in first and "ce" in first
    assert "size" in second and "size_error" in third and third["size_error"] >= 0
    final = load_state(tmp_path / "m" / CHECKPOINT)["model"]
    stats = [k for k in final if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in final if k.endswith("weight") and final[k].dim() == 4]
    assert stats and all(torch.equal(final[k], pretrained[k]) for k in stats)
    assert any(not torch.equal(final[k], pretrained[k]) for k in weights)
    assert card.recipe == "size"
    model = load_model(tmp_path / "m")
    labels, _ = predict_volume(model, read_volume(weak_case["image"]))
    assert labels.shape == read_volume(weak_case["image"]).shape


def test_size_recipe_resumes_bit_exactly(weak_case, tmp_path):
    case = [TrainCase(weak_case["image"], mask=weak_case["few"], sizes=weak_case["sizes"])]
    cfg = dict(recipe="size", network="enet", pretrain_epochs=1)
    train(case, quick(epochs=2, **cfg), tmp_path / "a")
    train(case, quick(epochs=1, **cfg), tmp_path / "b")
    train(case, quick(epochs=2, **cfg), tmp_path / "b")
    a, b = load_state(tmp_path / "a" / "model.pt"), load_state(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("recipe", ["partial-ce", "sccl", "accl-partial", "accl-unpaired", "accl-paired"])
def test_partial_label_recipes_train(recipe, weak_case, tmp_path):
    events = []
    case = TrainCase(weak_case["image"], partial=weak_case["partial"], reference=weak_case["mask"],
                     eval_mask=weak_case["mask"])
    card = train([case], quick(recipe=recipe), tmp_path / "m", on_event=events.append)
    epoch = [e for e in events if e["event"] == "epoch"][-1]
    assert "ce" in epoch and np.isfinite(epoch["loss"])
    if recipe == "sccl":
        assert "sccl" in epoch and len(card.training["sccl_bounds"]) == 2
    if recipe.startswith("accl"):
        assert {"adversarial", "discriminator"} <= set(epoch)
        ckpt = load_state(tmp_path / "m" / CHECKPOINT)
        assert "discriminator" in ckpt["hooks"] and "optimizer" in ckpt["hooks"]


def test_accl_resume_restores_the_discriminator_and_the_decaying_learning_rates(weak_case, tmp_path):
    """ACCL's schedule (docs/methods.md §4): Adam 2e-4, betas (0.5, 0.999), both learning rates decaying
    linearly over the second half; a run cancelled after its first epoch and resumed ends bit-exactly
    where an uninterrupted one does."""
    from WeakSegLib.errors import CancelledError

    case = [TrainCase(weak_case["image"], partial=weak_case["partial"], reference=weak_case["mask"])]
    cfg = quick(epochs=2, recipe="accl-unpaired", network="enet")
    events = []
    card = train(case, cfg, tmp_path / "a", on_event=events.append)
    assert [e["lr"] for e in events if e["event"] == "epoch"] == [2e-4, 1e-4]
    assert tuple(card.training["betas"]) == (0.5, 0.999)
    seen = []
    with pytest.raises(CancelledError):
        train(case, cfg, tmp_path / "b", on_event=seen.append, should_stop=lambda: any(e["event"] == "epoch" for e in seen))
    train(case, cfg, tmp_path / "b")
    a, b = load_state(tmp_path / "a" / CHECKPOINT), load_state(tmp_path / "b" / CHECKPOINT)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    da, db = a["hooks"]["discriminator"], b["hooks"]["discriminator"]
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [1e-4]
    assert [g["lr"] for g in a["hooks"]["optimizer"]["param_groups"]] == [pytest.approx(1e-4)]  # adv_lr 2e-4 × 0.5


def test_learning_rate_schedule_defaults_by_recipe():
    box = TrainConfig(epochs=4).resolved()
    assert (box.lr, box.betas, [box.lr_factor(e) for e in range(4)]) == (5e-4, (0.9, 0.99), [1.0] * 4)
    accl = TrainConfig(recipe="accl-partial", epochs=4).resolved()
    assert (accl.lr, accl.betas) == (2e-4, (0.5, 0.999))
    assert [accl.lr_factor(e) for e in range(4)] == pytest.approx([1, 1, 2 / 3, 1 / 3])
    mine = TrainConfig(recipe="accl-partial", epochs=4, lr=1e-3, decay_from=1.0).resolved()
    assert mine.lr == 1e-3 and [mine.lr_factor(e) for e in range(4)] == [1.0] * 4
    with pytest.raises(InputError, match="decay_from"):
        TrainConfig(decay_from=1.5).validate()


def test_barrier_t_grows_per_epoch_up_to_t_max():
    config = TrainConfig(t0=5.0, t_factor=2.0, t_max=30.0)
    assert [config.barrier_t(e) for e in range(5)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert TrainConfig().barrier_t(200) == 1000.0
    with pytest.raises(InputError, match="t_max"):
        TrainConfig(t0=5.0, t_max=1.0).validate()


def test_constraint_weights_default_by_recipe_and_yield_to_the_user():
    weights = {r: (c.tightness_weight, c.bounds_weight) for r in ("tightness+size+emptiness", "tightness+emptiness",
                                                                   "tightness+size+masked-ce")
               for c in [TrainConfig(recipe=r).settings()]}
    assert weights == {"tightness+size+emptiness": (1e-4, 1.0), "tightness+emptiness": (5e-3, 1.0),
                       "tightness+size+masked-ce": (1e-4, 1e-2)}
    mine = quick(recipe="tightness+emptiness", tightness_weight=1e-3, bounds_weight=0.5).resolved()
    assert (mine.recipe_settings["tightness_weight"], mine.recipe_settings["bounds_weight"]) == (1e-3, 0.5)
    assert (mine.settings().tightness_weight, mine.settings().band_width) == (1e-3, 5)
    with pytest.raises(InputError, match="bounds_weight"):
        quick(bounds_weight=-1.0).validate()


def test_sccl_with_explicit_bounds_needs_no_reference(weak_case, tmp_path):
    case = [TrainCase(weak_case["image"], partial=weak_case["partial"])]
    card = train(case, quick(recipe="sccl", sccl_bounds=[[10, 200], [5, 150]]), tmp_path / "m")
    assert card.training["sccl_bounds"] == card.training["recipe_settings"]["sccl_bounds"] == [[10, 200], [5, 150]]


@pytest.fixture
def other_grid(weak_case, tmp_path):
    """A label volume on another grid (different in-plane shape and spacing)."""
    from WeakSegLib.io.volume import Volume

    array = np.zeros((24, 50, 60), np.uint8)
    array[8:16, 10:30, 10:30] = 1
    path = tmp_path / "other.nrrd"
    write_volume(Volume(array, (0.7, 0.7, 1.0)), path)
    return str(path)


def test_bad_input_of_the_weak_recipes(weak_case, other_grid, tmp_path):
    img = weak_case["image"]
    cases_and_messages = [
        ("size", TrainCase(img, mask=weak_case["few"]), {}, "needs size labels"),
        ("size", TrainCase(img), {}, "give --sizes and/or --mask"),
        ("partial-ce", TrainCase(img, mask=weak_case["mask"]), {}, "give --partial"),
        ("partial-ce", TrainCase(img, partial=other_grid), {}, "partial labels .* not the same grid"),
        ("accl-paired", TrainCase(img, partial=weak_case["partial"], reference=other_grid), {}, "not the same grid"),
        ("accl-paired", TrainCase(img, partial=weak_case["partial"]), {}, "needs this image's true mask"),
        ("accl-unpaired", TrainCase(img, partial=weak_case["partial"]), {}, "needs reference masks"),
        ("accl-unpaired", TrainCase(img, partial=weak_case["partial"], reference=other_grid), {},
         "larger than the training slices"),
        ("sccl", TrainCase(img, partial=weak_case["partial"]), {}, "needs size bounds"),
        ("size", TrainCase(img, sizes=weak_case["sizes"]), {"spatial_dims": 3}, "2D or 2.5D"),
        ("size", TrainCase(img, sizes=weak_case["sizes"]), {"axis": 1}, "along axis 0, which is canonical axis 0, but training slices along axis 1"),
    ]
    for recipe, case, extra, message in cases_and_messages:
        with pytest.raises(InputError, match=message):
            train([case], quick(recipe=recipe, **extra), tmp_path / "m")


def test_size_file_of_another_grid_is_refused(weak_case, other_grid, tmp_path):
    other = read_label_volume(other_grid)
    save_sizes(SizeSet(sizes_from_mask(other.array, 0), other.shape, 0, {1: "x"}, other.geometry()),
               tmp_path / "other-sizes.json")
    with pytest.raises(InputError, match="mismatched image/size geometry"):
        train([TrainCase(weak_case["image"], sizes=str(tmp_path / "other-sizes.json"))], quick(recipe="size"),
              tmp_path / "m")


def test_samples_without_labels_are_not_visited(weak_case, tmp_path, monkeypatch):
    """partial-ce on a volume whose partial labels mark 3 slices: only those slices reach the loss
    (slices with nothing labelled would only move the batch-norm statistics); the size recipe visits
    the size slices after pre-training."""
    from WeakSegLib.engine.train.recipe import Recipe
    from WeakSegLib.io.labels import IGNORE
    from WeakSegLib.io.partial import PARTIAL_BACKGROUND

    seen = []
    loss = Recipe.loss

    def recording(self, logits, batch, t, weak):
        known = ((batch["labels"] != IGNORE) & batch["valid"]).flatten(1).any(1)
        seen.append((int(known.sum()), len(known), weak))
        return loss(self, logits, batch, t, weak)

    monkeypatch.setattr(Recipe, "loss", recording)
    mask = read_label_volume(weak_case["mask"])
    only = np.zeros(mask.shape, np.uint8)
    only[weak_case["labelled"]] = np.where(mask.array[weak_case["labelled"]] > 0, mask.array[weak_case["labelled"]],
                                           PARTIAL_BACKGROUND)
    write_volume(mask.with_array(only), tmp_path / "only.nrrd")
    train([TrainCase(weak_case["image"], partial=str(tmp_path / "only.nrrd"))], quick(recipe="partial-ce", epochs=2),
          tmp_path / "p")
    assert sum(n for _, n, _ in seen) == 2 * 3 and all(k == n for k, n, _ in seen)
    seen.clear()
    train([TrainCase(weak_case["image"], mask=weak_case["few"], sizes=weak_case["sizes"])],
          quick(recipe="size", epochs=2, pretrain_epochs=1, size_anchors=1), tmp_path / "s")
    pre = [s for s in seen if not s[2]]
    post = [s for s in seen if s[2]]
    assert all(k == n for k, n, _ in pre)
    assert sum(n - k for k, n, _ in post) > 0  # size slices (no labelled pixel) in the weak epoch
    labelled = sum(n for _, n, _ in pre)  # each labelled slice once per epoch, plus one anchor per batch
    assert sum(k for k, _, _ in post) == labelled + len(post)

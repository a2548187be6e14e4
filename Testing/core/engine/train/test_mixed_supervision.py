"""Mixed supervision: cases with a mask (an accepted review) train by cross-entropy beside the box cases
of a box recipe, in the same batches, from memory and from disk. (The loss of a mixed batch against the
reference losses: test_recipe_losses.py.)"""

import numpy as np
import pytest
import torch
from synthetic import oblique_volume, two_ellipsoids

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.samples.cohort import read_cohort
from WeakSegLib.engine.samples.data import SampleSet
from WeakSegLib.engine.samples.store import SliceStore, StoreBatches
from WeakSegLib.engine.train.training import train
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.volume import write_volume
from WeakSegLib.registry import box_recipes, recipe_spec

SMALL = (8, 16, 32, 64, 128)


@pytest.fixture
def mixed(tmp_path):
    """A boxed case (its mask only for the Dice per epoch) and a mask case of another size."""
    cases = []
    for name, shape, seed in (("boxed", (24, 40, 48), 0), ("masked", (20, 40, 48), 1)):
        image, mask = two_ellipsoids(shape, seed)
        write_volume(oblique_volume(image), tmp_path / f"{name}.nrrd")
        write_volume(oblique_volume(mask), tmp_path / f"{name}_mask.nrrd")
        cases.append((tmp_path / f"{name}.nrrd", tmp_path / f"{name}_mask.nrrd", mask))
    (image, mask_path, mask), (image2, mask2, _) = cases
    save_boxes(BoxSet(boxes_from_mask(mask, "slice", 0), mask.shape, {1: "left", 2: "right"},
                      oblique_volume(mask).geometry()), tmp_path / "boxes.json")
    return [TrainCase(str(image), boxes=str(tmp_path / "boxes.json"), eval_mask=str(mask_path)),
            TrainCase(str(image2), mask=str(mask2))]


def quick(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 8, "channels": SMALL, "device": "cpu", "epoch_batches": 2,
                          "spacing": (2.0, 2.0, 2.5), **kw})


def test_mask_case_samples_are_flagged_and_batches_from_disk_equal_batches_in_memory(mixed, tmp_path):
    config = quick().validate().resolved()
    memory = read_cohort(mixed, config, tmp_path / "a")
    disk = read_cohort(mixed, TrainConfig(**{**vars(config), "cache_gb": 0.0}), tmp_path / "b")
    samples = memory.samples
    assert isinstance(samples, SampleSet) and isinstance(disk.samples, SliceStore)
    assert memory.summary["supervision"] == {"boxes": 1, "mask": 1}
    assert torch.equal(samples.full, samples.case_index == 1)
    mask_rows = (samples.case_index == 1).nonzero()[:, 0]
    assert not (samples.boxes[:, 0, None] == mask_rows[None]).any()  # a mask case has no box
    has_object = ((samples.labels > 0) & (samples.labels != 255)).flatten(1).any(1)
    assert 0 < int((has_object & samples.full).sum()) < len(mask_rows)  # some of its slices are empty
    boxed = torch.zeros(len(samples), dtype=torch.bool)
    boxed[samples.boxes[:, 0]] = True
    assert torch.equal(samples.boxed(), boxed | (samples.full & has_object))
    assert torch.equal(disk.samples.boxed(), samples.boxed())
    last = len(samples) - 1
    plan = [torch.tensor([0, last, 5, last - 3, 12]), torch.tensor([last, 2, last])]
    for index, got in StoreBatches(disk.samples).epoch(plan):
        want = samples.batch(index)
        assert set(got) == set(want) and "full" in want
        for key in want:
            assert torch.equal(got[key], want[key]), key
    disk.samples.close()


def test_a_cohort_without_mask_cases_has_no_full_flag(mixed, tmp_path):
    cohort = read_cohort(mixed[:1], quick().validate().resolved(), tmp_path / "a")
    assert cohort.samples.full is None and "full" not in cohort.samples.batch(torch.tensor([0, 1]))
    assert cohort.summary["supervision"] == {"boxes": 1, "mask": 0}


@pytest.mark.parametrize("recipe", box_recipes())
def test_every_box_recipe_trains_on_boxes_and_masks_together(mixed, tmp_path, recipe):
    events = []
    card = train(mixed, quick(recipe=recipe), tmp_path / "m", on_event=events.append)
    assert card.training["dataset"]["supervision"] == {"boxes": 1, "mask": 1}
    epoch = next(e for e in events if e["event"] == "epoch")
    assert np.isfinite(epoch["loss"])
    label_map = recipe_spec(recipe).load().label_map
    assert ("mask-ce" in epoch) != label_map  # CE on the masks: its own term, or inside the recipe's CE
    if not label_map:
        assert epoch["mask-ce"] > 0


def test_a_3d_network_trains_on_boxes_and_masks_together(mixed, tmp_path):
    events = []
    train(mixed, quick(spatial_dims=3, batch_size=2, patch_size=(16, 32, 32)), tmp_path / "m", on_event=events.append)
    epoch = next(e for e in events if e["event"] == "epoch")
    assert epoch["mask-ce"] > 0 and np.isfinite(epoch["loss"])

"""The cohort pipeline: one canonical space (orientation, spacing, intensities), boxes carried exactly
through resampling, training from disk equal to training in memory, and prediction onto any grid."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from synthetic import oblique_volume, resampled, stored_flipped, two_ellipsoids

from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.inference import predict_volume
from WeakSegLib.engine.predict.metrics import dice
from WeakSegLib.engine.predict.model import load_model
from WeakSegLib.engine.samples.cohort import _estimate_bytes, _slice_boxes, as_trained, inputs_to_read, read_cohort
from WeakSegLib.engine.samples.data import SampleSet
from WeakSegLib.engine.samples.preprocess import AXIAL, canonical_spacing, canonicalize, target_spacing, to_input_grid
from WeakSegLib.engine.samples.store import SliceStore, StoreBatches
from WeakSegLib.engine.train.training import train
from WeakSegLib.errors import CancelledError, InputError
from WeakSegLib.io.boxes import Box, BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.canonical import IntensityMapping, Plan
from WeakSegLib.io.sizes import SizeLabel
from WeakSegLib.io.volume import Volume, read_label_volume, read_volume, write_volume
from WeakSegLib.registry import recipe_spec

SMALL = (8, 16, 32, 64, 128)


def scene():
    image, mask = two_ellipsoids()
    return oblique_volume(image), oblique_volume(mask)


def by_label(boxes):
    return sorted((b.label, b.start, b.stop) for b in boxes)


# ---- canonical space ------------------------------------------------------------------------------

def test_a_scan_stored_lps_and_the_same_scan_stored_ras_give_the_same_canonical_arrays_and_boxes():
    image, mask = scene()
    plan = Plan(None, "mr")
    runs = []
    for img, lab in ((image, mask), (stored_flipped(image), stored_flipped(mask))):
        assert not np.array_equal(img.array, image.array) or img is image
        boxes = boxes_from_mask(lab.array, "slice", 0)
        runs.append(canonicalize(img, plan, {"mask": lab.array}, boxes, normalize_image=False))
    a, b = runs
    np.testing.assert_array_equal(a.volume.array, b.volume.array)
    np.testing.assert_array_equal(a.labels["mask"], b.labels["mask"])
    np.testing.assert_allclose(a.volume.origin, b.volume.origin, atol=1e-6)
    np.testing.assert_allclose(a.volume.direction, b.volume.direction, atol=1e-9)
    assert by_label(a.boxes) == by_label(b.boxes)
    # RAS: the column index runs to the patient's right (ITK world x decreasing), rows to the front
    direction = np.asarray(a.volume.direction).reshape(3, 3)
    assert direction[0, 0] < 0 and direction[1, 1] < 0 and direction[2, 2] > 0
    assert a.axis_map == [0, 1, 2]


def test_median_spacing_is_the_default_target():
    vols = [Volume(np.zeros((2, 2, 2)), s) for s in ((0.8, 0.8, 3.0), (0.6, 0.7, 1.0), (1.0, 0.9, 5.0))]
    assert target_spacing(vols) == [0.8, 0.8, 3.0]


@pytest.mark.parametrize("spacing", [(0.5, 0.6, 1.25), (0.4, 0.45, 2.0)])
def test_boxes_after_resampling_equal_the_boxes_cut_from_the_resampled_mask(spacing):
    """Finer grid along every axis: identical boxes, 3D and per slice (the slice boxes drawn on array
    axis 0 are re-cut on the slices they cover now)."""
    image, mask = scene()
    plan = Plan(list(spacing), "mr")
    for kind in ("3d", "slice"):
        boxes = boxes_from_mask(mask.array, kind, 0)
        moved = canonicalize(image, plan, {"mask": mask.array}, boxes, normalize_image=False)
        axis = moved.axis_map[0]
        expected = boxes_from_mask(moved.labels["mask"], kind, axis)
        assert len(moved.boxes) == len(expected) > len(boxes) * (kind == "slice")
        assert by_label(moved.boxes) == by_label(expected)


def test_boxes_on_a_coarser_grid_hold_the_resampled_mask_and_exceed_it_by_at_most_one_voxel():
    """Coarser along an axis, nearest-neighbour sampling may skip an object's thin tip that its box
    still covers: the box then reaches one voxel past the resampled mask, never less than it."""
    image, mask = scene()
    moved = canonicalize(image, Plan([1.3, 0.5, 3.4], "mr"), {"mask": mask.array},
                         boxes_from_mask(mask.array, "3d"), normalize_image=False)
    expected = {b.label: b for b in boxes_from_mask(moved.labels["mask"], "3d")}
    for box in moved.boxes:
        ref = expected[box.label]
        inner = np.subtract(ref.start, box.start), np.subtract(box.stop, ref.stop)
        assert all(((d >= 0) & (d <= 1)).all() for d in inner), (box, ref)


def test_a_ct_cohort_is_scaled_by_one_mapping_whatever_lies_outside_the_field_of_view(tmp_path):
    """The same body, once with −3024 padding around its circular field of view: the cohort's CT
    mapping (from voxels inside the boxes) scales both alike; per-image percentiles do not."""
    z, y, x = np.mgrid[:12, :48, :48]
    body = (y - 24) ** 2 + (x - 24) ** 2 < 20 ** 2
    bone = (z > 2) & (z < 9) & ((y - 30) ** 2 + (x - 24) ** 2 < 5 ** 2)
    rng = np.random.default_rng(0)
    ct = np.where(body, 40.0, -1000.0) + np.where(bone, 660.0, 0.0) + rng.normal(0, 20, body.shape)
    padded = ct.copy()
    padded[(y - 24) ** 2 + (x - 24) ** 2 >= 23 ** 2] = -3024.0
    cases = []
    for name, array in (("plain", ct), ("padded", padded)):
        vol = Volume(array.astype(np.float32), (1.0, 1.0, 2.0))
        write_volume(vol, tmp_path / f"{name}.nii.gz")
        save_boxes(BoxSet(boxes_from_mask(bone.astype(np.uint8), "slice", 0), bone.shape, {1: "bone"}, vol.geometry()),
                   tmp_path / f"{name}.json")
        cases.append(TrainCase(str(tmp_path / f"{name}.nii.gz"), boxes=str(tmp_path / f"{name}.json")))
    canonical_body = canonicalize(Volume(ct.astype(np.float32), (1.0, 1.0, 2.0)), Plan(None, "ct"),
                                  {"body": body.astype(np.uint8)}).labels["body"]
    inside = torch.from_numpy(canonical_body[:, None] > 0)  # (z, 1, y, x) as the samples
    for normalization, same in (("auto", True), ("percentile", False)):
        cohort = read_cohort(cases, TrainConfig(normalization=normalization), tmp_path / "store")
        images = cohort.samples.images[:, :, :48, :48]
        plain, pad = images[:12], images[12:]
        assert torch.allclose(plain[inside], pad[inside], atol=1e-5) == same, normalization
    assert cohort.plan.modality == "ct"


# ---- training from disk -------------------------------------------------------------------------

@pytest.fixture
def boxed(tmp_path):
    image, mask = scene()
    write_volume(image, tmp_path / "img.nrrd")
    write_volume(mask, tmp_path / "mask.nrrd")
    save_boxes(BoxSet(boxes_from_mask(mask.array, "slice", 0), mask.shape, {1: "left", 2: "right"},
                      mask.geometry()), tmp_path / "boxes.json")
    return TrainCase(str(tmp_path / "img.nrrd"), boxes=str(tmp_path / "boxes.json"), eval_mask=str(tmp_path / "mask.nrrd"))


def quick(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "channels": SMALL, "device": "cpu", "epoch_batches": 3, **kw})


def test_each_box_and_size_file_is_read_once_for_both_passes(boxed, tmp_path, monkeypatch):
    """Pass 1 (label names) and pass 2 (the samples) see one reading of each annotation file."""
    from WeakSegLib.engine.samples import cohort
    from WeakSegLib.io.sizes import SizeSet, save_sizes, sizes_from_mask

    mask = read_label_volume(boxed.eval_mask)
    save_sizes(SizeSet(sizes_from_mask(mask.array, 0), mask.shape, 0, {1: "left", 2: "right"}, mask.geometry()),
               tmp_path / "sizes.json")
    reads = []
    for name in ("load_boxes", "load_sizes"):
        monkeypatch.setattr(cohort, name, lambda path, real=getattr(cohort, name): reads.append(str(path)) or real(path))
    read_cohort([boxed], TrainConfig(recipe="box-mask"), tmp_path / "store")
    sized = dataclasses.replace(boxed, boxes=None, sizes=str(tmp_path / "sizes.json"))
    read_cohort([sized], TrainConfig(recipe="size"), tmp_path / "store2")
    assert sorted(reads) == sorted([boxed.boxes, str(tmp_path / "sizes.json")])


@pytest.mark.parametrize("context", [1, 3])
def test_samples_on_disk_give_the_batches_of_the_samples_in_memory(boxed, tmp_path, context):
    config = quick(context=context).validate().resolved()
    memory = read_cohort([boxed], config, tmp_path / "a")
    disk = read_cohort([boxed], TrainConfig(**{**vars(config), "cache_gb": 0.0}), tmp_path / "b")
    assert isinstance(memory.samples, SampleSet) and isinstance(disk.samples, SliceStore)
    assert len(memory.samples) == len(disk.samples) == 24
    reader = StoreBatches(disk.samples, workers=1)
    plan = [torch.tensor([3, 0, 17, 9, 17]), torch.tensor([], dtype=torch.long), torch.tensor([23, 5, 5])]  # repeats: a boxed_fraction batch
    for index, got in reader.epoch(plan):
        if not len(index):
            assert got is None
            continue
        want = memory.samples.batch(index)
        assert set(got) == set(want)
        for key in want:
            assert torch.equal(got[key], want[key]), key
    disk.samples.close()
    assert not (tmp_path / "b").exists()


def test_training_from_disk_equals_training_in_memory(boxed, tmp_path):
    histories = {}
    for name, cache in (("memory", 2.0), ("disk", 0.0)):
        events = []
        train([boxed], quick(cache_gb=cache, workers=1), tmp_path / name, on_event=events.append)
        assert events[0]["dataset"]["in_memory"] == (name == "memory")
        histories[name] = [e for e in events if e["event"] == "epoch"]
    for a, b in zip(histories["memory"], histories["disk"]):
        for key in ("loss", "tightness", "emptiness", "size", "dice"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert not (tmp_path / "disk" / ".samples").exists()


def test_training_from_disk_cancelled_mid_epoch_resumes_to_the_uninterrupted_weights(boxed, tmp_path):
    config = {"cache_gb": 0.0, "workers": 1}
    train([boxed], quick(epochs=3, **config), tmp_path / "a")
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 5  # 3 batches per epoch: in the middle of epoch 2

    with pytest.raises(CancelledError, match="epoch 2"):
        train([boxed], quick(epochs=3, **config), tmp_path / "b", should_stop=stop)
    events = []
    train([boxed], quick(epochs=3, **config), tmp_path / "b", on_event=events.append)
    assert events[0]["first_epoch"] == 2
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


# ---- prediction on another grid ---------------------------------------------------------------------

def test_a_model_trained_at_one_spacing_predicts_a_scan_at_another_onto_its_exact_grid(tmp_path):
    """Trained at 1×1×2 mm on a 0.7×0.9×2.5 mm scan; the same anatomy at 0.55×0.6×1.6 mm, stored the
    other way round, comes back on its own grid, scored as well as the training scan itself, and agreeing
    with the training scan's prediction carried onto that grid."""
    image, mask = scene()
    write_volume(image, tmp_path / "img.nrrd")
    write_volume(mask, tmp_path / "mask.nrrd")
    card = train([TrainCase(str(tmp_path / "img.nrrd"), mask=str(tmp_path / "mask.nrrd"))],
                 quick(recipe="full", epochs=6, epoch_batches=12, spacing=[1.0, 1.0, 2.0]), tmp_path / "m")
    assert card.input.preprocessing.spacing == [1.0, 1.0, 2.0] and card.input.axis == AXIAL
    spacing = (0.55, 0.6, 1.6)
    other = stored_flipped(resampled(image, spacing))
    other_mask = stored_flipped(resampled(mask, spacing, labels=True))
    labels, prob = predict_volume(tmp_path / "m", other, device="cpu", probabilities=True)
    for got in (labels, prob):
        assert got.shape == other.shape and got.spacing == other.spacing
        np.testing.assert_allclose(got.origin, other.origin)
        np.testing.assert_allclose(got.direction, other.direction)
    assert prob.array.min() >= 0 and prob.array.max() <= 1
    native, _ = predict_volume(tmp_path / "m", image, device="cpu")
    carried = stored_flipped(resampled(native, spacing, labels=True))
    for value in (1, 2):
        on_native = dice(native.array == value, mask.array == value)
        assert on_native > 0.6, value  # the model has learnt something to carry
        assert dice(labels.array == value, other_mask.array == value) == pytest.approx(on_native, abs=0.05)
        assert dice(labels.array == value, carried.array == value) > 0.85


# ---- mixed precision -------------------------------------------------------------------------------

def test_mixed_precision_steps_train_and_differ_from_32_bit(boxed, tmp_path):
    """bf16 autocast and float16 with a gradient scaler run the same steps (here on the CPU, where
    ``auto`` stays 32-bit): finite losses near the 32-bit ones, other weights."""
    from WeakSegLib.engine.predict.devices import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None and autocast_dtype("16", torch.device("cpu")) == \
        torch.float16
    runs = {}
    for precision in ("32", "bf16", "16"):
        events = []
        train([boxed], quick(precision=precision), tmp_path / precision, on_event=events.append)
        runs[precision] = ([e["loss"] for e in events if e["event"] == "epoch"], load_model(tmp_path / precision)[0])
    full_loss, full_net = runs["32"]
    for precision in ("bf16", "16"):
        loss, net = runs[precision]
        assert np.isfinite(loss).all() and loss == pytest.approx(full_loss, rel=0.05)
        assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), full_net.state_dict().values()))


# ---- what the data path must keep exactly -----------------------------------------------------------

def test_the_ct_mapping_is_fitted_on_the_voxels_inside_the_boxes_and_masks(tmp_path):
    """Clip percentiles, mean and sd of the cohort's CT mapping come from the voxels inside the boxes (or
    masks) of all its cases — never from the whole image (air, table and padding would set them)."""
    z, y, x = np.mgrid[:10, :40, :40]
    rng = np.random.default_rng(1)
    cases, inside, everything = [], [], []
    for i, (centre, value) in enumerate(((14, 400.0), (24, 900.0))):
        bone = (z > 1) & (z < 8) & ((y - centre) ** 2 + (x - 20) ** 2 < 6 ** 2)
        ct = np.where(bone, value, -1000.0) + rng.normal(0, 30, bone.shape)
        vol = Volume(ct.astype(np.float32), (1.0, 1.0, 2.0))
        boxes = boxes_from_mask(bone.astype(np.uint8), "slice", 0)
        write_volume(vol, tmp_path / f"c{i}.nii.gz")
        save_boxes(BoxSet(boxes, bone.shape, {1: "bone"}, vol.geometry()), tmp_path / f"c{i}.json")
        cases.append(TrainCase(str(tmp_path / f"c{i}.nii.gz"), boxes=str(tmp_path / f"c{i}.json")))
        moved = canonicalize(vol, Plan(None, "ct"), boxes=boxes, normalize_image=False)
        in_box = np.zeros(moved.volume.shape, bool)
        for box in moved.boxes:
            in_box[box.slices()] = True
        inside.append(moved.volume.array[in_box])
        everything.append(moved.volume.array.ravel())
    values = np.concatenate(inside).astype(np.float64)
    lo, hi = np.percentile(values, (0.5, 99.5))
    clipped = np.clip(values, lo, hi)
    mapping = read_cohort(cases, TrainConfig(), tmp_path / "store").plan.normalization
    assert mapping.method == "ct"
    np.testing.assert_allclose([*mapping.clip, mapping.mean, mapping.std],
                               [lo, hi, clipped.mean(), clipped.std()], rtol=1e-6)
    whole = np.concatenate(everything).astype(np.float64)  # what a mapping over the whole images would see
    w_lo, w_hi = np.percentile(whole, (0.5, 99.5))
    assert abs(np.clip(whole, w_lo, w_hi).mean() - mapping.mean) > 100


def _boxes_one_at_a_time(image, plan, boxes):
    """The slow reference: each box moved into the canonical space on its own."""
    return [moved for box in boxes for moved in canonicalize(image, plan, boxes=[box], normalize_image=False).boxes]


@pytest.mark.parametrize("spacing", [None, [0.7, 0.8, 1.5]])
def test_overlapping_and_nested_boxes_survive_the_canonical_space_as_each_alone(spacing):
    """Adjacent vertebrae overlapping along z, a box inside another label's box, two labels' slice boxes
    crossing on one slice: moved together, every box is what it is when moved alone (painting them into
    one index map, where one overwrites another, would lose or shrink boxes)."""
    image, _ = scene()
    shape = image.shape
    boxes = [Box((2, 5, 5), (10, 20, 20), 1), Box((8, 6, 6), (16, 22, 21), 1),       # overlap along z
             Box((3, 10, 10), (6, 14, 14), 2), Box((1, 2, 2), (shape[0] - 1, 30, 30), 3),  # 2 inside 3
             Box((7, 4, 4), (8, 25, 18), 1, "slice", 0), Box((7, 12, 9), (8, 28, 30), 2, "slice", 0)]
    together = canonicalize(image, Plan(spacing, "mr"), boxes=boxes, normalize_image=False).boxes
    alone = _boxes_one_at_a_time(image, Plan(spacing, "mr"), boxes)
    assert sorted(together, key=str) == sorted(alone, key=str) and len(together) >= len(boxes)


def test_the_resampled_grid_has_the_plan_spacing_and_canonical_spacing_follows_the_axes():
    """The canonical volume's voxel size is the plan's, on an oblique and axis-permuted scan; and
    ``canonical_spacing`` reads a scan's spacing in RAS order whatever its storage order."""
    image, _ = scene()
    moved = canonicalize(image, Plan([0.9, 1.1, 2.3], "mr"), normalize_image=False).volume
    np.testing.assert_allclose(moved.spacing, (0.9, 1.1, 2.3), rtol=1e-6)
    permuted = Volume(np.zeros((4, 5, 6), np.float32), (0.5, 2.0, 3.0), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    # the direction's columns: index i runs along world y, j along z, k along x; so in world order
    # (x, y, z) the voxel size is (k's, i's, j's) = (3.0, 0.5, 2.0)
    np.testing.assert_allclose(canonical_spacing(permuted), (3.0, 0.5, 2.0))
    np.testing.assert_allclose(canonicalize(permuted, Plan(None, "mr"), normalize_image=False).volume.spacing,
                               (3.0, 0.5, 2.0), rtol=1e-6)


def test_predict_applies_the_ct_mapping_the_card_holds_not_one_of_the_image(spine_ct, tmp_path):
    """A CT model's card keeps the cohort's mapping (clip, mean, sd of Hounsfield units) and predict applies
    exactly it: 500 HU added to a scan changes what the network sees, so the labels change — a per-image
    normalisation would map both scans alike. Made slightly less extreme, the card's numbers reach the
    network: a card whose mean is moved predicts otherwise."""
    train([TrainCase(spine_ct["image"], mask=spine_ct["mask"])],
          quick(recipe="full", epochs=4, epoch_batches=4, channels=(4, 8, 16)), tmp_path / "m")
    plan = load_model(tmp_path / "m")[1].input.preprocessing
    assert plan.modality == "ct" and plan.normalization.method == "ct"
    image = read_volume(spine_ct["image"])
    labels = predict_volume(tmp_path / "m", image, device="cpu")[0].array
    shifted = predict_volume(tmp_path / "m", image.with_array(image.array + 500), device="cpu")[0].array
    assert (labels > 0).mean() > 0.01 and dice(labels > 0, shifted > 0) < 0.8
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    card["input"]["preprocessing"]["normalization"]["mean"] += 300
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    moved = predict_volume(tmp_path / "m", image, device="cpu")[0].array
    assert dice(labels > 0, moved > 0) < 0.9


def test_size_labels_move_to_the_nearest_old_slice_scaled_by_the_in_plane_spacing():
    """Each canonical slice takes the size of the old slice whose centre is nearest (found here through the
    two grids' world coordinates, one slice at a time) times old / new in-plane voxel size (mean of the two
    in-plane axes): 3 mm slices resampled to 2 mm, 0.5 × 0.7 mm pixels to 1.0 × 1.4 mm."""
    old = Volume(np.random.default_rng(0).normal(size=(6, 10, 12)).astype(np.float32), (0.5, 0.7, 3.0))
    sizes = [SizeLabel(k, 1, 10.0 + 3 * k) for k in range(6)]
    moved = canonicalize(old, Plan([1.0, 1.4, 2.0], "mr"), sizes=sizes, size_axis=0, normalize_image=False)
    new = moved.volume
    ratio = np.mean([0.5, 0.7]) / np.mean([1.0, 1.4])
    want = []
    for k in range(new.shape[0]):
        world = new.to_sitk().TransformIndexToPhysicalPoint((0, 0, k))
        nearest = int(np.floor(old.to_sitk().TransformPhysicalPointToContinuousIndex(world)[2] + 0.5))
        if 0 <= nearest < 6:
            want.append(SizeLabel(k, 1, (10.0 + 3 * nearest) * ratio))
    assert len(want) >= 8 and {s.slice for s in want} != set(range(6))  # more slices than before, remapped
    assert [(s.slice, s.label) for s in moved.sizes] == [(s.slice, s.label) for s in want]
    np.testing.assert_allclose([s.size for s in moved.sizes], [s.size for s in want], rtol=1e-6)


def test_a_ct_mapping_measured_on_one_intensity_keeps_the_differences():
    """Voxels inside the boxes all of one value (a sd of 0): the mapping only shifts, by that value."""
    mapping = IntensityMapping("ct").fitted([np.full(50, 40.0)])
    plan = Plan(None, "ct", mapping)
    np.testing.assert_allclose(plan.normalize(np.array([40.0, 41.0, 39.5], np.float32)), [0.0, 0.0, 0.0])
    widened = dataclasses.replace(mapping, clip=(0.0, 100.0))  # the clip widened by hand: the scale shows
    np.testing.assert_allclose(Plan(None, "ct", widened).normalize(np.array([40.0, 41.0, 39.5], np.float32)),
                               [0.0, 1.0, -0.5])


def test_a_target_voxel_outside_the_canonical_grid_is_background():
    """Probabilities going back onto an input grid larger than the canonical one: inside, each class keeps
    its value; beyond the canonical grid, the background class is 1 and every other class 0."""
    canonical = Volume(np.zeros((4, 4, 4), np.float32))
    probabilities = np.stack([np.full((4, 4, 4), p, np.float32) for p in (0.2, 0.5, 0.3)])
    target = Volume(np.zeros((4, 4, 14), np.float32), origin=(-5.0, 0.0, 0.0))  # x from −5 to 8 mm
    out = to_input_grid(probabilities, canonical, target)
    inside, outside = out[:, :, :, 5:9], np.concatenate([out[:, :, :, :3], out[:, :, :, 11:]], axis=3)
    for c, p in enumerate((0.2, 0.5, 0.3)):
        np.testing.assert_allclose(inside[c], p, rtol=1e-6)
        np.testing.assert_array_equal(outside[c], 1.0 if c == 0 else 0.0)


def _one_object_case(tmp_path, kind="slice"):
    """A 12 × 32 × 32 scan (slices need no padding) with one cube, its boxes (slice or one 3D box) and mask."""
    array = np.random.default_rng(1).normal(size=(12, 32, 32)).astype(np.float32)
    mask = np.zeros((12, 32, 32), np.uint8)
    mask[3:9, 8:20, 10:24] = 1
    image = Volume(array + 3 * mask, (0.8, 0.8, 2.0))
    write_volume(image, tmp_path / "img.nrrd")
    write_volume(image.with_array(mask), tmp_path / "mask.nrrd")
    save_boxes(BoxSet(boxes_from_mask(mask, kind, 0), mask.shape, {1: "cube"}, image.geometry()), tmp_path / "b.json")
    return tmp_path / "img.nrrd", tmp_path / "b.json", tmp_path / "mask.nrrd"


def test_a_box_recipe_reads_the_boxes_and_leaves_sizes_and_a_mask_given_beside_them():
    tc = TrainCase("img.nrrd", boxes="b.json", mask="m.nrrd", sizes="s.json")
    assert inputs_to_read(tc, recipe_spec("tightness+emptiness")) == (["boxes"], ["mask", "sizes"])
    # boxsup names masks among its inputs, but reads a case's mask only when the case gives no boxes
    assert inputs_to_read(tc, recipe_spec("boxsup")) == (["boxes"], ["mask", "sizes"])
    assert inputs_to_read(TrainCase("img.nrrd", mask="m.nrrd"), recipe_spec("boxsup")) == (["mask"], [])


def test_a_case_with_its_own_evaluation_mask_keeps_it_beside_an_unused_mask():
    """The mask a box recipe does not train on becomes the evaluation mask, unless the case names one."""
    spec = recipe_spec("tightness+emptiness")
    assert as_trained(TrainCase("i", boxes="b", mask="m"), spec) == TrainCase("i", boxes="b", eval_mask="m")
    own = TrainCase("i", boxes="b", mask="m", eval_mask="e")
    assert as_trained(own, spec) == own


@pytest.mark.parametrize("dims", [2, 3])
def test_3d_boxes_are_cut_into_slice_boxes_for_a_2d_network_and_kept_for_a_3d_one(dims):
    box = Box((3, 8, 10), (9, 20, 24), 1)
    got = _slice_boxes([box], quick(spatial_dims=dims), "case")
    want = [box] if dims == 3 else [Box((z, 8, 10), (z + 1, 20, 24), 1, "slice", 0) for z in range(3, 9)]
    assert got == want


def test_gmil_refuses_a_3d_box_and_takes_slice_boxes_on_a_2d_network(tmp_path):
    image, slices, _ = _one_object_case(tmp_path)
    config = quick(recipe="gmil").validate().resolved()
    assert len(read_cohort([TrainCase(str(image), boxes=str(slices))], config, tmp_path / "s").samples) == 12
    (tmp_path / "3d").mkdir()
    _, box3d, _ = _one_object_case(tmp_path / "3d", "3d")
    with pytest.raises(InputError, match="tight on every slice"):
        read_cohort([TrainCase(str(image), boxes=str(box3d))], config, tmp_path / "t")


@pytest.mark.parametrize("kind, given, want", [("slice", None, True), ("3d", None, False), ("slice", False, False),
                                               ("3d", True, True)])
def test_polar_mil_adds_the_crossing_lines_unless_told_only_when_every_box_was_drawn_on_a_slice(
        tmp_path, kind, given, want):
    """The crossing lines need tight boxes: on by default for slice boxes, off when a 3D box (loose slices)
    is given; a value the user gave stays. The card records what the run used."""
    image, boxes, _ = _one_object_case(tmp_path, kind)
    case = TrainCase(str(image), boxes=str(boxes))
    assert read_cohort([case], quick().validate().resolved(), tmp_path / "s").boxes_from_3d == (kind == "3d")
    settings = {} if given is None else {"polar_parallel": given}
    card = train([case], quick(recipe="polar-mil", epochs=1, epoch_batches=1, postprocess=False,
                               recipe_settings=settings), tmp_path / "m")
    assert card.training["recipe_settings"]["polar_parallel"] is want


@pytest.mark.parametrize("context", [1, 3])
def test_the_memory_estimate_is_the_bytes_the_samples_take(tmp_path, context):
    """One class, an evaluation mask, slices already a multiple of 16 at the plan's spacing: the estimate
    that decides memory or disk is exactly the bytes of the sample tensors."""
    image, boxes, mask = _one_object_case(tmp_path)
    config = quick(context=context).validate().resolved()
    samples = read_cohort([TrainCase(str(image), boxes=str(boxes), eval_mask=str(mask))], config, tmp_path / "s").samples
    actual = sum(t.numel() * t.element_size() for t in (samples.images, samples.labels, samples.box_mask,
                                                        samples.eval_labels, samples.valid))
    header = read_volume(image)
    assert _estimate_bytes([header], Plan(list(header.spacing), "mr"), context) == pytest.approx(actual)

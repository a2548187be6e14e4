"""DeepCut and BoxSup: the dense CRF and its process pool, BoxSup's candidates and choice, and both
as label revisions of the shared training loop (resume, semi-supervision, bad input)."""

from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest
import torch
from configs import SMALL, train_config

from WeakSegLib.config import TrainCase
from WeakSegLib.engine.predict.model import load_model
from WeakSegLib.engine.samples.data import Case, build_samples
from WeakSegLib.engine.samples.preprocess import canonicalize
from WeakSegLib.engine.train.training import CHECKPOINT, start_recipe, train
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.volume import normalize, read_label_volume, read_volume
from WeakSegLib.nets.segmentation import build_network
from WeakSegLib.recipes.crf import CRFPool, CRFSettings, refine_slice, to_crf_intensity
from WeakSegLib.recipes.proposals import box_fill, guard_boxes
from WeakSegLib.recipes.regions import BoxCandidates, ProposalSettings, box_candidates, choose, tight_box_iou


def rectangle_scene(h=36, w=58, seed=0):
    """A bright rectangle on a dark noisy slice, and box-like noisy probabilities around it."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), bool)
    truth[8:26, 15:44] = True
    image = np.clip(40 + 150 * truth + rng.normal(0, 8, (h, w)), 0, 255).astype(np.float32)
    p = np.full((h, w), 0.3)
    p[5:29, 11:48] = 0.65
    p = np.clip(p + rng.normal(0, 0.1, (h, w)), 0, 1).astype(np.float32)
    return image, np.stack([1 - p, p]), truth


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# ---- dense CRF ---------------------------------------------------------------------------------

def test_crf_snaps_noisy_box_probabilities_to_the_object():
    image, probs, truth = rectangle_scene()
    labels = refine_slice(image, probs)
    assert labels.shape == truth.shape and labels.dtype == np.uint8
    assert dice(probs.argmax(0) == 1, truth) < 0.8
    assert dice(labels == 1, truth) > 0.97


def test_crf_of_a_transposed_slice_is_the_transposed_crf():
    """Rows and columns keep their meaning on non-square slices (the seed's code scrambled them)."""
    image, probs, _ = rectangle_scene(31, 64, seed=3)
    a = refine_slice(image, probs)
    b = refine_slice(np.ascontiguousarray(image.T), np.ascontiguousarray(probs.transpose(0, 2, 1)))
    np.testing.assert_array_equal(a, b.T)


def test_crf_keeps_each_class_inside_its_allowed_region_and_zero_probability_is_finite():
    image, probs, truth = rectangle_scene()
    probs = np.zeros((3, *truth.shape), np.float32)
    probs[1] = 1.0  # the network says "class 1" everywhere, with p = 0 for the others
    allowed = np.ones((3, *truth.shape), bool)
    allowed[1] = False
    allowed[1, 10:20, 20:30] = True
    allowed[2] = False
    labels = refine_slice(image, probs, allowed)
    assert (labels[~allowed[1]] == 0).all() and (labels != 2).all()
    assert (labels[10:20, 20:30] == 1).mean() > 0.9


@pytest.mark.parametrize("bad, message", [
    (lambda im: np.asfortranarray(im), "C-contiguous"),
    (lambda im: im.T, "C-contiguous"),
    (lambda im: im.astype(np.float64), "float32"),
    (lambda im: im.astype(np.uint8), "float32"),
    (lambda im: im[None], "2D"),
])
def test_crf_refuses_images_it_would_misread(bad, message):
    image, probs, _ = rectangle_scene(40, 40)
    with pytest.raises(InputError, match=message):
        refine_slice(bad(image), probs)


def test_crf_refuses_mismatched_probabilities_and_nan():
    image, probs, _ = rectangle_scene()
    with pytest.raises(InputError, match="probabilities must be"):
        refine_slice(image, probs[:, :-1])
    nan = probs.copy()
    nan[0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        refine_slice(image, nan)
    with pytest.raises(InputError, match="allowed"):
        refine_slice(image, probs, np.ones((2, 3, 3), bool))


def test_pool_over_shared_memory_matches_the_slice_function_and_skips_unlisted_slices():
    rng = np.random.default_rng(1)
    n, H, W = 7, 48, 64
    images = rng.uniform(0, 255, (n, H, W)).astype(np.float32)
    probs = rng.dirichlet([1, 1, 1], (n, H, W)).transpose(0, 3, 1, 2).astype(np.float32)
    allowed = rng.random((n, 3, H, W)) < 0.8
    allowed[:, 0] = True
    extent = np.array([[48, 64], [30, 64], [48, 21], [17, 33], [48, 64], [40, 50], [12, 60]])
    for i in range(n):  # something to find: a bright block with high class-1 probability
        h, w = extent[i]
        images[i, h // 4:h // 2, w // 4:w // 2] = 250
    pick = [0, 1, 3, 5, 6]
    with CRFPool(images, 3, extent=extent, processes=2) as pool:
        names = [shm.name for shm in pool._shm]
        got, seconds = pool.refine(probs, allowed, pick)
        again, _ = pool.refine(probs, allowed, pick)
    assert seconds > 0
    np.testing.assert_array_equal(got, again)
    with CRFPool(images, 3, extent=extent, processes=1) as serial:
        np.testing.assert_array_equal(serial.refine(probs, allowed, pick)[0], got)
    for i in range(n):
        h, w = extent[i]
        expect = np.zeros((H, W), np.uint8)
        if i in pick:
            expect[:h, :w] = refine_slice(np.ascontiguousarray(images[i, :h, :w]), probs[i, :, :h, :w],
                                          allowed[i, :, :h, :w])
        np.testing.assert_array_equal(got[i], expect, err_msg=f"slice {i}")
    for name in names:  # freed
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)


def test_pool_refuses_probabilities_of_another_shape():
    with CRFPool(np.zeros((2, 8, 8), np.float32), 2, processes=1) as pool:
        with pytest.raises(InputError, match="must be"):
            pool.refine(np.zeros((2, 3, 8, 8), np.float32), np.ones((2, 3, 8, 8), bool), [0])
    with pytest.raises(InputError, match="extent"):
        CRFPool(np.zeros((2, 8, 8), np.float32), 2, extent=np.array([[9, 8], [8, 8]]), processes=1)


def test_crf_intensity_scale():
    x = np.linspace(-3, 3, 1001).astype(np.float32).reshape(1, 7, 143)
    y = to_crf_intensity(x, percentiles=(0, 100))
    assert y.dtype == np.float32 and y.flags.c_contiguous
    assert y.min() == 0 and y.max() == pytest.approx(255) and np.all(np.diff(y.ravel()) >= 0)


# ---- BoxSup candidates -------------------------------------------------------------------------

def test_tight_box_iou_matches_a_loop():
    rng = np.random.default_rng(0)
    masks = rng.random((40, 9, 13)) < rng.uniform(0, 0.05, (40, 1, 1))
    masks[0] = False
    for m, got in zip(masks, tight_box_iou(masks)):
        ys, xs = np.nonzero(m)
        expect = 0.0 if len(ys) == 0 else (np.ptp(ys) + 1) * (np.ptp(xs) + 1) / m.size
        assert got == pytest.approx(expect)


def candidates_with_costs(costs):
    n = len(costs)
    return BoxCandidates((0, 4, 0, 4), np.zeros((n, 4, 4), bool), np.asarray(costs, float))


def test_choice_draws_uniformly_among_the_k_cheapest_never_the_others():
    cand = candidates_with_costs([0.9, 0.1, 0.5, 0.3, 0.95, 0.2, 0.4, 0.8])
    rng = np.random.default_rng(0)
    picks = [choose(cand, None, rng, k=5)[0] for _ in range(2000)]
    cheapest = {1, 5, 3, 6, 2}
    assert set(picks) == cheapest
    counts = np.bincount(picks, minlength=8)[sorted(cheapest)]
    assert counts.min() > 300  # uniform: 400 expected each
    assert choose(cand, None, rng, k=1)[0] == 1


def test_choice_prefers_the_candidate_the_network_agrees_with():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 0:10, 0:10] = True
    masks[2, 4:6, 0:10] = True
    cand = BoxCandidates((0, 10, 0, 10), masks, np.zeros(3))
    pick, cost = choose(cand, masks[0].copy(), np.random.default_rng(0), k=1, weight=1.0)
    assert pick == 0 and cost == pytest.approx(0.0)


def test_candidates_on_real_slices_fit_the_object_better_than_the_box(tmp_path):
    from WeakSegLib.io.sample_data import materialize

    s = materialize("vertebral-body-ct", tmp_path)
    image = np.moveaxis(normalize(read_volume(s["image"]).array, "percentile"), s["axis"], 0)
    mask = read_label_volume(s["mask"]).array > 0
    slices = to_crf_intensity(image) / 255.0
    best, filled = [], []
    for box in boxes_from_mask(mask.astype(np.uint8), "slice", s["axis"])[::3]:
        k, (r0, r1, c0, c1) = box.slice_index, box.in_plane()
        cand = box_candidates(slices[k], (r0, r1, c0, c1))
        ref = np.moveaxis(mask, s["axis"], 0)[k, r0:r1, c0:c1]
        assert cand.masks.shape[1:] == ref.shape and not cand.fallback and cand.masks.any((1, 2)).all()
        best.append(((cand.masks & ref).sum((1, 2)) / (cand.masks | ref).sum((1, 2))).max())
        filled.append(ref.mean())
    assert np.mean(best) > np.mean(filled) + 0.05


def test_a_box_whose_proposals_cover_nothing_falls_back_to_the_filled_box():
    flat = np.full((40, 40), 0.5)
    only_felzenszwalb = ProposalSettings(slic_segments=())
    cand = box_candidates(flat, (10, 20, 12, 30), only_felzenszwalb)
    assert cand.fallback and cand.masks.shape == (1, 10, 18) and cand.masks.all()
    assert cand.overlap_cost[0] == pytest.approx(0.0)


@pytest.mark.parametrize("box", [(0, 50, 0, 10), (5, 5, 0, 10), (-1, 4, 0, 4), (0, 4, 30, 41)])
def test_boxes_empty_or_larger_than_the_slice_are_refused(box):
    with pytest.raises(InputError, match="larger than the slice|empty"):
        box_candidates(np.zeros((40, 40)), box)


# ---- as recipes of the training loop ------------------------------------------------------------

@pytest.fixture
def boxed(synthetic_case, tmp_path):
    mask = read_label_volume(synthetic_case["mask"])
    path = tmp_path / "boxes.json"
    boxes = [b for b in boxes_from_mask(mask.array, "slice", 0) if b.slice_index % 2 == 0]  # every other slice
    save_boxes(BoxSet(boxes, mask.shape, {1: "left", 2: "right"}, mask.geometry()), path)
    return dict(synthetic_case, boxes=str(path))


def quick(recipe: str, **kw):
    """Four epochs of three batches; DeepCut revises its labels every 2."""
    every = {"proposal_every": 2} if recipe == "deepcut" else {}
    return train_config(**{"recipe": recipe, "epochs": 4, "batch_size": 8, "channels": SMALL, "device": "cpu",
                           "epoch_batches": 3, **every, **kw})


@pytest.mark.parametrize("recipe", ["deepcut", "boxsup"])
def test_resumed_proposal_training_equals_an_uninterrupted_run(boxed, tmp_path, recipe):
    """The revised labels travel in the checkpoint; a revision due at the resumed epoch is redone."""
    cases = [TrainCase(boxed["image"], boxes=boxed["boxes"], eval_mask=boxed["mask"])]
    events = []
    steps = dict(epoch_batches=6)  # enough steps before the first revision for a non-empty network output
    train(cases, quick(recipe=recipe, **steps), tmp_path / "a", on_event=events.append)
    epochs = [e for e in events if e["event"] == "epoch"]
    if recipe == "deepcut":
        assert [e.get("proposal_update") for e in epochs] == [None, None, 1, None]
        assert epochs[2]["crf_seconds"] > 0 and 0 < epochs[2]["proposal_foreground"] <= 1
    else:
        assert all("proposal_cost" in e and e["fallback_boxes"] == 0 for e in epochs)
        assert events[0]["proposal_seconds"] > 0
    train(cases, quick(recipe=recipe, epochs=2, **steps), tmp_path / "b")
    train(cases, quick(recipe=recipe, **steps), tmp_path / "b")
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    ckpt_a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    ckpt_b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert torch.equal(ckpt_a["hooks"]["labels"], ckpt_b["hooks"]["labels"])


def revision_setup(boxed, recipe, **kw):
    config = quick(recipe=recipe, **kw)
    mask = read_label_volume(boxed["mask"]).array
    from WeakSegLib.io.boxes import load_boxes

    boxes = load_boxes(boxed["boxes"]).slice_boxes(0)
    image = normalize(read_volume(boxed["image"]).array, "percentile")
    samples = build_samples([Case(image, boxes, None, mask)], [1, 2])
    def fresh():  # an untrained network of the run
        return build_network("unet", 2, 1, 3, SMALL)

    torch.manual_seed(0)
    network = fresh()
    optimizer = torch.optim.Adam(network.parameters())
    return config, fresh, samples, network, optimizer


def test_deepcut_stops_revising_after_proposal_until(boxed):
    """With 4 epochs and proposal_until 0.25 no revision is due after epoch 1: the revision of
    epoch 2 is skipped and the labels stay the filled boxes."""
    config, fresh, samples, network, optimizer = revision_setup(boxed, "deepcut", proposal_until=0.25)
    filled = samples.labels.clone()
    hooks = start_recipe(config.resolved(), samples, network, optimizer, torch.device("cpu"), fresh).hooks()
    try:
        assert hooks.before_epoch(2) is None and torch.equal(samples.labels, filled)
    finally:
        hooks.close()
    with pytest.raises(InputError, match="proposal_until"):
        quick(recipe="deepcut", proposal_until=1.5).validate()


def test_deepcut_revision_keeps_labels_in_the_boxes_and_reinitialises_the_network(boxed):
    config, fresh, samples, network, optimizer = revision_setup(boxed, "deepcut")
    filled = samples.labels.clone()
    hooks = start_recipe(config.resolved(), samples, network, optimizer, torch.device("cpu"), fresh).hooks()
    try:
        assert hooks.before_epoch(1) is None and torch.equal(samples.labels, filled)
        network(torch.zeros(2, 1, 48, 48)).sum().backward()
        optimizer.step()
        info = hooks.before_epoch(2)
    finally:
        hooks.close()
    assert info["proposal_update"] == 1
    labels, box_mask = samples.labels, samples.box_mask
    for c in (1, 2):
        assert not ((labels == c) & (box_mask[:, c - 1] == 0)).any(), "a label escaped its box"
    assert not torch.equal(labels, filled)
    unboxed = samples.boxes[:, 0].unique()
    others = torch.ones(len(labels), dtype=torch.bool)
    others[unboxed] = False
    assert (labels[others] == 0).all()
    torch.manual_seed(config.seed + 1)
    again = fresh()
    for (name, x), y in zip(network.state_dict().items(), again.state_dict().values()):
        assert torch.equal(x, y), name
    assert len(optimizer.state) == 0


def test_boxsup_labels_come_from_candidates_and_masked_volumes_keep_their_mask(boxed, tmp_path):
    config, fresh, samples, network, optimizer = revision_setup(boxed, "boxsup")
    hooks = start_recipe(config.resolved(), samples, network, optimizer, torch.device("cpu"), fresh).hooks()
    hooks.before_epoch(0)
    for row, cand in zip(hooks.rows, hooks.candidates):
        n, c, y0, y1, x0, x1 = (int(v) for v in row)
        got = samples.labels[n, y0:y1, x0:x1].numpy() == c + 1
        assert any(np.array_equal(got, m) for m in cand.masks)
    # semi-supervised: a second volume given with its mask only
    cases = [TrainCase(boxed["image"], boxes=boxed["boxes"]), TrainCase(boxed["image"], mask=boxed["mask"])]
    events = []
    train(cases, quick(recipe="boxsup", epochs=1), tmp_path / "semi", on_event=events.append)
    assert events[0]["samples"] == 2 * read_volume(boxed["image"]).shape[0]
    ckpt = torch.load(tmp_path / "semi" / CHECKPOINT, weights_only=True)
    _, card = load_model(tmp_path / "semi")
    image = read_volume(boxed["image"])
    canonical = canonicalize(image, card.input.preprocessing,
                             {"mask": read_label_volume(boxed["mask"]).array}).labels["mask"]
    n = image.shape[0]
    mask = torch.from_numpy(canonical)
    assert torch.equal(ckpt["hooks"]["labels"][n:, :mask.shape[1], :mask.shape[2]], mask)


def test_proposal_recipes_refuse_3d_and_volumes_without_boxes(boxed, tmp_path):
    with pytest.raises(InputError, match="2D"):
        quick(recipe="deepcut", spatial_dims=3).validate()
    with pytest.raises(InputError, match="≥ 1"):
        quick(recipe="deepcut", proposal_every=0).validate()
    config, fresh, samples, network, optimizer = revision_setup(boxed, "boxsup")
    samples.boxes = samples.boxes[:0]
    with pytest.raises(InputError, match="needs at least one box"):
        start_recipe(config.resolved(), samples, network, optimizer, torch.device("cpu"), fresh).hooks()


def test_crf_parameters_default_to_deepcut():
    p = CRFSettings()
    assert (p.gauss_sxy, p.gauss_compat, p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat, p.iterations) == \
        (1.0, 3.0, 10.0, 20.0, 10.0, 5)


def test_crf_settings_can_be_overridden_and_unknown_ones_are_refused():
    params = quick(recipe="deepcut", crf={"bilateral_sxy": 5.0, "iterations": 3}).settings().crf_settings()
    assert (params.bilateral_sxy, params.iterations, params.bilateral_compat) == (5.0, 3, 10.0)
    with pytest.raises(InputError, match="unknown CRF setting.*sxy"):
        quick(recipe="deepcut", crf={"sxy": 1.0}).validate()


def test_box_fill_and_guard_match_a_loop_over_boxes():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (4, 20, 30)).astype(np.uint8)
    previous = rng.integers(0, 3, (4, 20, 30)).astype(np.uint8)
    rows = []
    for _ in range(25):  # random boxes, some at the border, some overlapping
        n, c = rng.integers(0, 4), rng.integers(0, 2)
        y0, x0 = rng.integers(0, 19), rng.integers(0, 29)
        rows.append([n, c, y0, rng.integers(y0 + 1, 21), x0, rng.integers(x0 + 1, 31)])
    rows = np.array(rows)
    expected = [float((labels[n, y0:y1, x0:x1] == c + 1).mean()) for n, c, y0, y1, x0, x1 in rows]
    np.testing.assert_allclose(box_fill(labels, rows), expected)
    guarded, kept = guard_boxes(previous, labels, rows, 0.35)
    slow = labels.copy()
    for (n, c, y0, y1, x0, x1), fill in zip(rows, expected):
        if fill < 0.35:
            slow[n, y0:y1, x0:x1] = previous[n, y0:y1, x0:x1]
    np.testing.assert_array_equal(guarded, slow)
    assert kept == sum(f < 0.35 for f in expected) > 0


def test_a_deepcut_revision_that_would_empty_the_boxes_keeps_their_labels(boxed):
    """An untrained network that says 'background' everywhere: the CRF empties every box, and the guard
    gives each box its filled labels back (without it the revision would wipe them)."""
    for min_fill, survives in ((0.3, True), (0.0, False)):
        config, fresh, samples, network, optimizer = revision_setup(boxed, "deepcut", proposal_min_fill=min_fill)
        filled = samples.labels.clone()
        ctx_hooks = start_recipe(config.resolved(), samples, network, optimizer, torch.device("cpu"), fresh).hooks()
        background = torch.zeros(len(samples), 3, *samples.labels.shape[1:])
        background[:, 0] = 1.0
        ctx_hooks.predict = lambda: background.numpy()
        try:
            info = ctx_hooks.before_epoch(2)
        finally:
            ctx_hooks.close()
        in_boxes = samples.box_mask.bool().any(1)
        if survives:
            assert info["boxes_kept"] == len(samples.boxes) and torch.equal(samples.labels, filled)
        else:
            assert info["boxes_kept"] == 0 and not (samples.labels[in_boxes] > 0).any()

"""Each registered recipe's total loss is the sum of its terms, each term computed by a slow reference."""

import pytest
import torch
from configs import train_config
from reference_losses import (
    ref_box_mask,
    ref_emptiness,
    ref_masked_ce,
    ref_mil_unary,
    ref_pairwise,
    ref_parallel_bags,
    ref_polar_bags,
    ref_size,
    ref_tightness,
)

from WeakSegLib.engine.samples.data import SampleSet
from WeakSegLib.engine.train.training import start_recipe
from WeakSegLib.io.labels import IGNORE
from WeakSegLib.losses.size import SizeLoss
from WeakSegLib.registry import recipe_names

B, C, H, W = 3, 2, 16, 20
T = 7.0


def batch_of(gen: torch.Generator) -> dict:
    """A random batch as ``SampleSet.batch`` gives it: boxes on images 0 and 2 only, padding on the
    right of the last columns, labels with unknown pixels, size labels on some (image, class) pairs."""
    boxes = torch.tensor([[0, 0, 2, 9, 3, 15], [0, 1, 8, 14, 1, 6], [2, 0, 0, 16, 5, 11], [2, 0, 4, 7, 4, 7]])
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[:, :, 17:] = False
    labels = torch.randint(0, C + 1, (B, H, W), generator=gen)
    labels[torch.rand(B, H, W, generator=gen) < 0.3] = IGNORE
    sizes = torch.tensor([[6.0, -1.0], [-1.0, -1.0], [4.0, 9.0]])
    return {"image": torch.randn(B, 1, H, W, generator=gen), "labels": labels, "boxes": boxes,
            "box_mask": ref_box_mask((B, C, H, W), boxes).to(torch.uint8), "valid": valid, "sizes": sizes}


def build(recipe: str, batch: dict, **settings):
    """The registered recipe on samples holding exactly this batch (its labels also as references)."""
    serial = {"processes": 1} if recipe == "deepcut" else {}
    config = train_config(recipe=recipe, **serial, **settings).validate().resolved()
    network = torch.nn.Conv2d(1, C + 1, 1)
    samples = SampleSet.of_batch({**batch, "reference": batch["labels"].to(torch.uint8)})
    return start_recipe(config, samples, network, torch.optim.Adam(network.parameters()), torch.device("cpu"))


def ref_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of −log softmax at the label over the labelled pixels, one pixel at a time."""
    log_p = torch.log_softmax(logits, 1)
    terms = [-log_p[b, int(labels[b, i, j]), i, j] for b in range(len(labels)) for i in range(H) for j in range(W)
             if int(labels[b, i, j]) != IGNORE]
    return torch.stack(terms).mean()


def ref_sccl(s: torch.Tensor, labels: torch.Tensor, bounds: torch.Tensor, weight: float) -> torch.Tensor:
    total = 0.0
    for b in range(B):
        for c in range(C):
            if (labels[b] == c + 1).any():
                size = s[b, c].sum()
                total = total + torch.relu(bounds[c, 0] - size) ** 2 + torch.relu(size - bounds[c, 1]) ** 2
    return weight * total / (B * H * W)


def ref_allowed(batch: dict) -> torch.Tensor:
    """Where the size loss may draw object pixels: valid pixels inside the class's boxes, or anywhere
    valid on an image without a box of the class."""
    out = torch.zeros(B, C, H, W, dtype=torch.bool)
    for b in range(B):
        for c in range(C):
            inside = batch["box_mask"][b, c] > 0
            out[b, c] = batch["valid"][b] & (inside if inside.any() else True)
    return out


BOX_RECIPES = {
    "tightness+size+emptiness": lambda s, bt: (ref_tightness(s, bt["boxes"], 5, 1e-4, T)
                                               + ref_size(s, bt["box_mask"].double(), T, 0.5, 0.9)
                                               + ref_emptiness(s, bt["box_mask"].double(), T)),
    "tightness+emptiness": lambda s, bt: (ref_tightness(s, bt["boxes"], 5, 5e-3, T)
                                          + ref_emptiness(s, bt["box_mask"].double(), T)),
    "tightness+size+masked-ce": lambda s, bt: (ref_tightness(s, bt["boxes"], 5, 1e-4, T)
                                               + 1e-2 * ref_size(s, bt["box_mask"].double(), T, 0.5, 0.9)
                                               + ref_masked_ce(s, bt["box_mask"].double())),
    "gmil": lambda s, bt: (ref_mil_unary(s, bt["boxes"], bt["box_mask"], bt["valid"],
                                         [(ref_parallel_bags(bt["boxes"], (-40, -20, 0, 20, 40)), 6.0)], "quasimax")
                           + 10 * ref_pairwise(s, bt["box_mask"])),
    "polar-mil": lambda s, bt: (ref_mil_unary(s, bt["boxes"], bt["box_mask"], bt["valid"],
                                              [(ref_polar_bags(s, bt["boxes"], 90, 30, 0.5, "estimated"), 1.0)],
                                              "quasimax")
                                + 10 * ref_pairwise(s, bt["box_mask"])),
}
CE_RECIPES = ("full", "box-mask", "deepcut", "boxsup", "partial-ce")
OTHER_RECIPES = ("size", "sccl", "accl-partial", "accl-unpaired", "accl-paired")


def test_every_registered_recipe_has_a_reference_here():
    assert set(recipe_names()) == set(BOX_RECIPES) | set(CE_RECIPES) | set(OTHER_RECIPES)


@pytest.mark.parametrize("recipe", sorted(BOX_RECIPES))
def test_box_recipe_total_is_the_sum_of_its_reference_terms(recipe):
    gen = torch.Generator().manual_seed(1)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64)
    total, parts = build(recipe, batch).loss(logits, batch, T, weak=False)
    want = BOX_RECIPES[recipe](torch.softmax(logits, 1)[:, 1:], batch)
    assert float(total) == pytest.approx(float(want), rel=1e-9)
    assert float(sum(parts.values())) == pytest.approx(float(want), rel=1e-9)


def test_polar_mil_with_polar_parallel_adds_the_crossing_lines():
    gen = torch.Generator().manual_seed(1)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64)
    total, _ = build("polar-mil", batch, polar_parallel=True, mil_angles=(0, 0, 0)).loss(logits, batch, T, weak=False)
    s = torch.softmax(logits, 1)[:, 1:]
    bags = [(ref_polar_bags(s, batch["boxes"], 90, 30, 0.5, "estimated"), 1.0),
            (ref_parallel_bags(batch["boxes"], (0.0,)), 6.0)]
    want = (ref_mil_unary(s, batch["boxes"], batch["box_mask"], batch["valid"], bags, "quasimax")
            + 10 * ref_pairwise(s, batch["box_mask"]))
    assert float(total) == pytest.approx(float(want), rel=1e-9)


def label_recipe_loss(recipe: str, batch: dict, logits: torch.Tensor) -> tuple:
    """The loss of a label-map recipe built on ``batch`` (its revision workers closed afterwards)."""
    recipe_ = build(recipe, batch)
    try:
        return recipe_.loss(logits, batch, T, weak=False)
    finally:
        if recipe_.hooks() is not None:
            recipe_.hooks().close()


@pytest.mark.parametrize("recipe", CE_RECIPES)
def test_label_recipe_total_is_the_reference_cross_entropy(recipe):
    gen = torch.Generator().manual_seed(2)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64)
    total, _ = label_recipe_loss(recipe, batch, logits)
    assert float(total) == pytest.approx(float(ref_ce(logits, batch["labels"])), rel=1e-9)


def test_sccl_total_is_cross_entropy_plus_the_reference_penalty():
    gen = torch.Generator().manual_seed(3)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64)
    bounds = [[20.0, 60.0], [5.0, 30.0]]
    total, _ = build("sccl", batch, sccl_weight=0.5, sccl_bounds=bounds).loss(logits, batch, T, weak=False)
    s = torch.softmax(logits, 1)[:, 1:]
    want = ref_ce(logits, batch["labels"]) + ref_sccl(s, batch["labels"], torch.tensor(bounds), 0.5)
    assert float(total) == pytest.approx(float(want), rel=1e-6)


def test_size_total_is_cross_entropy_plus_the_weighted_size_term_on_the_allowed_pixels():
    gen = torch.Generator().manual_seed(4)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen)
    recipe = build("size", batch, size_weight=0.25)
    torch.manual_seed(11)
    total, _ = recipe.loss(logits, batch, T, weak=True)
    torch.manual_seed(11)  # the same drawn masks
    surrogate, _ = SizeLoss()(torch.softmax(logits, 1)[:, 1:], batch["sizes"], ref_allowed(batch))
    assert float(total) == pytest.approx(float(ref_ce(logits, batch["labels"]) + 0.25 * surrogate), rel=1e-6)
    pretraining, _ = recipe.loss(logits, batch, T, weak=False)
    assert float(pretraining) == pytest.approx(float(ref_ce(logits, batch["labels"])), rel=1e-6)


@pytest.mark.parametrize("mode", ["partial", "unpaired", "paired"])
def test_accl_total_is_cross_entropy_plus_the_generator_term(mode):
    gen = torch.Generator().manual_seed(5)
    batch = batch_of(gen)
    torch.manual_seed(0)
    recipe = build(f"accl-{mode}", batch, adv_weight=0.3)
    logits = torch.randn(B, C + 1, H, W, generator=gen)
    total, parts = recipe.loss(logits, recipe.prepare(batch, torch.arange(B)), T, weak=recipe.weak(0))
    scores = recipe.adversary.discriminator(batch["image"], torch.softmax(logits, 1))
    want = ref_ce(logits, batch["labels"]) + 0.3 * ((scores - 1) ** 2).mean()
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert set(parts) == {"ce", "adversarial"}


# ---- mixed supervision: mask cases beside box cases ------------------------------------------------

def mixed_batch(gen: torch.Generator) -> tuple[dict, dict]:
    """A batch of 5 whose samples 1 and 3 come from mask cases (``full``: labels everywhere, no box), and
    the batch of its box cases' samples 0, 2, 4 written out by hand (boxes renumbered 0, 1, 2)."""
    boxes = torch.tensor([[0, 0, 2, 9, 3, 15], [2, 1, 8, 14, 1, 6], [4, 0, 0, 16, 5, 11], [4, 0, 4, 7, 4, 7]])
    valid = torch.ones(5, H, W, dtype=torch.bool)
    valid[:, :, 17:] = False
    labels = torch.randint(0, C + 1, (5, H, W), generator=gen)
    labels[[0, 2, 4]] = torch.where(torch.rand(3, H, W, generator=gen) < 0.3, IGNORE, labels[[0, 2, 4]])
    batch = {"image": torch.randn(5, 1, H, W, generator=gen), "labels": labels, "boxes": boxes,
             "box_mask": ref_box_mask((5, C, H, W), boxes).to(torch.uint8), "valid": valid,
             "full": torch.tensor([False, True, False, True, False])}
    box_rows = torch.tensor([[0, 0, 2, 9, 3, 15], [1, 1, 8, 14, 1, 6], [2, 0, 0, 16, 5, 11], [2, 0, 4, 7, 4, 7]])
    boxed = {"labels": labels[[0, 2, 4]], "boxes": box_rows, "box_mask": ref_box_mask((3, C, H, W), box_rows),
             "valid": valid[[0, 2, 4]]}
    return batch, boxed


@pytest.mark.parametrize("recipe", sorted(BOX_RECIPES))
def test_a_mixed_batch_is_the_box_terms_on_the_box_samples_plus_cross_entropy_on_the_mask_samples(recipe):
    gen = torch.Generator().manual_seed(6)
    batch, boxed = mixed_batch(gen)
    logits = torch.randn(5, C + 1, H, W, generator=gen, dtype=torch.float64)
    total, parts = build(recipe, batch).loss(logits, batch, T, weak=False)
    box_part = BOX_RECIPES[recipe](torch.softmax(logits[[0, 2, 4]], 1)[:, 1:], boxed)
    mask_part = ref_ce(logits[[1, 3]], batch["labels"][[1, 3]])
    assert float(parts["mask-ce"]) == pytest.approx(float(mask_part), rel=1e-9)
    assert float(total) == pytest.approx(float(box_part + mask_part), rel=1e-9)


@pytest.mark.parametrize("recipe", sorted(BOX_RECIPES))
def test_a_batch_of_mask_samples_only_trains_cross_entropy_and_records_every_term(recipe):
    gen = torch.Generator().manual_seed(7)
    batch, _ = mixed_batch(gen)
    batch = {**batch, "boxes": batch["boxes"][:0], "box_mask": torch.zeros_like(batch["box_mask"]),
             "full": torch.ones(5, dtype=torch.bool)}
    logits = torch.randn(5, C + 1, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    total, parts = build(recipe, batch).loss(logits, batch, T, weak=True)
    assert float(total.detach()) == pytest.approx(float(ref_ce(logits.detach(), batch["labels"])), rel=1e-9)
    names = {term.name for term in build(recipe, batch).term_list}
    assert names | {"mask-ce"} == set(parts) and all(float(parts[n]) == 0.0 for n in names)
    total.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("recipe", ["box-mask", "boxsup", "deepcut"])
def test_label_map_recipes_train_mask_samples_in_their_own_cross_entropy(recipe):
    gen = torch.Generator().manual_seed(8)
    batch, _ = mixed_batch(gen)
    logits = torch.randn(5, C + 1, H, W, generator=gen, dtype=torch.float64)
    total, parts = label_recipe_loss(recipe, batch, logits)
    assert float(total) == pytest.approx(float(ref_ce(logits, batch["labels"])), rel=1e-9)
    assert "mask-ce" not in parts

"""Each recipe's total loss is the sum of its terms, each term computed by a slow reference."""

import math

import pytest
import torch

from WeakSegLib.adversarial import Adversary
from WeakSegLib.data import IGNORE
from WeakSegLib.recipes import LossSettings, RecipeLoss
from WeakSegLib.size_loss import SizeLoss

from reference_losses import ref_box_mask, ref_emptiness, ref_masked_ce, ref_size, ref_tightness

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


def ref_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of −log softmax at the label over the labelled pixels, one pixel at a time."""
    log_p = torch.log_softmax(logits, 1)
    terms = [-log_p[b, int(labels[b, i, j]), i, j] for b in range(B) for i in range(H) for j in range(W)
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
    "tightness+emptiness": lambda s, bt: (ref_tightness(s, bt["boxes"], 5, 1e-4, T)
                                          + ref_emptiness(s, bt["box_mask"].double(), T)),
    "tightness+size+masked-ce": lambda s, bt: (ref_tightness(s, bt["boxes"], 5, 1e-4, T)
                                               + ref_size(s, bt["box_mask"].double(), T, 0.5, 0.9)
                                               + ref_masked_ce(s, bt["box_mask"].double())),
}


@pytest.mark.parametrize("recipe", sorted(BOX_RECIPES))
def test_box_recipe_total_is_the_sum_of_its_reference_terms(recipe):
    gen = torch.Generator().manual_seed(1)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64)
    total, parts = RecipeLoss(recipe)(logits, batch, T)
    want = BOX_RECIPES[recipe](torch.softmax(logits, 1)[:, 1:], batch)
    assert float(total) == pytest.approx(float(want), rel=1e-9)
    assert float(sum(parts.values())) == pytest.approx(float(want), rel=1e-9)


@pytest.mark.parametrize("recipe", ["full", "box-mask", "deepcut", "boxsup", "partial-ce"])
def test_label_recipe_total_is_the_reference_cross_entropy(recipe):
    gen = torch.Generator().manual_seed(2)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64)
    total, _ = RecipeLoss(recipe)(logits, batch, T)
    assert float(total) == pytest.approx(float(ref_ce(logits, batch["labels"])), rel=1e-9)


def test_sccl_total_is_cross_entropy_plus_the_reference_penalty():
    gen = torch.Generator().manual_seed(3)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen, dtype=torch.float64)
    bounds = torch.tensor([[20.0, 60.0], [5.0, 30.0]], dtype=torch.float64)
    total, _ = RecipeLoss("sccl", LossSettings(sccl_weight=0.5, sccl_bounds=bounds))(logits, batch, T)
    s = torch.softmax(logits, 1)[:, 1:]
    want = ref_ce(logits, batch["labels"]) + ref_sccl(s, batch["labels"], bounds, 0.5)
    assert float(total) == pytest.approx(float(want), rel=1e-9)


def test_size_total_is_cross_entropy_plus_the_weighted_size_term_on_the_allowed_pixels():
    gen = torch.Generator().manual_seed(4)
    batch = batch_of(gen)
    logits = torch.randn(B, C + 1, H, W, generator=gen)
    loss = RecipeLoss("size", LossSettings(size_weight=0.25))
    torch.manual_seed(11)
    total, _ = loss(logits, batch, T)
    torch.manual_seed(11)  # the same drawn masks
    surrogate, _ = SizeLoss()(torch.softmax(logits, 1)[:, 1:], batch["sizes"], ref_allowed(batch))
    assert float(total) == pytest.approx(float(ref_ce(logits, batch["labels"]) + 0.25 * surrogate), rel=1e-6)
    pretraining, _ = loss(logits, batch, T, weak=False)
    assert float(pretraining) == pytest.approx(float(ref_ce(logits, batch["labels"])), rel=1e-6)


@pytest.mark.parametrize("mode", ["partial", "unpaired", "paired"])
def test_accl_total_is_cross_entropy_plus_the_generator_term(mode):
    gen = torch.Generator().manual_seed(5)
    batch = batch_of(gen)
    torch.manual_seed(0)
    adversary = Adversary(mode, 1, C, torch.device("cpu"), references=batch["labels"], weight=0.3)
    logits = torch.randn(B, C + 1, H, W, generator=gen)
    total, parts = RecipeLoss(f"accl-{mode}", adversary=adversary)(logits, batch, T)
    probs = torch.softmax(logits, 1)
    scores = adversary.discriminator(batch["image"], probs)
    want = ref_ce(logits, batch["labels"]) + 0.3 * ((scores - 1) ** 2).mean()
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert math.isfinite(float(parts["adversarial"]))

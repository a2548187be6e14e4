"""Learning from object sizes (Baručić & Kybic; docs/methods.md §3): recipe ``size``.

Per slice either a mask or a size label. The first ``pretrain_epochs`` train on the mask slices alone
(cross-entropy); then the expected size loss (:class:`~WeakSegLib.losses.size.SizeLoss`) joins on the
size-labelled slices, every batch also carries ``size_anchors`` mask slices drawn at random (with Adam,
a step on the size loss alone would be a full-size step whatever its weight), and the batch-norm
statistics stay at their pre-training values (trained further on slices no mask constrains, they let
the network paint whole slices). :func:`WeakSegLib.io.sizes.sizes_from_mask` makes size labels from a mask.
"""

from __future__ import annotations

import torch
from torch import nn

from WeakSegLib.engine.train.loop import step_generator
from WeakSegLib.engine.train.recipe import RecipeContext, Term
from WeakSegLib.losses.size import SizeLoss
from WeakSegLib.recipes.label_map import CrossEntropy


def freeze_batch_norm(network: nn.Module) -> None:
    """Put the batch-norm layers in eval mode: their statistics stay those of the pre-training data
    (fine-tuning with frozen statistics; the other layers keep training)."""
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class SizeTerm(nn.Module):
    """The size loss on the pixels where a drawn mask may have object: valid pixels inside the boxes of
    the class, or anywhere valid on a slice without a box of the class. Inputs: foreground
    probabilities ``(B, C, H, W)``, sizes ``(B, C)`` (< 0: none), ``box_mask`` ``(B, C, H, W)``,
    ``valid`` ``(B, H, W)``; returns ``(surrogate, {"size_error": …})``."""

    def __init__(self, samples: int) -> None:
        super().__init__()
        self.loss = SizeLoss(samples)

    def forward(self, probs: torch.Tensor, sizes: torch.Tensor, box_mask: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inside = box_mask > 0
        allowed = valid.unsqueeze(1) & (inside | ~inside.flatten(2).any(-1)[..., None, None])
        surrogate, error = self.loss(probs, sizes, allowed)
        return surrogate, {"size_error": error}


class Size(CrossEntropy):
    """Recipe ``size`` (module docstring)."""

    def __init__(self, ctx: RecipeContext) -> None:
        super().__init__(ctx)
        self.anchors = self.labelled.nonzero().flatten()  # the mask slices

    def terms(self) -> list[Term]:
        settings = self.ctx.settings
        return super().terms() + [Term("size", SizeTerm(settings.size_samples), ("probs", "sizes", "box_mask", "valid"),
                                       weight=settings.size_weight, weak=True)]

    def weak(self, epoch: int) -> bool:
        return epoch >= self.ctx.settings.pretrain_epochs

    def before_step(self, epoch: int, weak: bool) -> None:
        if weak and self.ctx.settings.pretrain_epochs:
            freeze_batch_norm(self.ctx.network)

    def select(self, index: torch.Tensor, epoch: int, batch: int, weak: bool) -> torch.Tensor:
        if not weak:
            return super().select(index, epoch, batch, weak)
        config = self.ctx.config
        if not len(self.anchors):
            return index
        draw = torch.randperm(len(self.anchors), generator=step_generator(config.seed, epoch, batch))
        return torch.cat([index, self.anchors[draw[:self.ctx.settings.size_anchors].to(index.device)]])

"""The discriminator network of ACCL, the adversarial constrained-CNN loss (Zhang et al.; docs/methods.md §4).

A conditional PatchGAN discriminator D(image, mask) scores overlapping patches of a (soft) mask
given its image: near 1 for *reference masks*, near 0 for the segmentation network's output.
The network (the generator G) gets, besides partial cross-entropy, λ_a·mean((D(X, G(X)) − 1)²);
D is trained with the least-squares GAN objective mean(D(X, G(X))²) + mean((D(X, R) − 1)²) by its
own Adam (lr 2e-4, betas (0.5, 0.999)) after every generator step.

Reference masks R, by recipe:

- ``accl-partial``: the batch's own partial labels, unknown pixels as background;
- ``accl-unpaired``: slices drawn at random from reference masks of other volumes (any masks of the
  structure), shown with the batch's images;
- ``accl-paired``: the true masks of the batch's own slices (an upper bound).

The game itself (D's optimizer, the reference masks, the checkpointed state) is the ACCL recipe's
(:class:`WeakSegLib.recipes.partial.Adversary`).
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: image ``(B, k, H, W)`` and mask ``(B, M, H, W)`` in, patch scores
    ``(B, 1, H/8, W/8)`` out (receptive field ≈ 38 pixels). Three stride-2 4×4 convolutions with
    instance norm and leaky ReLU (no norm on the first), then a 3×3 convolution to one channel."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, out in enumerate((width, 2 * width, 4 * width)):
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1))
            if i:
                layers.append(nn.InstanceNorm2d(out, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, mask], 1))

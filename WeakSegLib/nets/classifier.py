"""Binary patch classifiers for the box tightener: input ``(B, 1, p + 2c, p + 2c)`` (a p × p patch with
c pixels of context on every side), output logits ``(B, 2)``. With context, only the feature cells
over the central patch are pooled, so the surroundings inform the features without diluting them.

- ``light`` (default): 5 conv layers (16–64 channels) with batch norm, 2 poolings, global average
  pooling; ~70 k parameters, trains in a few minutes on 2 CPU cores.
- ``vgg16``: the VGG-16 layout of the paper (13 conv layers 64–512, batch norm; a pooling is left
  out once the map is 1×1, so p = 16 and 32 both work), then 512 → 256 → 2 with dropout; ~15 M
  parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from WeakSegLib.config import CLASSIFIERS
from WeakSegLib.errors import InputError

#: convolution widths and max-pools ("M") of each classifier of :data:`WeakSegLib.config.CLASSIFIERS`
_LAYOUTS = {"light": (16, 16, "M", 32, 32, "M", 64),
            "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")}


def _features(layout: tuple, patch: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    channels, size = 1, patch
    for item in layout:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
        channels = item
    return nn.Sequential(*layers), channels


class PatchClassifier(nn.Module):
    """Convolutional features → global average pooling → a small head → 2 logits."""

    def __init__(self, name: str = "light", patch: int = 16, context: int = 0) -> None:
        super().__init__()
        if name not in _LAYOUTS:
            raise InputError(f"unknown patch classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
        if context < 0:
            raise InputError(f"patch context must be ≥ 0 pixels, got {context}")
        self.centre = (context / (patch + 2 * context), (context + patch) / (patch + 2 * context))
        self.features, width = _features(_LAYOUTS[name], patch + 2 * context)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if name == "light":
            self.head = nn.Linear(width, 2)
        else:
            self.head = nn.Sequential(nn.Linear(width, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        lo, hi = self.centre
        if lo > 0:  # the feature cells over the central patch (at least one)
            n = f.shape[-1]
            a = min(int(lo * n), n - 1)
            b = max(a + 1, math.ceil(hi * n - 1e-9))
            f = f[..., a:b, a:b]
        return self.head(self.pool(f).flatten(1))

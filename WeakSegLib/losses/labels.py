"""Losses on (partial) label maps: cross-entropy over the labelled pixels, SCCL's size penalty
(Kervadec et al.'s constrained-CNN loss, the baseline of ACCL; docs/methods.md §4), and the one-hot
masks ACCL's discriminator scores.

Labels are class indices ``(B, *S)`` with :data:`WeakSegLib.io.labels.IGNORE` on unlabelled pixels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from WeakSegLib.errors import InputError
from WeakSegLib.io.labels import IGNORE


class PartialCrossEntropy(nn.Module):
    """Cross-entropy averaged over the labelled pixels of the batch (0, with a zero gradient, when
    none is labelled; ``nn.CrossEntropyLoss`` would give NaN). With every pixel labelled it equals
    plain cross-entropy."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_pixel = nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
        return per_pixel / (labels != IGNORE).sum().clamp_min(1)


class SoftSizePenalty(nn.Module):
    """SCCL: λ·(max(0, a − V)² + max(0, V − b)²) / |Ω| per image and class, batch mean, where
    V = Σ_Ω s is the soft size (pixels) and [a, b] the class's bounds (pixels).

    Applies to the (image, class) pairs whose labels mark some pixel of the class (the object is known
    to be there); the others get no size term.

    Args:
        bounds: ``(C, 2)`` lower and upper size bounds in pixels per foreground class.
        weight: λ_s (docs/methods.md §4: 0.01).
    """

    def __init__(self, bounds: torch.Tensor, weight: float = 0.01) -> None:
        super().__init__()
        bounds = torch.as_tensor(bounds, dtype=torch.float32)
        if bounds.ndim != 2 or bounds.shape[1] != 2 or bool((bounds[:, 0] > bounds[:, 1]).any()) or bool((bounds < 0).any()):
            raise ValueError(f"SCCL bounds must be (classes, 2) with 0 ≤ lower ≤ upper, got {bounds.tolist()}")
        self.register_buffer("bounds", bounds)
        self.weight = float(weight)

    def forward(self, s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``s`` ``(B, C, *S)`` foreground probabilities, ``labels`` ``(B, *S)`` class indices."""
        classes = torch.arange(1, s.shape[1] + 1, device=labels.device).view(1, -1, *[1] * (labels.dim() - 1))
        present = (labels.unsqueeze(1) == classes).flatten(2).any(-1)  # (B, C)
        size = s.flatten(2).sum(-1)
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        penalty = torch.relu(lo - size) ** 2 + torch.relu(size - hi) ** 2
        return self.weight * (penalty * present).sum() / (s.shape[0] * math.prod(s.shape[2:]))


def sccl_bounds(references: torch.Tensor, n_classes: int, low: float = 0.9, high: float = 1.1) -> torch.Tensor:
    """SCCL's bounds from reference masks: ``low``·min and ``high``·max of the per-slice pixel counts of
    each class over the slices that hold it (Zhang et al.). ``references`` ``(R, *S)`` class indices
    → ``(C, 2)``.

    Raises:
        InputError: a class appears in no reference slice.
    """
    counts = torch.stack([(references == c).flatten(1).sum(1) for c in range(1, n_classes + 1)], 1).float()
    out = []
    for c in range(n_classes):
        present = counts[:, c][counts[:, c] > 0]
        if present.numel() == 0:
            raise InputError(f"no reference slice holds class {c + 1}: cannot derive its SCCL size bounds")
        out.append([low * float(present.min()), high * float(present.max())])
    return torch.tensor(out)


def one_hot(labels: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Class indices ``(B, H, W)`` (:data:`IGNORE` as background) → ``(B, n_channels, H, W)`` float."""
    labels = torch.where(labels == IGNORE, 0, labels).long()
    return nn.functional.one_hot(labels, n_channels).movedim(-1, 1).float()

"""Adversarial constrained-CNN loss, ACCL (Zhang et al.; METHODS.md §4).

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

:class:`Adversary` is an :class:`WeakSegLib.loop.EpochHooks`: D and its optimizer state go into every
checkpoint with the network's, so a resumed run continues the same game.
"""

from __future__ import annotations

import torch
from torch import nn

from WeakSegLib.data import IGNORE
from WeakSegLib.errors import InputError

MODES = ("partial", "unpaired", "paired")
#: λ_a per mode (METHODS.md §4)
DEFAULT_WEIGHTS = {"partial": 1e-3, "unpaired": 1e-2, "paired": 1e-2}


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


def one_hot(labels: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Class indices ``(B, H, W)`` (:data:`IGNORE` as background) → ``(B, n_channels, H, W)`` float."""
    labels = torch.where(labels == IGNORE, 0, labels).long()
    return nn.functional.one_hot(labels, n_channels).movedim(-1, 1).float()


class Adversary:
    """The discriminator side of ACCL (module docstring).

    Args:
        mode: ``"partial"``, ``"unpaired"`` or ``"paired"``.
        image_channels: k, the network's input channels.
        n_classes: foreground classes C (masks have 1 + C channels).
        device: where D lives.
        references: ``(R, H, W)`` class-index reference slices for ``unpaired`` (the pool to draw from);
            ``paired`` takes them from the batch (``batch["reference"]``).
        weight: λ_a.
        lr, betas: D's Adam.
    """

    def __init__(self, mode: str, image_channels: int, n_classes: int, device: torch.device, *,
                 references: torch.Tensor | None = None, weight: float | None = None, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999)) -> None:
        if mode not in MODES:
            raise InputError(f"unknown ACCL reference mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "unpaired" and (references is None or len(references) == 0):
            raise InputError("accl-unpaired needs reference masks (--reference): any masks of the structure")
        self.mode, self.n_channels = mode, n_classes + 1
        self.weight = DEFAULT_WEIGHTS[mode] if weight is None else float(weight)
        self.references = references
        self.discriminator = PatchDiscriminator(image_channels + self.n_channels).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)

    def generator_loss(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """λ_a·mean((D(X, G(X)) − 1)²); ``probs`` ``(B, 1 + C, H, W)`` softmax of the network. The
        gradient reaches the network only: D's parameters are left out of this graph (D steps on its own loss)."""
        params = list(self.discriminator.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            return self.weight * ((self.discriminator(image, probs) - 1) ** 2).mean()
        finally:
            for p in params:
                p.requires_grad_(True)

    def reference_masks(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One-hot reference masks ``(B, 1 + C, H, W)`` for the batch (module docstring)."""
        if self.mode == "partial":
            labels = batch["labels"]
        elif self.mode == "paired":
            labels = batch["reference"]
        else:
            draw = torch.randint(len(self.references), (batch["image"].shape[0],), device=self.references.device)
            labels = self.references[draw]
        return one_hot(labels, self.n_channels)

    def discriminator_step(self, batch: dict[str, torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
        """One LSGAN step of D on the batch; ``probs`` the network's softmax (detached here).
        Returns D's loss (detached)."""
        fake = self.discriminator(batch["image"], probs.detach())
        real = self.discriminator(batch["image"], self.reference_masks(batch))
        loss = (fake ** 2).mean() + ((real - 1) ** 2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    # --- EpochHooks -------------------------------------------------------------------------------
    def before_epoch(self, epoch: int) -> None:
        return None

    def start_info(self) -> dict:
        return {"adversarial_weight": self.weight, "reference_mode": self.mode}

    def close(self) -> None:
        """Nothing to release."""

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])

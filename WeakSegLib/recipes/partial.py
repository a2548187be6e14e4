"""Recipes from partial labels (scribbles; docs/methods.md §4): SCCL and ACCL.

Both add a term to the cross-entropy on the labelled pixels (recipe ``partial-ce``):

- ``sccl`` (Kervadec et al.'s constrained-CNN loss): λ_s·(soft size outside [a, b])² / |Ω| on the
  slices with an object scribble; [a, b] from ``sccl_bounds`` or 0.9·min / 1.1·max of the reference
  masks' per-slice sizes.
- ``accl-partial|unpaired|paired`` (Zhang et al.): λ_a·mean((D(X, G(X)) − 1)²) with a conditional
  PatchGAN D (:mod:`WeakSegLib.nets.discriminator`) trained by least squares against reference masks:
  the partial labels themselves, slices drawn from other volumes' masks, or the image's own true mask.
  :class:`Adversary` holds D, its Adam and the references; it goes into every checkpoint.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from WeakSegLib.engine.train.recipe import RecipeContext, Term
from WeakSegLib.errors import InputError
from WeakSegLib.losses.labels import SoftSizePenalty, one_hot, sccl_bounds
from WeakSegLib.nets.discriminator import PatchDiscriminator
from WeakSegLib.recipes.label_map import CrossEntropy
from WeakSegLib.registry import recipe_spec

#: the reference mode of an ACCL recipe, from its spec's ``reference`` (:mod:`WeakSegLib.registry.partial`)
MODE_OF_REFERENCE = {None: "partial", "any": "unpaired", "paired": "paired"}
MODES = tuple(MODE_OF_REFERENCE.values())


class Adversary:
    """The discriminator side of ACCL (module docstring).

    Args:
        mode: ``"partial"``, ``"unpaired"`` or ``"paired"``.
        image_channels: k, the network's input channels.
        n_classes: foreground classes C (masks have 1 + C channels).
        device: where D lives.
        wrap: gives the module D's steps go through (``DistributedDataParallel`` in a distributed run).
        references: ``(R, H, W)`` class-index reference slices for ``unpaired`` (the pool to draw from);
            ``paired`` takes them from the batch (``batch["reference"]``).
        weight: λ_a (the recipe's default: :class:`WeakSegLib.registry.partial.ACCLSettings`).
        lr, betas: D's Adam.
    """

    def __init__(self, mode: str, image_channels: int, n_classes: int, device: torch.device, *,
                 weight: float, references: torch.Tensor | None = None, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999),
                 wrap: Callable[[nn.Module], nn.Module] = lambda module: module) -> None:
        if mode not in MODES:
            raise InputError(f"unknown ACCL reference mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "unpaired" and (references is None or len(references) == 0):
            raise InputError("accl-unpaired needs reference masks (--reference): any masks of the structure")
        self.mode, self.n_channels = mode, n_classes + 1
        self.weight = float(weight)
        self.references = references
        self.discriminator = PatchDiscriminator(image_channels + self.n_channels).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)
        self.trained = wrap(self.discriminator)

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
        image = batch["image"]  # fake and real pairs in one pass (instance norm: each scored on its own)
        fake, real = self.trained(torch.cat([image, image]), torch.cat([probs.detach(),
                                                                        self.reference_masks(batch)])).chunk(2)
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


class SCCL(CrossEntropy):
    """Recipe ``sccl`` (module docstring)."""

    def __init__(self, ctx: RecipeContext) -> None:
        settings = ctx.settings
        if settings.sccl_bounds is not None:
            self.bounds = torch.tensor(settings.sccl_bounds, dtype=torch.float32)
        elif ctx.samples.references is None:
            raise InputError("recipe 'sccl' needs size bounds: give --sccl-bounds LO HI or --reference masks to "
                             "derive them")
        else:
            self.bounds = sccl_bounds(ctx.samples.references.cpu(), ctx.n_classes)
        super().__init__(ctx)

    def terms(self) -> list[Term]:
        return super().terms() + [Term("sccl", SoftSizePenalty(self.bounds, self.ctx.settings.sccl_weight),
                                       ("probs", "labels"))]

    def card_info(self) -> dict:
        return {"sccl_bounds": self.bounds.tolist()}


class ACCL(CrossEntropy):
    """Recipes ``accl-partial``, ``accl-unpaired``, ``accl-paired`` (module docstring)."""

    def __init__(self, ctx: RecipeContext) -> None:
        settings, spec = ctx.settings, recipe_spec(ctx.config.recipe)
        self.adversary = Adversary(MODE_OF_REFERENCE[spec.reference], ctx.config.context, ctx.n_classes, ctx.device,
                                   references=ctx.samples.references, weight=settings.adv_weight, lr=settings.adv_lr,
                                   wrap=lambda module: ctx.group.wrap(module, ctx.device))
        super().__init__(ctx)

    def terms(self) -> list[Term]:
        return super().terms() + [Term("adversarial", self.adversary.generator_loss, ("image", "softmax"), weak=True)]

    def prepare(self, batch: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.adversary.mode == "paired":
            batch["reference"] = self.ctx.samples.references[index]
        return batch

    def after_step(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"discriminator": self.adversary.discriminator_step(batch, torch.softmax(logits.detach(), 1))}

    def hooks(self) -> Adversary:
        return self.adversary

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        return [(self.adversary.optimizer, self.ctx.settings.adv_lr)]

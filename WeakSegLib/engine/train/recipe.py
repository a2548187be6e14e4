"""What a recipe implements: its loss terms and the hooks it plugs into the one training loop.

A recipe is a :class:`Recipe` subclass named by a line of the registry
(:mod:`WeakSegLib.registry`). The engine builds it once per run with a
:class:`RecipeContext` and then, every step:

1. ``select(index, epoch, batch, weak)`` — which samples the batch holds (default: samples with a
   labelled pixel, unless a term that learns from unlabelled pixels is active); called for every batch
   of an epoch before the epoch's steps (the batches are read ahead);
2. ``before_step(epoch, weak)`` and ``prepare(batch, index)`` — work at the step's start, extra batch
   fields (default: none);
3. ``loss(logits, batch, t, weak)`` — the weighted sum of the recipe's :class:`Term` s (in mixed
   supervision, over the box cases' samples, plus cross-entropy on the mask cases' samples: :meth:`Recipe.loss`);
4. ``after_step(batch, logits)`` — e.g. a discriminator's own step;

plus ``hooks()`` (label revisions between epochs or an extra model, saved in every checkpoint),
``optimizers()`` (extra optimisers whose learning rate follows the schedule) and ``card_info()``
(what the model card records beyond the configuration).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from WeakSegLib.config import TrainConfig
from WeakSegLib.engine.train.distributed import SINGLE, Distributed
from WeakSegLib.losses.labels import PartialCrossEntropy

#: the record key of the cross-entropy on the mask cases' samples in mixed supervision (:meth:`Recipe.loss`)
MASK_TERM = "mask-ce"
#: the inputs a :class:`Term` may take besides batch fields: the network's ``logits`` ``(B, 1 + C, *S)``,
#: ``softmax`` over all classes, ``probs`` = the foreground channels of the softmax ``(B, C, *S)``, and
#: the barrier parameter ``t``.
COMPUTED = ("logits", "softmax", "probs", "t")


class EpochHooks(Protocol):
    """What a recipe that changes its training labels or trains an extra model plugs into the loop.

    ``before_epoch(epoch)`` runs at the start of every 0-based epoch, after a resume too, and may
    change labels or re-initialise the network; what it returns joins that epoch's record.
    ``state_dict()`` goes into every checkpoint and ``load_state_dict`` gets it back on resume, so a
    resumed run continues with the labels (or the model) it had. ``start_info()`` adds fields to the
    ``start`` event; ``close()`` releases what the hooks hold (worker processes).
    """

    def before_epoch(self, epoch: int) -> dict | None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def start_info(self) -> dict: ...

    def close(self) -> None: ...


@dataclass
class Term:
    """One loss term.

    Attributes:
        name: the key of its value in the epoch records.
        module: called with ``inputs`` in order; returns a 0-dim tensor, or ``(tensor, logs)`` where
            ``logs`` (detached values) join the records.
        inputs: names of :data:`COMPUTED` values or batch fields (``image``, ``labels``, ``box_mask``,
            ``boxes``, ``valid``, ``sizes``, and what :meth:`Recipe.prepare` adds).
        weight: factor of its value in the total (weights inside ``module`` are the module's own).
        weak: learns from pixels without a label; only active when :meth:`Recipe.weak` says so.
    """

    name: str
    module: Callable[..., Any]
    inputs: tuple[str, ...]
    weight: float = 1.0
    weak: bool = False


@dataclass
class RecipeContext:
    """What the engine gives a recipe.

    Attributes:
        config: the run's settings, recipe defaults resolved (the recipe family's: :attr:`settings`).
        samples: the training samples (:class:`WeakSegLib.engine.samples.data.SampleSet`, on ``device``).
        network, optimizer: the segmentation network and its Adam.
        device: where training runs.
        n_classes: foreground classes C (the network has 1 + C outputs).
        predict: the network's softmax over every sample ``(N, 1 + C, *S)``, on the CPU.
        reinit: gives the network fresh weights for round r (seeded by ``config.seed + r``) and clears
            the optimizer's moments.
        group: the processes of a distributed run (:mod:`WeakSegLib.engine.train.distributed`): an extra
            trained model goes through ``group.wrap``; work over the whole set (label revisions) may be
            done on rank 0 alone, as the loop gives every rank rank 0's hook state after each
            ``before_epoch``.
    """

    config: TrainConfig
    samples: Any
    network: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    n_classes: int
    predict: Callable[[], torch.Tensor]
    reinit: Callable[[int], None]
    group: Distributed = SINGLE

    @functools.cached_property
    def settings(self) -> Any:
        """The recipe's own settings (:meth:`WeakSegLib.config.TrainConfig.settings`), read once."""
        return self.config.settings()


def sub_batch(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The samples ``keep`` ``(B,)`` bool of ``batch``: every per-sample field cut, the box rows of the
    kept samples renumbered in order."""
    size = len(keep)
    new_index = keep.long().cumsum(0) - 1
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "boxes":
            rows = value[keep[value[:, 0]]].clone()
            rows[:, 0] = new_index[rows[:, 0]]
            out[key] = rows
        elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            out[key] = value[keep]
        else:
            out[key] = value
    return out


class Recipe:
    """Base of every recipe (module docstring). Subclasses define :meth:`terms` and override what
    they change.

    ``label_map``: the recipe trains by cross-entropy on the batch's label map, which already holds the
    mask cases' masks (mixed supervision needs nothing more); otherwise :meth:`loss` splits the batch.
    """

    label_map = False
    mask_loss = PartialCrossEntropy()

    def __init__(self, ctx: RecipeContext) -> None:
        self.ctx = ctx
        self.labelled = ctx.samples.labelled()
        self.term_list: list[Term] = self.terms()

    def terms(self) -> list[Term]:
        """The loss terms, in the order they are summed."""
        raise NotImplementedError

    def weak(self, epoch: int) -> bool:
        """Whether the terms that learn from unlabelled pixels are active in ``epoch``."""
        return any(term.weak for term in self.term_list)

    def select(self, index: torch.Tensor, epoch: int, batch: int, weak: bool) -> torch.Tensor:
        """The samples of this step (``index``: the loop's draw). Without an active weak term a sample
        with no labelled pixel has nothing to learn from and is left out."""
        return index if weak else index[self.labelled[index]]

    def before_step(self, epoch: int, weak: bool) -> None:
        """Work at the start of every step of ``epoch``, after the loop put the network in train mode
        (default: none)."""

    def prepare(self, batch: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra batch fields for the terms (default: none)."""
        return batch

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], t: float,
             weak: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and each term's detached value (plus the terms' logs).

        Mixed supervision (a batch with ``full``, a recipe without :attr:`label_map`): the recipe's terms
        see only the box cases' samples (:func:`sub_batch`) and the mask cases' samples add
        cross-entropy on their masks (:data:`MASK_TERM`, weight 1); a part with no sample in the batch
        counts 0, so every step records the same keys."""
        full = batch.get("full")
        if full is None or self.label_map:
            return self.terms_loss(logits, batch, t, weak)
        zero = logits.sum() * 0.0
        if bool((~full).any()):
            total, parts = self.terms_loss(logits[~full], sub_batch(batch, ~full), t, weak)
        else:
            total, parts = zero, {term.name: zero.detach() for term in self.term_list if weak or not term.weak}
        ce = self.mask_loss(logits[full], batch["labels"][full]) if bool(full.any()) else zero
        return total + ce, {**parts, MASK_TERM: ce.detach()}

    def terms_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], t: float,
                   weak: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the active terms over ``batch``, and each term's detached value (plus logs)."""
        computed: dict[str, Any] = {"logits": logits, "t": t}
        parts, logs = {}, {}
        for term in self.term_list:
            if term.weak and not weak:
                continue
            value = term.module(*(self._input(name, computed, batch) for name in term.inputs))
            if isinstance(value, tuple):
                value, extra = value
                logs.update(extra)
            parts[term.name] = value if term.weight == 1.0 else term.weight * value
        total = sum(parts.values())
        return total, {**{k: v.detach() for k, v in parts.items()}, **logs}

    @staticmethod
    def _input(name: str, computed: dict[str, Any], batch: dict[str, torch.Tensor]) -> Any:
        if name not in computed:
            if name == "softmax":
                computed[name] = torch.softmax(computed["logits"], 1)
            elif name == "probs":
                computed[name] = Recipe._input("softmax", computed, batch)[:, 1:]
            else:
                return batch[name]
        return computed[name]

    def after_step(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Work after the network's step (e.g. a discriminator's); returns values for the records."""
        return {}

    def hooks(self) -> EpochHooks | None:
        """Label revisions or an extra model (saved with every checkpoint), or None."""
        return None

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        """Optimisers besides the network's, with their base learning rates (the schedule scales them)."""
        return []

    def card_info(self) -> dict:
        """What the model card's ``training`` section records beyond the configuration."""
        return {}

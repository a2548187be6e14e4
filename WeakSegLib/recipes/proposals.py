"""Proposal-based baselines: DeepCut and BoxSup, label revisions of the one training loop
(docs/methods.md §5, §6).

Both recipes train with cross-entropy on ``SampleSet.labels`` and revise those labels between
epochs through their :class:`~WeakSegLib.engine.train.recipe.EpochHooks`; the revised labels travel in the
checkpoint. Only samples with at least one box are revised ("weak" samples); samples from volumes
given with a mask keep it (semi-supervised BoxSup), slices of a boxed volume without a box stay
background.

- :class:`DeepCutRevision`: labels start as the filled boxes; before every ``every``-th epoch the
  network predicts the training slices, a dense CRF refines the prediction with each class allowed
  only in its boxes (:mod:`WeakSegLib.recipes.crf`, in a pool of processes over shared memory), the
  result replaces the labels and the network and optimizer are re-initialised.
- :class:`BoxSupRevision`: candidates per box computed once (:mod:`WeakSegLib.recipes.regions`);
  before every epoch, per box, a candidate drawn among the k cheapest replaces the box's labels.

Record fields they add to the epoch events: DeepCut ``proposal_update`` (round), ``crf_seconds``
(wall time of the CRF step), ``proposal_foreground`` (fraction of box pixels labelled object),
``boxes_kept`` (boxes a revision would have emptied below ``proposal_min_fill`` that kept their labels);
BoxSup ``proposal_cost`` (mean cost of the chosen candidates), ``fallback_boxes``.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from WeakSegLib.engine.samples.data import SampleSet, rows_to_mask
from WeakSegLib.engine.train.recipe import RecipeContext
from WeakSegLib.errors import InputError
from WeakSegLib.recipes.crf import CRFPool, to_crf_intensity
from WeakSegLib.recipes.label_map import CrossEntropy
from WeakSegLib.recipes.regions import BoxCandidates, ProposalSettings, box_candidates, choose
from WeakSegLib.registry.proposals import CRFSettings


def weak_samples(samples: SampleSet) -> np.ndarray:
    """Indices of the samples that carry at least one box (sorted)."""
    return np.unique(samples.boxes[:, 0].cpu().numpy())


def _check_2d(samples: SampleSet, recipe: str) -> None:
    if samples.images.ndim != 4:
        raise InputError(f"recipe {recipe!r} works on 2D slices: train with spatial_dims 2")
    if len(weak_samples(samples)) == 0:
        raise InputError(f"recipe {recipe!r} needs at least one box")


def _centre_slices(samples: SampleSet) -> tuple[np.ndarray, np.ndarray]:
    """Centre channel of each sample on the CRF's 0–255 scale, and each sample's valid ``(h, w)``."""
    images = samples.images[:, samples.images.shape[1] // 2].cpu().numpy()
    valid = samples.valid.cpu().numpy()
    extent = np.stack([valid.any(2).sum(1), valid.any(1).sum(1)], 1)
    return to_crf_intensity(images, valid), extent


class _Revision:
    """Shared part: the samples whose labels change and how the network predicts them.

    ``predict()`` gives the current network's softmax over every sample ``(N, K, H, W)`` on the CPU.
    """

    def __init__(self, samples: SampleSet, predict: Callable[[], torch.Tensor]) -> None:
        self.samples = samples
        self.predict = lambda: predict().numpy()
        self.weak = weak_samples(samples)
        self.rows = samples.boxes.cpu().numpy()  # box rows [sample, class, y0, y1, x0, x1]

    def set_labels(self, labels: np.ndarray) -> None:
        """Replace the weak samples' labels by ``labels`` ``(N, H, W)`` (rows of the others are ignored)."""
        idx = torch.from_numpy(self.weak).to(self.samples.labels.device)
        self.samples.labels[idx] = torch.from_numpy(labels[self.weak]).to(self.samples.labels)

    def state_dict(self) -> dict:
        return {"labels": self.samples.labels.cpu()}

    def start_info(self) -> dict:
        """Fields for the run's ``start`` event."""
        return {}

    def close(self) -> None:
        """Release what the revision holds (DeepCut: its CRF workers)."""

    def load_state_dict(self, state: dict) -> None:
        labels = state["labels"]
        if labels.shape != self.samples.labels.shape:
            raise InputError(f"checkpoint labels {tuple(labels.shape)} do not match the training samples "
                             f"{tuple(self.samples.labels.shape)}")
        self.samples.labels.copy_(labels)


def box_fill(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The fraction of each box row ``[sample, class, y0, y1, x0, x1]`` that ``labels`` ``(N, H, W)``
    label as the box's object (value class + 1): one summed-area table per class, no loop over boxes."""
    if not len(rows):
        return np.zeros(0)
    n, cls, y0, y1, x0, x1 = (rows[:, i] for i in range(6))
    table = np.zeros((int(cls.max()) + 1, labels.shape[0], labels.shape[1] + 1, labels.shape[2] + 1), np.int64)
    for c in range(table.shape[0]):
        table[c, :, 1:, 1:] = (labels == c + 1).cumsum(1).cumsum(2)
    inside = (table[cls, n, y1, x1] - table[cls, n, y0, x1] - table[cls, n, y1, x0] + table[cls, n, y0, x0])
    return inside / np.maximum((y1 - y0) * (x1 - x0), 1)


def guard_boxes(previous: np.ndarray, revised: np.ndarray, rows: np.ndarray, min_fill: float) -> tuple[np.ndarray, int]:
    """``revised`` labels ``(N, H, W)`` in which every box that they fill less than ``min_fill`` (its object's
    share of the box) has its ``previous`` labels back; and how many boxes were given back."""
    weak = box_fill(revised, rows) < min_fill
    if not weak.any():
        return revised, 0
    back = rows_to_mask(rows[weak], len(revised), int(rows[:, 1].max()) + 1, revised.shape[1:]).any(1)
    return np.where(back, previous, revised), int(weak.sum())


class DeepCutRevision(_Revision):
    """DeepCut label revision (module docstring).

    Args:
        samples: training samples (2D); their labels must start as the filled boxes.
        predict: the network's softmax over every sample (see :class:`_Revision`).
        reinit: re-initialises network and optimizer for revision ``round`` (1, 2, …).
        every: k, epochs between revisions.
        last: the last epoch (0-based) before which a revision may happen; later epochs train on the
            labels as they are.
        processes: CRF worker processes.
        revise: whether this process computes the revisions (in a distributed run rank 0 alone does;
            the loop gives the other ranks its labels, :mod:`WeakSegLib.engine.train.distributed`).
        min_fill: a revision may not take a box's object away: where it labels less than this fraction
            of a box as the box's class, the box keeps its previous labels (:func:`guard_boxes`).
    """

    def __init__(self, samples: SampleSet, predict: Callable[[], torch.Tensor], *,
                 reinit: Callable[[int], None], every: int = 10, last: int | None = None, processes: int = 2,
                 params: CRFSettings = CRFSettings(), revise: bool = True, min_fill: float) -> None:
        _check_2d(samples, "deepcut")
        if every < 1:
            raise InputError(f"DeepCut's revision interval must be ≥ 1 epoch, got {every}")
        super().__init__(samples, predict)
        self.every, self.last, self.reinit, self.min_fill = every, last, reinit, min_fill
        images, extent = _centre_slices(samples)
        box_mask = samples.box_mask.cpu().numpy().astype(bool)
        valid = samples.valid.cpu().numpy()
        self.allowed = np.concatenate([valid[:, None], box_mask & valid[:, None]], 1)
        self.pool = (CRFPool(images, self.allowed.shape[1], extent=extent, processes=processes, params=params)
                     if revise else None)

    def before_epoch(self, epoch: int) -> dict | None:
        if epoch == 0 or epoch % self.every or (self.last is not None and epoch > self.last):
            return None
        round_ = epoch // self.every
        if self.pool is None:  # the labels come from the revising rank
            self.reinit(round_)
            return {"proposal_update": round_}
        labels, seconds = self.pool.refine(self.predict(), self.allowed, self.weak)
        labels, kept = guard_boxes(self.samples.labels.cpu().numpy().astype(labels.dtype), labels, self.rows,
                                   self.min_fill)
        self.set_labels(labels)
        self.reinit(round_)
        inside = self.allowed[self.weak, 1:].any(1)
        fg = float((labels[self.weak] > 0)[inside].mean()) if inside.any() else 0.0
        return {"proposal_update": round_, "crf_seconds": seconds, "proposal_foreground": fg,
                "boxes_kept": kept}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class BoxSupRevision(_Revision):
    """BoxSup label revision (module docstring).

    Args:
        samples: training samples (2D).
        predict: the network's softmax over every sample (see :class:`_Revision`).
        k: draw among the k cheapest candidates.
        weight: λ of the network-disagreement term.
        seed: with the epoch, seeds each epoch's draws (so a resumed run draws the same).
    """

    def __init__(self, samples: SampleSet, predict: Callable[[], torch.Tensor], *, k: int = 5,
                 weight: float = 1.0, seed: int = 0, settings: ProposalSettings = ProposalSettings()) -> None:
        _check_2d(samples, "boxsup")
        if k < 1:
            raise InputError(f"BoxSup draws among the k cheapest candidates: k must be ≥ 1, got {k}")
        super().__init__(samples, predict)
        self.k, self.weight, self.seed = k, weight, seed
        began = time.perf_counter()
        images, _ = _centre_slices(samples)
        images = images / 255.0
        self.candidates: list[BoxCandidates] = [
            box_candidates(images[r[0]], (r[2], r[3], r[4], r[5]), settings) for r in self.rows]
        self.proposal_seconds = time.perf_counter() - began

    @property
    def fallback_boxes(self) -> int:
        return sum(c.fallback for c in self.candidates)

    def start_info(self) -> dict:
        return {"proposal_seconds": self.proposal_seconds, "fallback_boxes": self.fallback_boxes}

    def before_epoch(self, epoch: int) -> dict:
        pred = self.predict().argmax(1) if epoch > 0 else None
        rng = np.random.default_rng([self.seed, epoch])
        labels = np.zeros(tuple(self.samples.labels.shape), np.uint8)
        costs = []
        for row, cand in zip(self.rows, self.candidates):
            n, cls, y0, y1, x0, x1 = (int(v) for v in row)
            net = None if pred is None else pred[n, y0:y1, x0:x1] == cls + 1
            pick, cost = choose(cand, net, rng, k=self.k, weight=self.weight)
            labels[n, y0:y1, x0:x1][cand.masks[pick]] = cls + 1
            costs.append(cost)
        self.set_labels(labels)
        return {"proposal_cost": float(np.mean(costs)), "fallback_boxes": self.fallback_boxes}


class DeepCut(CrossEntropy):
    """Recipe ``deepcut``: cross-entropy on labels that :class:`DeepCutRevision` revises."""

    def __init__(self, ctx: RecipeContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.revision = DeepCutRevision(ctx.samples, ctx.predict, reinit=ctx.reinit, every=settings.proposal_every,
                                        last=int(settings.proposal_until * ctx.config.epochs),
                                        processes=settings.processes, params=settings.crf_settings(),
                                        revise=ctx.group.main, min_fill=settings.proposal_min_fill)

    def hooks(self) -> DeepCutRevision:
        return self.revision


class BoxSup(CrossEntropy):
    """Recipe ``boxsup``: cross-entropy on candidates that :class:`BoxSupRevision` chooses."""

    def __init__(self, ctx: RecipeContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.revision = BoxSupRevision(ctx.samples, ctx.predict, k=settings.boxsup_k, weight=settings.boxsup_weight,
                                       seed=ctx.config.seed)

    def hooks(self) -> BoxSupRevision:
        return self.revision

"""Connected-component post-processing of predictions, decided on the training cases as nnU-Net does.

A box-trained network may predict fragments far from the object (other bone, the scanner table, the
edge of the field of view). Per label value, one of :data:`~WeakSegLib.config.POSTPROCESS_STEPS`:

- ``none``: the prediction as it is;
- ``drop-small``: remove the components (26-connected) smaller than :data:`SMALL_FRACTION` of the largest;
- ``largest``: keep the largest component only.

After training, :func:`decide` predicts the training cases, applies each step and keeps, per label,
the step with the best mean Dice against the cases' references — their masks where they have one, else
their filled boxes (a component lying where no box is counts against it, one inside a box for it) —
provided it beats ``none`` (by more than rounding, :data:`MIN_GAIN`): a step is kept only where it
helps. So a label whose true object has several parts (two lungs inside their boxes) keeps them all. The decision
goes into the model card (``postprocess``) and :func:`apply` runs it on every prediction unless
switched off; a card without it predicts as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from WeakSegLib.config import POSTPROCESS_STEPS
from WeakSegLib.engine.predict.metrics import dice

#: ``drop-small`` removes the components with fewer voxels than this fraction of the largest one's
SMALL_FRACTION = 0.1
#: a step is kept only when it raises the mean Dice on the training cases by more than this (rounding):
#: a far fragment of a few voxels barely moves Dice but wrecks the surface distance, so any gain counts
MIN_GAIN = 1e-9
#: the training cases a decision predicts at most (the first ones with a reference)
MAX_CASES = 8
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected components of a boolean ``(z, y, x)`` mask: the component index of every voxel
    (0 outside) and the voxel count of each component (index 0: background)."""
    index, n = ndimage.label(mask, structure=_CONNECTIVITY)
    return index, np.bincount(index.ravel(), minlength=n + 1)


def apply_step(mask: np.ndarray, step: str) -> np.ndarray:
    """``mask`` (boolean ``(z, y, x)``) after ``step``."""
    if step == "none" or not mask.any():
        return mask
    index, sizes = components(mask)
    sizes[0] = 0
    if step == "largest":
        keep = sizes == sizes.max()
        keep[np.flatnonzero(keep)[1:]] = False  # of equal largest components, the first one
    elif step == "drop-small":
        keep = sizes >= SMALL_FRACTION * sizes.max()
        keep[0] = False
    else:
        raise ValueError(f"unknown post-processing step {step!r}; one of {', '.join(POSTPROCESS_STEPS)}")
    return keep[index]


def apply(labels: np.ndarray, steps: dict[int, str]) -> np.ndarray:
    """A label volume ``(z, y, x)`` with each label's step applied (removed voxels become background 0)."""
    out = labels.copy()
    for value, step in steps.items():
        where = labels == value
        out[where & ~apply_step(where, step)] = 0
    return out


@dataclass
class Decision:
    """Per label value, the step kept and the mean Dice of every step on the training cases; what the
    references were (``masks``, ``boxes`` or both) and how many cases were scored."""

    steps: dict[int, str] = field(default_factory=dict)
    scores: dict[int, dict[str, float]] = field(default_factory=dict)
    reference: str = ""
    cases: int = 0

    def to_dict(self) -> dict:
        return {"steps": {str(k): v for k, v in self.steps.items()},
                "scores": {str(k): v for k, v in self.scores.items()}, "reference": self.reference,
                "cases": self.cases}

    @classmethod
    def from_dict(cls, d: dict) -> "Decision":
        return cls({int(k): v for k, v in d.get("steps", {}).items()},
                   {int(k): v for k, v in d.get("scores", {}).items()}, d.get("reference", ""), d.get("cases", 0))


def decide(pairs: Iterable[tuple[np.ndarray, dict[int, np.ndarray]]], label_values: Sequence[int],
           reference: str = "") -> Decision:
    """The post-processing of each label from training cases given as ``(prediction, references)``: the
    predicted label volume ``(z, y, x)`` and, per label value, the boolean reference of that label (its
    mask, or its filled boxes) on the same grid (module docstring). A label neither ever holds is left
    as it is."""
    totals: dict[int, dict[str, list[float]]] = {v: {s: [] for s in POSTPROCESS_STEPS} for v in label_values}
    cases = 0
    for prediction, truth in pairs:
        cases += 1
        for value in label_values:
            predicted, wanted = prediction == value, truth.get(value, np.zeros(prediction.shape, bool))
            if predicted.any() or wanted.any():
                for step in POSTPROCESS_STEPS:
                    totals[value][step].append(dice(apply_step(predicted, step), wanted))
    decision = Decision(reference=reference, cases=cases)
    for value, by_step in totals.items():
        if not by_step["none"]:
            continue
        means = {step: float(np.mean(scores)) for step, scores in by_step.items()}
        best = max(POSTPROCESS_STEPS, key=lambda s: (means[s], -POSTPROCESS_STEPS.index(s)))
        decision.steps[value] = best if means[best] > means["none"] + MIN_GAIN else "none"
        decision.scores[value] = means
    return decision

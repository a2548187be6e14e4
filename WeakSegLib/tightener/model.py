"""A box tightener as a model: load it, check that it suits an image, classify patches
(docs/methods.md §2; the card: :class:`WeakSegLib.io.card.TightenerCard`).

Applied to an image whose in-plane spacing differs by more than 25 % from the card's, or whose
intensities look like another modality (CT-like vs not, or a very different range), a tightener
warns (:func:`compatibility_warnings`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from WeakSegLib.engine.predict.model import load_weights
from WeakSegLib.errors import InputError, ModelError
from WeakSegLib.io.card import CARD, TightenerCard, read_card
from WeakSegLib.io.volume import Volume
from WeakSegLib.nets.classifier import PatchClassifier

SPACING_TOLERANCE = 0.25


def intensity_profile(array: np.ndarray) -> dict[str, float]:
    """1st, 50th and 99th percentiles of the raw intensities (for the modality check)."""
    p1, p50, p99 = np.percentile(array, [1, 50, 99])
    return {"p1": float(p1), "p50": float(p50), "p99": float(p99)}

def _ct_like(profile: dict) -> bool:
    return profile["p1"] < -500.0  # air in Hounsfield units


def compatibility_warnings(card: TightenerCard, volume: Volume) -> list[str]:
    """Reasons to doubt that the tightener of ``card`` suits ``volume`` (empty list when none)."""
    out = []
    itk_axes = [2 - ax for ax in range(3) if ax != card.input.axis]  # in-plane axes in ITK (x, y, z) order
    trained = np.asarray(card.input.spacing, float)[itk_axes]
    given = np.asarray(volume.spacing, float)[itk_axes]
    ratio = given / trained
    if np.any(np.abs(ratio - 1.0) > SPACING_TOLERANCE):
        out.append(f"in-plane spacing {given.round(3).tolist()} mm differs from the tightener's training spacing "
                   f"{trained.round(3).tolist()} mm by more than {SPACING_TOLERANCE:.0%}: patches cover another "
                   "physical size; resample the image or train a tightener at this spacing")
    ref = card.input.intensity
    if ref:
        here = intensity_profile(volume.array)
        if _ct_like(ref) != _ct_like(here):
            kinds = ("CT (Hounsfield units)", "not CT")
            out.append(f"the image looks {kinds[not _ct_like(here)]} but the tightener was trained on "
                       f"{kinds[not _ct_like(ref)]} images: it is probably another modality")
        else:
            span_ref, span = ref["p99"] - ref["p1"], here["p99"] - here["p1"]
            if span_ref > 0 and span > 0 and not 0.25 <= span / span_ref <= 4.0:
                out.append(f"the image's intensity range ({here['p1']:.4g}…{here['p99']:.4g}) is far from the "
                           f"training images' ({ref['p1']:.4g}…{ref['p99']:.4g}): another modality or sequence?")
    return out


@torch.no_grad()
def classify(network: torch.nn.Module, patches: np.ndarray | torch.Tensor, device: torch.device,
             batch_size: int = 2048) -> np.ndarray:
    """Object probability ``(N,)`` of patches ``(N, p, p)`` or ``(N, 1, p, p)``."""
    x = torch.as_tensor(patches, dtype=torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    network.eval()
    out = [torch.softmax(network(x[i:i + batch_size].to(device)), 1)[:, 1].cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def load_tightener(folder: str | os.PathLike) -> tuple[torch.nn.Module, TightenerCard]:
    """Classifier (eval mode, CPU) and card of a tightener folder; :class:`ModelError` if unusable."""
    card = read_card(folder, TightenerCard)
    try:
        network = PatchClassifier(card.network.name, card.network.patch, card.network.context)
    except (ValueError, InputError) as exc:
        raise ModelError(f"{Path(folder) / CARD}: network section {card.network} is invalid ({exc})") from exc
    return load_weights(folder, network, card), card

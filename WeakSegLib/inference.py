"""Whole-volume prediction with a trained model folder.

2D / 2.5D models predict slice by slice along the card's axis; 3D models use MONAI's sliding-window
inference with the training patch size. The label volume is written on the exact grid (shape,
spacing, origin, direction) of the input.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from WeakSegLib.data import padded_size, stack_context
from WeakSegLib.devices import resolve_device
from WeakSegLib.errors import CancelledError, InputError
from WeakSegLib.model import load_model
from WeakSegLib.volume import Volume, normalize, read_volume, write_volume

EventSink = Callable[[dict], None]


@torch.no_grad()
def predict_probabilities(network: torch.nn.Module, images: torch.Tensor, device: torch.device,
                          batch_size: int = 16, should_stop: Callable[[], bool] | None = None,
                          on_batch: Callable[[int, int], None] | None = None, fill: float | None = None) -> torch.Tensor:
    """Softmax of ``network`` over ``images`` ``(N, k, *S)`` in batches → ``(N, classes, *S)`` on CPU.

    The spatial size is padded at the far end to a multiple of 16 with ``fill`` (default: the
    images' minimum, as training pads) and cropped back.
    """
    network.eval()
    spatial = tuple(images.shape[2:])
    target = padded_size(spatial)
    pad = []
    for s, t in zip(reversed(spatial), reversed(target)):
        pad += [0, t - s]
    out = []
    n = images.shape[0]
    fill = float(images.min()) if fill is None else fill
    for i in range(0, n, batch_size):
        if should_stop is not None and should_stop():
            raise CancelledError("prediction cancelled")
        x = images[i:i + batch_size].to(device, non_blocking=True)
        x = torch.nn.functional.pad(x, pad, value=fill) if any(pad) else x
        p = torch.softmax(network(x), 1)
        out.append(p[(slice(None), slice(None), *[slice(0, s) for s in spatial])].float().cpu())
        if on_batch is not None:
            on_batch(min(i + batch_size, n), n)
    return torch.cat(out)


def normalize_like_card(array: np.ndarray, card: dict) -> np.ndarray:
    """Normalise intensities exactly as the model was trained (card ``input.normalization``)."""
    norm = card["input"].get("normalization", {"method": "percentile"})
    return normalize(array, norm.get("method", "percentile"),
                     percentiles=tuple(norm.get("percentiles", (0.5, 99.5))),
                     window=tuple(norm.get("window", (-1000.0, 1000.0))))


def predict_volume(model: str | os.PathLike | tuple[torch.nn.Module, dict], volume: Volume, *,
                   device: str = "auto", probabilities: bool = False, on_event: EventSink | None = None,
                   should_stop: Callable[[], bool] | None = None) -> tuple[Volume, Volume | None]:
    """Predict a label volume for ``volume``.

    Args:
        model: model folder, or ``(network, card)`` as :func:`WeakSegLib.model.load_model` returns.
        volume: input image (raw intensities; normalised here as the card says).
        device: ``auto``, ``cpu`` or ``cuda``.
        probabilities: also return the foreground probability 1 − p(background), float32.
        on_event: receives ``{"event": "predict", "done": i, "of": n}`` progress events and warnings.

    Returns:
        ``(labels, probability)``: label values of the card (uint8/uint16) on the input grid, and
        the probability volume or None.
    """
    network, card = load_model(model) if not isinstance(model, tuple) else model
    emit = on_event or (lambda e: None)
    dev = resolve_device(device)
    network = network.to(dev)
    inp = card["input"]
    train_spacing = inp.get("spacing")
    if train_spacing and not np.allclose(train_spacing, volume.spacing, rtol=0.25):
        emit({"event": "warning", "message": f"image spacing {tuple(round(s, 3) for s in volume.spacing)} mm "
              f"differs from the training spacing {tuple(round(s, 3) for s in train_spacing)} mm"})
    if volume.array.ndim != 3:
        raise InputError(f"image must be 3D, got shape {volume.array.shape}")
    array = normalize_like_card(volume.array, card)
    dims = int(card["network"]["spatial_dims"])
    progress = (lambda i, n: emit({"event": "predict", "done": i, "of": n}))
    if dims == 2:
        axis, k = int(inp["axis"]), int(inp.get("context", 1))
        if int(card["network"]["in_channels"]) != k:
            raise InputError(f"model card says {card['network']['in_channels']} input channels but "
                             f"context {k}: the card is inconsistent")
        slices = torch.from_numpy(stack_context(np.moveaxis(array, axis, 0), k).copy())
        probs = predict_probabilities(network, slices, dev, should_stop=should_stop, on_batch=progress)
        probs = probs.movedim(0, axis + 1)  # (classes, z, y, x)
    else:
        from monai.inferers import sliding_window_inference

        roi = tuple(int(v) for v in inp.get("patch_size", padded_size(array.shape)))
        x = torch.from_numpy(array)[None, None].to(dev)
        with torch.no_grad():
            network.eval()
            logits = sliding_window_inference(x, roi, 1, network, overlap=0.25, mode="gaussian")
        probs = torch.softmax(logits, 1)[0].float().cpu()
        progress(1, 1)
    cls = probs.argmax(0).numpy()
    values = np.array([0] + [int(l["value"]) for l in card["labels"]])
    labels = values[cls].astype(np.uint16 if values.max() > 255 else np.uint8)
    prob = volume.with_array((1.0 - probs[0]).numpy().astype(np.float32)) if probabilities else None
    return volume.with_array(labels), prob


def predict_file(model_dir: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike, *,
                 prob_out: str | os.PathLike | None = None, device: str = "auto",
                 on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Read ``image``, predict, write the label volume (and probability map) atomically.

    Returns:
        ``{"prediction": path, "probability": path or None}``.
    """
    volume = read_volume(image)
    labels, prob = predict_volume(model_dir, volume, device=device, probabilities=prob_out is not None,
                                  on_event=on_event, should_stop=should_stop)
    write_volume(labels, out)
    if prob_out is not None and prob is not None:
        write_volume(prob, prob_out)
    return {"prediction": str(out), "probability": None if prob_out is None else str(prob_out)}

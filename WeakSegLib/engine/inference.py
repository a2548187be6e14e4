"""Whole-volume prediction with a trained model folder.

2D / 2.5D models predict slice by slice along the card's axis; 3D models use MONAI's sliding-window
inference with the training patch size. The label volume is written on the exact grid (shape,
spacing, origin, direction) of the input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from WeakSegLib import events
from WeakSegLib.engine.data import padded_size, stack_context
from WeakSegLib.engine.devices import resolve_device
from WeakSegLib.engine.model import load_model
from WeakSegLib.errors import CancelledError, InputError, OutputError
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import Staged
from WeakSegLib.io.card import ModelCard
from WeakSegLib.io.volume import Volume, check_output_volume, read_volume, stage_volume


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


def predict_volume(model: str | os.PathLike | tuple[torch.nn.Module, ModelCard], volume: Volume, *,
                   device: str = "auto", probabilities: bool = False, on_event: EventSink | None = None,
                   should_stop: Callable[[], bool] | None = None) -> tuple[Volume, Volume | None]:
    """Predict a label volume for ``volume``.

    Args:
        model: model folder, or ``(network, card)`` as :func:`WeakSegLib.engine.model.load_model` returns.
        volume: input image (raw intensities; normalised here as the card says).
        device: ``auto``, ``cpu`` or ``cuda``.
        probabilities: also return the foreground probability 1 − p(background), float32.
        on_event: receives ``predict`` progress events and warnings (:mod:`WeakSegLib.events`).

    Returns:
        ``(labels, probability)``: label values of the card (uint8/uint16) on the input grid, and
        the probability volume or None.
    """
    network, card = load_model(model) if not isinstance(model, tuple) else model
    emit = on_event or events.ignore
    dev = resolve_device(device)
    network = network.to(dev)
    inp = card.input
    if inp.spacing and not np.allclose(inp.spacing, volume.spacing, rtol=0.25):
        emit(events.warning(f"image spacing {tuple(round(s, 3) for s in volume.spacing)} mm differs from the "
                            f"training spacing {tuple(round(s, 3) for s in inp.spacing)} mm"))
    if volume.array.ndim != 3:
        raise InputError(f"image must be 3D, got shape {volume.array.shape}")
    if volume.array.min() == volume.array.max():
        emit(events.warning(f"every voxel of the image has the value {float(volume.array.min()):g}: "
                            "the prediction carries no information"))
    array = inp.normalization.apply(volume.array)
    progress = (lambda i, n: emit(events.predict(i, n)))
    if card.network.spatial_dims == 2:
        if card.network.in_channels != inp.context:
            raise InputError(f"model card says {card.network.in_channels} input channels but "
                             f"context {inp.context}: the card is inconsistent")
        slices = torch.from_numpy(stack_context(np.moveaxis(array, inp.axis, 0), inp.context).copy())
        probs = predict_probabilities(network, slices, dev, should_stop=should_stop, on_batch=progress)
        probs = probs.movedim(0, inp.axis + 1)  # (classes, z, y, x)
    else:
        from monai.inferers import sliding_window_inference

        roi = tuple(int(v) for v in (inp.patch_size or padded_size(array.shape)))
        x = torch.from_numpy(array)[None, None].to(dev)
        with torch.no_grad():
            network.eval()
            logits = sliding_window_inference(x, roi, 1, network, overlap=0.25, mode="gaussian")
        probs = torch.softmax(logits, 1)[0].float().cpu()
        progress(1, 1)
    cls = probs.argmax(0).numpy()
    values = np.array([0] + [entry.value for entry in card.labels])
    labels = values[cls].astype(np.uint16 if values.max() > 255 else np.uint8)
    prob = volume.with_array((1.0 - probs[0]).numpy().astype(np.float32)) if probabilities else None
    return volume.with_array(labels), prob


def predict_file(model_dir: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike, *,
                 prob_out: str | os.PathLike | None = None, device: str = "auto",
                 on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Read ``image``, predict, write the label volume (and probability map).

    Every output location is checked before any work, and the outputs are written together
    (:class:`~WeakSegLib.io.atomic.Staged`): verified, then renamed into place, so a failure leaves
    every previous file as it was.

    Returns:
        ``{"prediction": path, "probability": path or None}``.
    """
    outputs = [out] + ([prob_out] if prob_out is not None else [])
    if len({Path(p).resolve() for p in outputs}) < len(outputs):
        raise OutputError(f"{out}: the prediction and the probability map need two different files")
    for path in outputs:
        check_output_volume(path)
    model = load_model(model_dir)
    volume = read_volume(image)
    labels, prob = predict_volume(model, volume, device=device, probabilities=prob_out is not None,
                                  on_event=on_event, should_stop=should_stop)
    with Staged() as staged:
        stage_volume(staged, labels, out)
        if prob is not None:
            stage_volume(staged, prob, prob_out)
    return {"prediction": str(out), "probability": None if prob_out is None else str(prob_out)}

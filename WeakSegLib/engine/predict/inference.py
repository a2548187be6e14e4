"""Whole-volume prediction with a trained model folder, for one scan or many.

Each image is moved to the model's canonical space (orientation, spacing, intensities of its card);
2D / 2.5D models predict slice by slice along the card's axis; 3D models use MONAI's sliding-window
inference with the training patch size. The class probabilities go back onto the exact grid (shape,
spacing, origin, direction) of the input before the argmax.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from WeakSegLib import events
from WeakSegLib.config import DEFAULT_DEVICE
from WeakSegLib.engine.predict.devices import resolve_device
from WeakSegLib.engine.predict.model import load_model
from WeakSegLib.engine.predict.postprocess import apply as postprocessed
from WeakSegLib.engine.samples.data import padded_size, stack_context
from WeakSegLib.engine.samples.preprocess import back_to_input, canonicalize
from WeakSegLib.errors import CancelledError, InputError, OutputError, WeakSegError
from WeakSegLib.events import EventSink
from WeakSegLib.io.atomic import Staged, check_output_folder, remove_stale_temporaries
from WeakSegLib.io.card import ModelCard
from WeakSegLib.io.lock import FolderLock
from WeakSegLib.io.names import case_file, check_case_name
from WeakSegLib.io.segfile import SEGMENTATION_SUFFIX, stage_segmentation
from WeakSegLib.io.volume import (
    PREDICTION_SUFFIX,
    Volume,
    check_not_constant,
    check_output_volume,
    read_volume,
    stage_volume,
)


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


def _class_probabilities(network: torch.nn.Module, card: ModelCard, array: np.ndarray, device: torch.device,
                         progress: Callable[[int, int], None],
                         should_stop: Callable[[], bool] | None) -> torch.Tensor:
    """Softmax ``(classes, z, y, x)`` of ``network`` over a normalised volume ``array``: slice by slice
    along the card's axis (2D, 2.5D), or by MONAI's sliding windows of the training patch size (3D)."""
    inp = card.input
    if card.network.spatial_dims == 2:
        if card.network.in_channels != inp.context:
            raise InputError(f"model card says {card.network.in_channels} input channels but "
                             f"context {inp.context}: the card is inconsistent")
        slices = torch.from_numpy(stack_context(np.moveaxis(array, inp.axis, 0), inp.context).copy())
        probs = predict_probabilities(network, slices, device, should_stop=should_stop, on_batch=progress)
        return probs.movedim(0, inp.axis + 1)
    roi = tuple(int(v) for v in (inp.patch_size or padded_size(array.shape)))
    probs = window_probabilities(network, torch.from_numpy(np.ascontiguousarray(array))[None, None], roi, device)
    progress(1, 1)
    return probs[0]


@torch.no_grad()
def window_probabilities(network: torch.nn.Module, volume: torch.Tensor, roi: Sequence[int],
                         device: torch.device) -> torch.Tensor:
    """Softmax of a 3D ``network`` over ``volume`` ``(1, k, D, H, W)`` by MONAI's sliding windows of size
    ``roi`` (a quarter overlap, Gaussian weights) → ``(1, classes, D, H, W)`` on the CPU."""
    from monai.inferers import sliding_window_inference

    network.eval()
    logits = sliding_window_inference(volume.to(device), tuple(int(v) for v in roi), 1, network, overlap=0.25,
                                      mode="gaussian")
    return torch.softmax(logits, 1).float().cpu()


def predict_volume(model: str | os.PathLike | tuple[torch.nn.Module, ModelCard], volume: Volume, *,
                   device: str = DEFAULT_DEVICE, probabilities: bool = False, on_event: EventSink | None = None,
                   should_stop: Callable[[], bool] | None = None, name: str = "image") -> tuple[Volume, Volume | None]:
    """Predict a label volume for ``volume``.

    The image is moved to the model's canonical space (RAS, the training spacing, its intensity
    mapping: the card's ``input.preprocessing``, :mod:`WeakSegLib.engine.samples.preprocess`); the class
    probabilities are resampled back onto the input's grid before the argmax. A model trained before
    plans existed takes the image as it is stored (its card is read as such a plan:
    :func:`WeakSegLib.io.canonical.plan_before_plans`), with a warning when the image's spacing differs
    from the training spacing.

    Args:
        model: model folder, or ``(network, card)`` as :func:`WeakSegLib.engine.predict.model.load_model` returns.
        volume: input image (raw intensities).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        probabilities: also return the foreground probability 1 − p(background), float32.
        on_event: receives ``predict`` progress events and warnings (:mod:`WeakSegLib.events`).
        name: the image's name in messages.

    Returns:
        ``(labels, probability)``: label values of the card (uint8/uint16) on the input grid, after the
        card's connected-component post-processing (:mod:`~WeakSegLib.engine.predict.postprocess`; none for a card
        without one, or loaded with ``postprocess=False``), and the network's probability volume or None.
    """
    network, card = load_model(model) if not isinstance(model, tuple) else model
    emit = on_event or events.ignore
    dev = resolve_device(device)
    progress = (lambda i, n: emit(events.predict(i, n)))
    probs = input_probabilities(network.to(dev), card, volume, dev, progress=progress, should_stop=should_stop,
                                on_event=emit, name=name)
    labels = label_volume(card, probs)
    prob = volume.with_array((1.0 - probs[0]).numpy().astype(np.float32)) if probabilities else None
    return volume.with_array(labels), prob


def input_probabilities(network: torch.nn.Module, card: ModelCard, volume: Volume, device: torch.device, *,
                        progress: Callable[[int, int], None] = lambda i, n: None,
                        should_stop: Callable[[], bool] | None = None, on_event: EventSink | None = None,
                        name: str = "image", mirror: bool = False) -> torch.Tensor:
    """The softmax ``(classes, z, y, x)`` of ``network`` (on ``device``) over ``volume`` on the input's
    grid (:func:`predict_volume` says how). ``mirror``: the image is mirrored along the canonical
    axis in the network's plane (:func:`mirror_axis`) before the network sees it and the probabilities
    mirrored back (nnU-Net's test-time mirroring)."""
    inp = card.input
    if volume.array.ndim != 3:
        raise InputError(f"image must be 3D, got shape {volume.array.shape}")
    check_not_constant(volume.array, name, "segment")

    def network_probabilities(array: np.ndarray) -> torch.Tensor:
        if not mirror:
            return _class_probabilities(network, card, array, device, progress, should_stop)
        axis = mirror_axis(card)
        flipped = np.ascontiguousarray(np.flip(array, axis))
        return _class_probabilities(network, card, flipped, device, progress, should_stop).flip(axis + 1)

    plan = inp.preprocessing
    for message in plan.warnings(volume):
        (on_event or events.ignore)(events.warning(message))
    canonical = canonicalize(volume, plan).volume
    probs = network_probabilities(canonical.array)
    return torch.from_numpy(back_to_input(probs.numpy(), canonical, volume, plan))


def mirror_axis(card: ModelCard) -> int:
    """The canonical ``(z, y, x)`` axis test-time mirroring flips: ``x`` (left–right), or ``y`` for a 2D
    model that slices along ``x``."""
    return 1 if card.network.spatial_dims == 2 and card.input.axis == 2 else 2


def label_volume(card: ModelCard, probs: torch.Tensor) -> np.ndarray:
    """The label values of ``card`` (uint8/uint16) of the argmax of ``probs`` ``(classes, z, y, x)``, after
    the card's connected-component post-processing (:mod:`~WeakSegLib.engine.predict.postprocess`)."""
    cls = probs.argmax(0).numpy()
    values = np.array([0] + [entry.value for entry in card.labels])
    labels = values[cls].astype(np.uint16 if values.max() > 255 else np.uint8)
    if card.postprocess_steps():
        labels = postprocessed(labels, card.postprocess_steps())
    return labels


def predict_file(model_dir: str | os.PathLike | tuple[torch.nn.Module, ModelCard], image: str | os.PathLike,
                 out: str | os.PathLike, *, prob_out: str | os.PathLike | None = None, device: str = DEFAULT_DEVICE,
                 on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                 postprocess: bool = True) -> dict:
    """Read ``image``, predict, write the label volume (and probability map). An ``out`` ending in
    ``.seg.nrrd`` is written as a 3D Slicer segmentation file (:mod:`WeakSegLib.io.segfile`).

    Every output location is checked before any work, and the outputs are written together
    (:class:`~WeakSegLib.io.atomic.Staged`): verified, then renamed into place, so a failure leaves
    every previous file as it was.

    Args:
        model_dir: model folder, or ``(network, card)`` already loaded.
        postprocess: apply the card's post-processing (a folder's; a loaded card is taken as it is).

    Returns:
        ``{"prediction": path, "probability": path or None}``.
    """
    outputs = [out] + ([prob_out] if prob_out is not None else [])
    if len({Path(p).resolve() for p in outputs}) < len(outputs):
        raise OutputError(f"{out}: the prediction and the probability map need two different files")
    for path in outputs:
        check_output_volume(path)
        remove_stale_temporaries(Path(path).parent, [Path(path).name])  # what a killed run left of this output
    model = model_dir if isinstance(model_dir, tuple) else load_model(model_dir, postprocess)
    volume = read_volume(image)
    labels, prob = predict_volume(model, volume, device=device, probabilities=prob_out is not None, name=str(image),
                                  on_event=on_event, should_stop=should_stop)
    with Staged() as staged:
        if str(out).lower().endswith(SEGMENTATION_SUFFIX):  # a Slicer segmentation: segments named and coloured
            stage_segmentation(staged, labels, [(e.value, e.name, e.color) for e in model[1].labels], out)
        else:
            stage_volume(staged, labels, out)
        if prob is not None:
            stage_volume(staged, prob, prob_out)
    return {"prediction": str(out), "probability": None if prob_out is None else str(prob_out)}


@dataclass
class CaseResult:
    """One case of :func:`predict_cases`: the file written, or why the case was skipped."""

    name: str
    image: str
    prediction: str | None = None
    error: str | None = None


def prediction_path(out_dir: str | os.PathLike, name: str, suffix: str = PREDICTION_SUFFIX) -> Path:
    """Where the prediction of case ``name`` goes in ``out_dir``: a file directly inside it, the name
    checked (:func:`WeakSegLib.io.names.case_file`)."""
    return case_file(out_dir, name, suffix)


def predict_cases(model_dir: str | os.PathLike, cases: Sequence[tuple[str, str]], out_dir: str | os.PathLike, *,
                  device: str = DEFAULT_DEVICE, on_event: EventSink | None = None,
                  should_stop: Callable[[], bool] | None = None, suffix: str = PREDICTION_SUFFIX,
                  postprocess: bool = True) -> list[CaseResult]:
    """Predict every ``(name, image)`` of ``cases`` into ``out_dir/<name><suffix>`` (default ``.nii.gz``;
    ``.seg.nrrd``: Slicer segmentation files) with one model (its card's post-processing applied unless
    ``postprocess`` is False).

    The case names (each a safe file name, :mod:`WeakSegLib.io.names`), the output folder and the model
    are checked before the first case; the folder is locked while this run writes it (a second run into
    it is refused; the temporary files of a killed run are removed). A case that fails (an unreadable or
    corrupt image, an output that cannot be written) is reported — a ``case`` event with its ``error`` —
    and skipped, and the others are still written. Cancelling stops at once.

    Returns:
        One :class:`CaseResult` per case, in order.
    """
    names = [check_case_name(name) for name, _ in cases]  # every name before any work
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"two cases are named {', '.join(twice)}: their predictions would overwrite each other")
    out = check_output_folder(out_dir, "prediction folder")
    model = load_model(model_dir, postprocess)
    with FolderLock(out, "prediction"):  # one run writes the folder; what a killed one left is removed
        return _predict_each(model, cases, out, device, on_event or events.ignore, should_stop, suffix)


def _predict_each(model: tuple[torch.nn.Module, ModelCard], cases: Sequence[tuple[str, str]], out: Path,
                  device: str, emit: EventSink, should_stop: Callable[[], bool] | None,
                  suffix: str) -> list[CaseResult]:
    results = []
    for done, (name, image) in enumerate(cases, 1):
        result = CaseResult(name, str(image))
        try:
            result.prediction = predict_file(model, image, prediction_path(out, name, suffix), device=device,
                                             on_event=emit, should_stop=should_stop)["prediction"]
            emit(events.case(done, len(cases), name, prediction=result.prediction))
        except CancelledError:
            raise
        except WeakSegError as exc:
            result.error = str(exc)
            emit(events.case(done, len(cases), name, error=result.error))
        results.append(result)
    return results

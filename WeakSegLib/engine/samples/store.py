"""Training slices on disk, read per batch: memory bounded by the batch, not by the cohort.

:class:`SliceStore` keeps each case's samples (:class:`~WeakSegLib.engine.samples.data.CaseSamples`) as
uncompressed ``.npy`` files, slice-major, so one slice (with its 2.5D context) is one contiguous read
through a memory map that is dropped right after. :meth:`SliceStore.batch` gives the same fields as
:meth:`WeakSegLib.engine.samples.data.SampleSet.batch`; a batch is padded to its own largest slice (a
multiple of :data:`~WeakSegLib.nets.segmentation.SIZE_MULTIPLE`), so for one case it equals the
in-memory batch exactly. Box masks are rasterised from the box rows at read time.

:class:`StoreBatches` feeds the batches of an epoch through ``torch.utils.data.DataLoader`` worker
processes (MONAI's ``DataLoader``) ahead of the training step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from WeakSegLib.engine.samples.data import (
    Case,
    CaseSamples,
    case_samples,
    objects,
    padded_size,
    rows_to_mask,
    stack_context,
)
from WeakSegLib.io.labels import IGNORE
from WeakSegLib.io.volume import IntensityMap

_ARRAYS = ("planes", "labels", "eval_labels", "sizes")


class SliceStore:
    """The samples of a cohort in ``folder`` (created; emptied first), 2D or 2.5D."""

    def __init__(self, folder: str | os.PathLike, label_values: Sequence[int], *, axis: int = 0,
                 context: int = 1) -> None:
        self.folder = Path(folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.label_values, self.axis, self.context = list(label_values), axis, context
        self.counts: list[int] = []  # samples per case
        self.shapes: list[tuple[int, ...]] = []  # each case's slice shape
        self.fills: list[float] = []
        self.rows: list[np.ndarray] = []  # each case's box rows (local sample index)
        self.has_eval: list[bool] = []
        self.has_sizes: list[bool] = []
        self.maps: list[IntensityMap] = []  # each case's intensity mapping, applied when read
        self._labelled: list[np.ndarray] = []
        self.full: list[bool] = []  # each case: a mask case (mixed supervision)
        self._objects: list[np.ndarray] = []  # each case's samples that label an object

    # ---- writing ------------------------------------------------------------------------------
    def add(self, case: Case) -> None:
        """Write one case's samples (its arrays can be dropped afterwards). Its intensities are mapped
        when read (:meth:`set_intensity_maps`; until then as they are)."""
        view = case_samples(case, self.label_values, spatial_dims=2, axis=self.axis)
        index = len(self.counts)
        for name in _ARRAYS:
            value = getattr(view, name)
            if value is not None:
                np.save(self.folder / f"{index}-{name}.npy", np.ascontiguousarray(value))
        self.counts.append(len(view.planes))
        self.shapes.append(tuple(view.planes.shape[1:]))
        self.fills.append(view.fill)
        self.maps.append(IntensityMap())
        self.rows.append(view.box_rows)
        self.has_eval.append(view.eval_labels is not None)
        self.has_sizes.append(view.sizes is not None)
        self._labelled.append((view.labels != IGNORE).reshape(len(view.labels), -1).any(1))
        self.full.append(view.full)
        self._objects.append(objects(view.labels))
        (self.folder / "store.json").write_text(json.dumps({"cases": len(self.counts), "samples": sum(self.counts)}))

    def set_intensity_maps(self, maps: Sequence[IntensityMap]) -> None:
        """The intensity mapping of each case (:class:`~WeakSegLib.io.volume.IntensityMap`)."""
        self.maps = list(maps)

    # ---- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(self.counts)

    def largest(self) -> tuple[int, ...]:
        """The largest slice shape, padded as a batch pads it."""
        return padded_size(np.max(self.shapes, axis=0))

    @property
    def classes(self) -> int:
        return len(self.label_values)

    @property
    def case_index(self) -> np.ndarray:
        """``(N,)`` the case of each sample."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def labelled(self) -> torch.Tensor:
        """``(N,)`` bool: samples with at least one labelled pixel."""
        return torch.from_numpy(np.concatenate(self._labelled))

    def boxed(self) -> torch.Tensor:
        """``(N,)`` bool: samples that hold a box or an object of a mask case (as :meth:`SampleSet.boxed`)."""
        out = np.zeros(len(self), bool)
        starts = np.cumsum([0, *self.counts[:-1]])
        for start, rows, full, found in zip(starts, self.rows, self.full, self._objects):  # rows: [sample, class, …]
            out[start + rows[:, 0]] = True
            if full:
                out[start:start + len(found)] |= found
        return torch.from_numpy(out)

    def _read(self, case: int, name: str, start: int, stop: int) -> np.ndarray:
        array = np.load(self.folder / f"{case}-{name}.npy", mmap_mode="r")
        out = np.array(array[start:stop])
        del array  # unmap: the pages read leave this process
        return out

    def _planes(self, case: int, start: int, stop: int) -> np.ndarray:
        return self.maps[case].apply(self._read(case, "planes", start, stop))

    def _fill(self, case: int) -> float:
        return float(self.maps[case].apply(np.float32(self.fills[case])))

    def case(self, case: int) -> CaseSamples:
        """All samples of one case, read from disk (intensities mapped)."""
        n = self.counts[case]
        return CaseSamples(self._planes(case, 0, n), self._read(case, "labels", 0, n), self.rows[case],
                           self._read(case, "eval_labels", 0, n) if self.has_eval[case] else None,
                           self._read(case, "sizes", 0, n) if self.has_sizes[case] else None, self._fill(case),
                           self.full[case])

    def _locate(self, index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        starts = np.cumsum([0] + self.counts)
        flat = np.asarray(index, dtype=np.int64)
        cases = np.searchsorted(starts, flat, side="right") - 1
        return cases, flat - starts[cases]

    def batch(self, index: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """The samples ``index`` (global, in this order) as a batch: ``image`` ``(B, k, *S)``, ``labels``
        (long), ``box_mask`` ``(B, C, *S)``, ``boxes`` (rows renumbered 0..B-1), ``valid``, ``sizes``
        when a case has size labels, and ``full`` when a case is a mask case; ``S`` is the largest slice of the batch, padded to a multiple of 16."""
        cases, locals_ = self._locate(index)
        half = self.context // 2
        planes, labels, rows, order = [], [], [], []
        first_row = np.cumsum([0] + [len(r) for r in self.rows])
        for b, (case, k) in enumerate(zip(cases.tolist(), locals_.tolist())):
            n = self.counts[case]
            lo, hi = max(0, k - half), min(n, k + half + 1)
            block = self._planes(case, lo, hi)
            take = np.clip(np.arange(k - half, k + half + 1), 0, n - 1) - lo  # edge slices repeated
            planes.append((block[take], self._fill(case)))
            labels.append(self._read(case, "labels", k, k + 1)[0])
            found = np.flatnonzero(self.rows[case][:, 0] == k)
            mine = self.rows[case][found].copy()
            mine[:, 0] = b
            rows.append(mine)
            order.append(found + first_row[case])  # the rows' order in the whole cohort
        target = padded_size(np.max([p.shape[1:] for p, _ in planes], axis=0))
        B = len(planes)
        image = np.empty((B, self.context, *target), np.float32)
        label = np.zeros((B, *target), np.uint8)
        valid = np.zeros((B, *target), bool)
        for b, ((plane, fill), lab) in enumerate(zip(planes, labels)):
            region = (slice(None), *[slice(0, s) for s in plane.shape[1:]])
            image[b] = fill
            image[b][region] = plane
            label[b][region[1:]] = lab
            valid[b][region[1:]] = True
        boxes = np.concatenate(rows) if rows else np.zeros((0, 6), np.int64)
        boxes = boxes[np.argsort(np.concatenate(order), kind="stable")] if rows else boxes  # as SampleSet.batch
        out = {"image": torch.from_numpy(image), "labels": torch.from_numpy(label).long(),
               "box_mask": torch.from_numpy(rows_to_mask(boxes, B, self.classes, target)),
               "boxes": torch.from_numpy(boxes), "valid": torch.from_numpy(valid)}
        if any(self.has_sizes):
            sizes = np.full((B, self.classes), -1.0, np.float32)
            for b, (case, k) in enumerate(zip(cases.tolist(), locals_.tolist())):
                if self.has_sizes[case]:
                    sizes[b] = self._read(case, "sizes", k, k + 1)[0]
            out["sizes"] = torch.from_numpy(sizes)
        if any(self.full):
            out["full"] = torch.tensor([self.full[case] for case in cases.tolist()])
        return out

    def eval_cases(self, keep: Callable[[int], bool] = lambda case: True
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Each case with evaluation labels that ``keep(case)`` accepts: ``(case, images (n, k, *S), eval
        labels (n, *S))``."""
        for case in range(len(self.counts)):
            if self.has_eval[case] and keep(case):
                samples = self.case(case)
                yield case, stack_context(samples.planes, self.context), samples.eval_labels

    def close(self) -> None:
        """Delete the files."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _as_is(batch: dict) -> dict:
    return batch


class _Batches(torch.utils.data.Dataset):
    """The store as a dataset of batches: item = a batch of given sample indices."""

    def __init__(self, store: SliceStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index):
        return self.store.batch(index)


class StoreBatches:
    """The batches of each epoch, read by DataLoader workers ahead of the step.

    The sample indices of every batch (the recipe's selection of the epoch's draw) are computed in
    this process, so the batches are the same with any number of workers; ``workers`` 0 reads in this
    process.
    """

    def __init__(self, store: SliceStore, workers: int = 0, pin_memory: bool = False) -> None:
        self.store, self.workers, self.pin_memory = store, workers, pin_memory

    def epoch(self, plan: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor] | None]]:
        """``(indices, batch)`` for each entry of ``plan``; an empty entry gives ``(indices, None)``."""
        from monai.data import DataLoader

        loader = iter(DataLoader(_Batches(self.store), batch_size=None, sampler=[p.tolist() for p in plan if len(p)],
                                 num_workers=self.workers, pin_memory=self.pin_memory, collate_fn=_as_is,
                                 prefetch_factor=2 if self.workers else None))
        for index in plan:
            yield index, (next(loader) if len(index) else None)

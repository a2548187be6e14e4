"""The epoch's draw: every batch holds at least a fraction of boxed samples (a lesion's few boxed slices
among many empty ones), against a loop over batches and positions; a batch that already holds enough is
left as drawn."""

import math

import pytest
import torch

from WeakSegLib.engine.train.loop import LoopSettings, _passes, epoch_order


def slow_order(settings: LoopSettings, epoch: int) -> torch.Tensor:
    """Batch by batch, position by position: unboxed samples replaced by the next boxed sample of the
    boxed draw until the batch holds enough."""
    plain = epoch_order(LoopSettings(settings.samples, settings.batch_size, settings.epochs, settings.seed,
                                     settings.batches), epoch)
    pool = [int(i) for i in settings.boxed.nonzero()[:, 0]]
    need = math.ceil(settings.boxed_fraction * settings.batch_size)
    batches = [list(map(int, plain[b * settings.batch_size:(b + 1) * settings.batch_size]))
               for b in range(settings.batches)]
    lacking = sum(max(0, need - sum(bool(settings.boxed[i]) for i in batch)) for batch in batches)
    extra = iter(pool[int(i)] for i in _passes(len(pool), lacking, (settings.seed * 100003 + epoch) * 104729 + 1))
    out = []
    for batch in batches:
        missing = need - sum(bool(settings.boxed[i]) for i in batch)
        for p, i in enumerate(batch):
            if missing > 0 and not settings.boxed[i]:
                batch[p] = next(extra)
                missing -= 1
        out += batch
    return torch.tensor(out)


@pytest.mark.parametrize("fraction, boxed_slices", [(0.5, range(3, 12)), (1 / 3, range(3, 12)), (0.5, [7]),
                                                    (0.75, range(0, 40, 3))])
def test_every_batch_holds_its_share_of_boxed_samples(fraction, boxed_slices):
    boxed = torch.zeros(41, dtype=torch.bool)
    boxed[list(boxed_slices)] = True
    settings = LoopSettings(41, 8, 5, 3, 6, boxed=boxed, boxed_fraction=fraction)
    for epoch in range(5):
        order = epoch_order(settings, epoch)
        torch.testing.assert_close(order, slow_order(settings, epoch), rtol=0, atol=0)
        need = math.ceil(fraction * 8)
        assert (boxed[order.view(6, 8)].sum(1) >= need).all()
        assert torch.equal(order, epoch_order(settings, epoch))  # the same draw for a resumed run
        plain = epoch_order(LoopSettings(41, 8, 5, 3, 6), epoch).view(6, 8)
        enough = boxed[plain].sum(1) >= need
        assert torch.equal(order.view(6, 8)[enough], plain[enough])  # batches with enough: as drawn
        changed = order.view(6, 8) != plain
        assert not (changed & boxed[plain]).any()  # only unboxed samples make room


def test_without_boxes_or_with_boxes_everywhere_the_draw_is_unchanged():
    plain = epoch_order(LoopSettings(30, 8, 1, 0, 4), 0)
    for boxed in (torch.zeros(30, dtype=torch.bool), torch.ones(30, dtype=torch.bool)):
        assert torch.equal(epoch_order(LoopSettings(30, 8, 1, 0, 4, boxed=boxed, boxed_fraction=0.5), 0), plain)

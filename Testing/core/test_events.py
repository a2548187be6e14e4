"""Progress of a job from its events: training batches and epochs, prediction, tightening."""

import pytest

from WeakSegLib import events


def test_fraction_done_reads_every_kind_of_progress_event():
    assert events.fraction_done([]) is None
    assert events.fraction_done([events.start(epochs=4, first_epoch=1), events.warning("w")]) is None
    training = [events.start(epochs=4, first_epoch=1), events.batch(2, 1, 4)]
    assert events.fraction_done(training) == pytest.approx((1 + 1 / 4) / 4)
    assert events.fraction_done(training + [events.epoch({"epoch": 3, "loss": 0.1}, 4)]) == 0.75
    assert events.fraction_done([events.predict(3, 12)]) == 0.25
    assert events.fraction_done([events.start(kind="tighten", boxes=4), events.progress(4, 4)]) == 1.0
    assert events.fraction_done([events.predict(5, 4)]) == 1.0  # never beyond done

"""Waiting for a background worker's events in tests (import as ``from worker_events import wait_for``)."""

from __future__ import annotations

import time


def wait_for(handle, kind: str, timeout: float = 120) -> dict:
    """The first event of ``kind`` from the job ``handle`` (a :class:`WeakSegLib.app.jobs.JobHandle`);
    fails with the worker's log when it exits or ``timeout`` seconds pass without one."""
    end = time.time() + timeout
    while time.time() < end:
        for event in handle.events():
            if event["event"] == kind:
                return event
        if handle.poll() is not None:
            handle.events()
            break
        time.sleep(0.05)
    raise AssertionError(f"no {kind!r} event; worker log:\n{handle.log()}")

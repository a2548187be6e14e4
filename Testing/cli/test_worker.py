"""The background worker as a real subprocess: events, exit codes, cancel, kill and resume."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from worker_events import wait_for

from WeakSegLib.app.jobs import EXIT_BAD_INPUT, EXIT_BAD_JOB, EXIT_CANCELLED, EXIT_OK, GpuProbe, start_job
from WeakSegLib.io.volume import read_label_volume


def train_job(spine_ct, boxes, out, epochs):
    return {"kind": "train", "out": str(out), "cases": [{"image": spine_ct["image"], "boxes": boxes}],
            "config": {"epochs": epochs, "device": "cpu", "channels": [8, 16, 32, 64, 128]}}


def test_train_then_predict_jobs(spine_ct, spine_boxes, tmp_path):
    job = train_job(spine_ct, spine_boxes, tmp_path / "m", 2)
    job["config"]["recipe"] = "auto"  # the panel's default
    handle = start_job(job, tmp_path / "job1")
    assert handle.wait(300) == EXIT_OK, handle.log()
    kinds = [e["event"] for e in handle.all_events()]
    assert kinds.count("epoch") == 2 and kinds[-1] == "done" and handle.status == "finished"
    assert json.loads((tmp_path / "m" / "model.json").read_text())["recipe"] == "boxsup"  # per-slice boxes
    job = {"kind": "predict", "model": str(tmp_path / "m"), "image": spine_ct["image"],
           "out": str(tmp_path / "p.nii.gz"), "device": "cpu"}
    handle = start_job(job, tmp_path / "job2")
    assert handle.wait(120) == EXIT_OK, handle.log()
    events = handle.events()
    assert events[-1]["event"] == "done" and any(e["event"] == "predict" for e in events)
    assert read_label_volume(tmp_path / "p.nii.gz").shape == read_label_volume(spine_ct["mask"]).shape


def test_cancel_keeps_a_consistent_checkpoint_and_resumes(spine_ct, spine_boxes, tmp_path):
    job = train_job(spine_ct, spine_boxes, tmp_path / "m", 200)
    handle = start_job(job, tmp_path / "job")
    wait_for(handle, "epoch")
    assert handle.cancel(timeout=60) == EXIT_CANCELLED
    assert any(e["event"] == "cancelled" for e in handle.all_events())
    done = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 200
    job["config"]["epochs"] = done + 1
    handle = start_job(job, tmp_path / "job")
    assert handle.wait(300) == EXIT_OK, handle.log()
    start = [e for e in handle.all_events() if e["event"] == "start"][0]
    assert start["first_epoch"] == done + 1


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_killed_worker_resumes_from_last_checkpoint(spine_ct, spine_boxes, tmp_path):
    job = train_job(spine_ct, spine_boxes, tmp_path / "m", 200)
    handle = start_job(job, tmp_path / "job")
    wait_for(handle, "epoch")
    os.kill(handle.process.pid, signal.SIGKILL)
    assert handle.wait(60) == -signal.SIGKILL
    first_log = handle.log()
    done = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["epoch"]
    job["config"]["epochs"] = done + 1
    handle = start_job(job, tmp_path / "job")
    assert handle.wait(300) == EXIT_OK, handle.log()
    start = [e for e in handle.all_events() if e["event"] == "start"][0]
    assert start["first_epoch"] == done + 1
    log = handle.log()  # one log for both runs: the second appended after the first
    assert log.startswith(first_log) and log.count(" start ") == 2 and len(log) > len(first_log)


def test_bad_input_and_bad_job_exit_codes(spine_ct, tmp_path):
    job = {"kind": "train", "out": str(tmp_path / "m"), "cases": [{"image": spine_ct["image"],
           "boxes": str(tmp_path / "none.json")}], "config": {"epochs": 1}}
    handle = start_job(job, tmp_path / "a")
    assert handle.wait(120) == EXIT_BAD_INPUT
    error = [e for e in handle.events() if e["event"] == "error"][0]
    assert "box file not found" in error["message"]
    job["config"] = {"epochs": 1, "learning_speed": 3}
    handle = start_job(job, tmp_path / "b")
    assert handle.wait(120) == EXIT_BAD_INPUT
    assert "unknown settings: learning_speed" in handle.events()[-1]["message"]
    (tmp_path / "bad.json").write_text("{oops")
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "WeakSegLib.app.worker", str(tmp_path / "bad.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_BAD_JOB and "not valid JSON" in json.loads(proc.stdout.splitlines()[-1])["message"]


def test_tightener_job_cancels_resumes_and_tightens(spine_ct, tmp_path):
    job = {"kind": "tighten-train", "out": str(tmp_path / "t"),
           "cases": [{"image": spine_ct["image"], "mask": spine_ct["mask"]}],
           "config": {"patch": 8, "epochs": 300, "device": "cpu", "axis": spine_ct["axis"]}}
    handle = start_job(job, tmp_path / "job")
    wait_for(handle, "epoch")
    assert handle.cancel(timeout=60) == EXIT_CANCELLED
    done = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 300
    job["config"]["epochs"] = done + 1
    handle = start_job(job, tmp_path / "job")
    assert handle.wait(300) == EXIT_OK, handle.log()
    events = handle.all_events()
    assert [e for e in events if e["event"] == "start"][0]["first_epoch"] == done + 1
    assert events[-1]["event"] == "done" and "val_accuracy" in events[-1]["metrics"]

    from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, load_boxes, save_boxes

    mask = read_label_volume(spine_ct["mask"])
    save_boxes(BoxSet(boxes_from_mask(mask.array, "3d", margin=2), mask.shape, {1: "vertebrae"}, mask.geometry()),
               tmp_path / "b3.json")
    job = {"kind": "tighten", "model": str(tmp_path / "t"), "image": spine_ct["image"],
           "boxes": str(tmp_path / "b3.json"), "out": str(tmp_path / "b2.json"), "settings": {"stride": 2}}
    handle = start_job(job, tmp_path / "job2")
    assert handle.wait(120) == EXIT_OK, handle.log()
    last = handle.all_events()[-1]
    assert last["event"] == "done" and last["out"] == str(tmp_path / "b2.json")
    assert len(load_boxes(tmp_path / "b2.json").boxes) == last["boxes"][0]["slices_out"]
    job["settings"] = {"stride": 2, "bogus": 1}
    handle = start_job(job, tmp_path / "job3")
    assert handle.wait(60) == EXIT_BAD_INPUT and "bogus" in handle.all_events()[-1]["message"]


LAUNCHER = Path(__file__).resolve().parents[1] / "helpers" / "ctk_launcher.py"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie left for its parent to reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not hasattr(os, "killpg") or not Path("/proc").is_dir(), reason="POSIX process groups, /proc")
def test_cancel_under_slicers_launcher_stops_the_real_worker_without_blocking(spine_ct, spine_boxes, tmp_path,
                                                                             monkeypatch):
    """Inside Slicer the worker runs under ``PythonSlicer``, a launcher that starts the interpreter as its
    child and forwards no signal (``ctk_launcher.py``). Cancel must stop that child, not orphan it: the
    request returns at once, the job is over only when the child has gone, with the child's own
    "cancelled" event and a checkpoint kept, and it reads as cancelled although the launcher died of the
    signal."""
    monkeypatch.setenv("CTK_LAUNCHER_CHILD_PID", str(tmp_path / "child.pid"))
    handle = start_job(train_job(spine_ct, spine_boxes, tmp_path / "m", 500), tmp_path / "job",
                       python=[sys.executable, str(LAUNCHER)])
    wait_for(handle, "epoch")
    child = int((tmp_path / "child.pid").read_text())
    assert child != handle.process.pid and _alive(child)
    handle.request_cancel()
    assert not handle.finished()  # returned without waiting for the worker's next batch
    deadline = time.monotonic() + 120
    while not handle.finished():
        assert time.monotonic() < deadline, handle.log()
        time.sleep(0.05)
    assert not _alive(child), "the real worker outlived the cancel"
    assert handle.process.returncode == -signal.SIGTERM  # the launcher itself died of the signal …
    assert handle.exit_code == EXIT_CANCELLED and handle.status == "cancelled"  # … and it reads as a cancel
    assert any(e["event"] == "cancelled" for e in handle.all_events())
    assert torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def test_the_gpu_count_is_asked_without_waiting(tmp_path, monkeypatch):
    """The panels learn the GPU count from ``nvidia-smi -L`` without blocking Slicer while it runs (it may
    take seconds): a slow stand-in answers two GPUs after the probe has returned."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nsleep 1\necho 'GPU 0: A (UUID: a)'\necho 'GPU 1: B (UUID: b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    probe = GpuProbe()
    assert probe.result() is None  # still running: not waited for
    deadline = time.monotonic() + 30
    while probe.result() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert probe.result() == 2
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert GpuProbe().result() == 0  # no driver: no GPU

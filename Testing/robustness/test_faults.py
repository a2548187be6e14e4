"""Faults while writing and running: a full disk during prediction and at a checkpoint, two runs into
one model folder, a run killed while holding its folder, a read-only output folder.

The full disk is a real one where the test may mount a small tmpfs (as root on Linux); elsewhere the
write call is made to fail the way a full disk makes it fail (see :func:`full_disk`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from worker_events import wait_for

from WeakSegLib.app import worker
from WeakSegLib.app.cli import main
from WeakSegLib.app.jobs import EXIT_BAD_INPUT, EXIT_OK, start_job
from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.train.training import train
from WeakSegLib.io import atomic

SMALL = ["--channels", "4", "8", "16", "32", "64"]


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    """Mount a tmpfs of ``size`` on ``folder``; whether it worked (needs root on Linux)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if sys.platform != "linux" or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0


@contextlib.contextmanager
def full_disk(folder: Path, monkeypatch, leave: int):
    """``folder`` on a disk with about ``leave`` bytes free: a small tmpfs filled up, or — where no
    tmpfs can be mounted — writes into it failing as on a full disk: SimpleITK's NIfTI writer then
    writes part of the file and reports nothing, other writes raise ENOSPC."""
    if mount_tmpfs(folder, "8m"):
        try:
            yield "tmpfs"
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return
    import SimpleITK as sitk

    write_image = sitk.WriteImage

    def half_written(image, path, *args, **kwargs):
        write_image(image, path, *args, **kwargs)
        if str(path).startswith(str(folder)):
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])

    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).startswith(str(folder)):
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(sitk, "WriteImage", half_written)
    monkeypatch.setattr(atomic, "open", failing_open, raising=False)
    monkeypatch.setattr(atomic, "_disk_full", lambda path: str(path).startswith(str(folder)))
    yield "patched"


def fill(folder: Path, leave: int) -> None:
    """Fill the disk of ``folder`` until about ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def one_error_line(capfd) -> str:
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weakseg: error: "), lines
    return lines[0]


def test_disk_full_during_predict_keeps_the_previous_prediction(good, tmp_path, monkeypatch, capfd):
    disk = tmp_path / "disk"
    with full_disk(disk, monkeypatch, leave=4096) as kind:
        old = disk / "pred.nii"
        old.write_bytes(b"a good earlier prediction")
        if kind == "tmpfs":
            fill(disk, 4096)
        names = sorted(os.listdir(disk))
        capfd.readouterr()
        code = main(["predict", "--model", good["model"], "--image", good["image"], "--out", str(old), "--device", "cpu",
                     "--quiet"])
        line = one_error_line(capfd)
        assert code == EXIT_BAD_INPUT and "pred.nii: cannot be written: disk full" in line
        assert old.read_bytes() == b"a good earlier prediction" and sorted(os.listdir(disk)) == names


def test_disk_full_at_a_checkpoint_keeps_the_last_one(good, tmp_path, monkeypatch, capfd):
    model = tmp_path / "model"
    assert main(["train", "--image", good["image"], "--boxes", good["boxes"], "--out", str(model), "--epochs", "1",
                 *SMALL, "--device", "cpu", "--quiet"]) == EXIT_OK
    disk = tmp_path / "disk"
    with full_disk(disk, monkeypatch, leave=64 << 10) as kind:
        shutil.copytree(model, disk / "model")
        if kind == "tmpfs":
            fill(disk, 64 << 10)
        before = {p.name: p.read_bytes() for p in (disk / "model").iterdir()}
        capfd.readouterr()
        code = main(["train", "--image", good["image"], "--boxes", good["boxes"], "--out", str(disk / "model"),
                     "--epochs", "2", *SMALL, "--device", "cpu", "--quiet"])
        line = one_error_line(capfd)
        assert code == EXIT_BAD_INPUT and "checkpoint.pt: cannot be written: disk full" in line
        after = {p.name: p.read_bytes() for p in (disk / "model").iterdir()}
        assert after == before  # the epoch-1 checkpoint and model intact; no temporary file, no lock left


def long_training_job(good, out: Path) -> dict:
    return {"kind": "train", "out": str(out), "cases": [{"image": good["image"], "boxes": good["boxes"]}],
            "config": {"epochs": 1000, "device": "cpu", "channels": [4, 8, 16, 32, 64]}}


def test_a_second_run_into_a_folder_in_use_is_refused(good, tmp_path, capfd):
    out = tmp_path / "model"
    handle = start_job(long_training_job(good, out), tmp_path / "job")
    try:
        wait_for(handle, "epoch")
        capfd.readouterr()
        code = main(["train", "--image", good["image"], "--boxes", good["boxes"], "--out", str(out), "--epochs", "1",
                     *SMALL, "--device", "cpu", "--quiet"])
        line = one_error_line(capfd)
        assert code == EXIT_BAD_INPUT
        assert f"{out} is in use by training (pid {handle.process.pid} on " in line and "choose another output" in line
        assert handle.poll() is None  # the first run goes on
    finally:
        handle.cancel(timeout=60)
    assert not (out / ".weakseg.lock").exists()  # released when the first run stopped


def test_the_lock_of_a_killed_run_is_taken_over_and_its_leftovers_removed(good, tmp_path):
    out = tmp_path / "model"
    handle = start_job(long_training_job(good, out), tmp_path / "job")
    wait_for(handle, "epoch")
    os.kill(handle.process.pid, signal.SIGKILL)
    handle.wait(60)
    owner = json.loads((out / ".weakseg.lock").read_text())
    assert owner["pid"] == handle.process.pid  # left behind by the killed run
    orphan = out / ".checkpoint.pt.k1ll3d00.tmp"  # what a kill during a checkpoint write leaves
    orphan.write_bytes(b"half a checkpoint")
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    events = []
    train([TrainCase(good["image"], boxes=good["boxes"])],
          TrainConfig(epochs=done + 1, device="cpu", channels=(4, 8, 16, 32, 64)), out, on_event=events.append)
    assert events[0]["first_epoch"] == done + 1
    assert not orphan.exists() and not (out / ".weakseg.lock").exists()


def test_a_read_only_output_folder_is_bad_input_not_an_internal_error(good, tmp_path, monkeypatch, capfd):
    folder = tmp_path / "readonly"
    mounted = mount_tmpfs(folder, "1m", read_only=True)
    if not mounted:  # a folder this user cannot write to
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):  # root ignores permissions: make the check see what a user would
            monkeypatch.setattr(atomic.os, "access", lambda path, mode: not str(path).startswith(str(folder)))
    try:
        job = tmp_path / "job.json"
        job.write_text(json.dumps({"kind": "tighten-train", "out": str(folder / "t"),
                                   "cases": [{"image": good["image"], "mask": good["mask"]}], "config": {"patch": 8}}))
        capfd.readouterr()
        assert worker.main([str(job)]) == EXIT_BAD_INPUT
        events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
        assert events[-1]["event"] == "error" and "is not writable" in events[-1]["message"]
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        else:
            folder.chmod(0o755)


def test_a_programming_error_is_an_internal_error_with_its_traceback_in_the_log(good, tmp_path, monkeypatch, capfd):
    """Exit 1, not 2: a KeyError inside WeakSeg is its own fault, reported with the traceback."""
    from WeakSegLib.engine.predict import inference

    def broken(*args, **kwargs):
        raise KeyError("labels")

    monkeypatch.setattr(inference, "predict_volume", broken)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"kind": "predict", "model": good["model"], "image": good["image"],
                               "out": str(tmp_path / "p.nii.gz")}))
    capfd.readouterr()
    assert worker.main([str(job)]) == 1
    captured = capfd.readouterr()
    assert "Traceback" in captured.err and json.loads(captured.out.splitlines()[-1])["message"] == "KeyError: 'labels'"


def test_every_written_file_ending_round_trips(good, tmp_path):
    from WeakSegLib.io.volume import OUTPUT_SUFFIXES, read_volume, write_volume

    volume = good["volume"]
    for suffix in OUTPUT_SUFFIXES:
        path = write_volume(volume, tmp_path / f"v{suffix}")
        back = read_volume(path)
        assert (back.array == volume.array).all() and back.spacing == pytest.approx(volume.spacing), suffix
    assert sorted(os.listdir(tmp_path)) == sorted(f"v{s}" for s in OUTPUT_SUFFIXES)

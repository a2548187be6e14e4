"""What WeakSeg's files look like to the user's other programs: outputs get the permissions a plain
``open(..., "w")`` gives under the user's umask (a replaced file keeps its own), a killed writer's
temporary files are cleaned up, and a path read from a data file never leads outside its folder."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from WeakSegLib.app.cli import main
from WeakSegLib.errors import OutputError
from WeakSegLib.io.boxes import load_boxes
from WeakSegLib.io.dataset import DatasetCase, load_dataset
from WeakSegLib.io.lock import LOCK, FolderLock
from WeakSegLib.io.names import MAX_NAME, check_case_name, name_problem, safe_case_name
from WeakSegLib.io.worklist import Worklist

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process's umask for the test; the old one is put back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_of_a_plain_write_under_the_umask(good, tmp_path, umask, mask):
    """Models, checkpoints, predictions (NIfTI and Slicer segmentation files), box and dataset files used
    to be 0600 whatever the umask (``mkstemp``), unreadable to a colleague or a Slicer running as
    another user."""
    umask(mask)
    expected = 0o666 & ~mask
    out = tmp_path / "out"
    assert main(["train", "--image", good["image"], "--boxes", good["boxes"], "--out", str(out / "model"),
                 "--epochs", "1", "--channels", "4", "8", "--device", "cpu", "--quiet", "--recipe", "box-mask"]) == 0
    assert main(["predict", "--model", str(out / "model"), "--image", good["image"], "--out", str(out / "p.nii.gz"),
                 "--prob", str(out / "prob.nrrd"), "--device", "cpu", "--quiet"]) == 0
    assert main(["predict", "--model", str(out / "model"), "--image", good["image"], "--out",
                 str(out / "p.seg.nrrd"), "--device", "cpu", "--quiet"]) == 0
    assert main(["boxes-from-mask", good["mask"], "--out", str(out / "b.json")]) == 0
    files = [out / "model" / f for f in ("model.pt", "model.json", "checkpoint.pt")] + [
        out / f for f in ("p.nii.gz", "prob.nrrd", "p.seg.nrrd", "b.json")]
    assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(expected) for f in files}


def test_a_replaced_file_keeps_its_own_permissions(good, tmp_path, umask):
    umask(0o022)
    path = tmp_path / "b.json"
    assert main(["boxes-from-mask", good["mask"], "--out", str(path)]) == 0
    os.chmod(path, 0o640)
    assert main(["boxes-from-mask", good["mask"], "--out", str(path), "--mode", "3d"]) == 0
    assert mode(path) == 0o640 and load_boxes(path).boxes[0].kind == "3d"


def test_a_killed_writers_temporary_files_are_removed_by_the_next_run(good, tmp_path):
    """A predict killed mid-write leaves ``.<name>.<random>.tmp<ending>``: the next prediction of that file
    removes it (and no other); a dataset prediction, holding its folder's lock, removes every one."""
    out = tmp_path / "p"
    out.mkdir()
    own = out / ".case.nii.gz.Ab3_x9Zq.tmp.nii.gz"
    other = out / ".other.nii.gz.k2Lm9pQr.tmp.nii.gz"
    unrelated = out / ".notes.txt"
    for path in (own, other, unrelated):
        path.write_bytes(b"")
    assert main(["predict", "--model", good["model"], "--image", good["image"], "--out", str(out / "case.nii.gz"),
                 "--device", "cpu", "--quiet"]) == 0
    assert not own.exists() and other.exists() and unrelated.exists()
    dataset = tmp_path / "data.json"
    dataset.write_text(json.dumps({"test": [{"name": "case2", "image": good["image"]}]}))
    assert main(["predict", "--model", good["model"], "--dataset", str(dataset), "--out-dir", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    assert not other.exists() and unrelated.exists() and (out / "case2.nii.gz").is_file()


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/b", "a\\b", "..", ".", ".hidden", "con:", "a\x00b", "tab\t",
                                  "ends.", "ends ", "", "x" * (MAX_NAME + 1), "a|b", 'a"b', "a*", "a?"])
def test_names_that_are_not_a_single_safe_file_name_are_refused(name):
    assert name_problem(name) is not None
    with pytest.raises(Exception, match="cannot be a file name"):
        check_case_name(name)
    made = safe_case_name(name)
    assert name_problem(made) is None  # free text (a Slicer node's name) always becomes a usable name


@pytest.mark.parametrize("name", ["case01", "Case 01", "liver-ct_2024.v2", "ü-ß", "x" * MAX_NAME, "a.b"])
def test_ordinary_names_pass(name):
    assert check_case_name(name) == name and safe_case_name(name) == name


def test_a_worklist_never_writes_or_deletes_outside_its_folder(good, tmp_path):
    """A dataset file may name box files anywhere (they are read from there), but saving a case's boxes
    writes ``<case>.boxes.json`` beside the dataset file, and clearing them deletes only that: a dataset
    received from someone else cannot make the panel overwrite or delete the user's files."""
    outside = tmp_path / "home" / "notes.json"
    outside.parent.mkdir()
    outside.write_text(Path(good["boxes"]).read_text())
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(
        {"training": [{"name": "c1", "image": good["image"], "boxes": os.path.relpath(outside, folder)}]}))
    worklist = Worklist.open(folder / "dataset.json")
    before = outside.read_bytes()
    boxes = worklist.boxes(0)
    assert boxes is not None and boxes.boxes  # read from where the dataset says
    path = worklist.save_boxes(0, boxes)
    assert path == folder / "c1.boxes.json" and outside.read_bytes() == before
    assert load_dataset(folder / "dataset.json").cases[0].files["boxes"] == str(path)
    worklist.clear_boxes(0)
    assert outside.read_bytes() == before and not path.exists()
    with pytest.raises(Exception, match="cannot be a file name"):
        Worklist.create(folder / "other.json", [DatasetCase("../evil", "test", good["image"])])
    assert not (folder / "other.json").exists()


def test_evaluate_says_which_labels_differ_between_prediction_and_reference(good, tmp_path, capfd):
    """A prediction whose label values differ from the reference's (2 against 1) used to be scored
    silently: Dice 0 for both, exit 0. Now each case with such a difference is named on stderr."""
    folder = tmp_path / "p"
    folder.mkdir()
    mask = sitk.ReadImage(good["mask"])
    relabelled = sitk.GetImageFromArray(2 * sitk.GetArrayFromImage(mask).astype(np.uint8))
    relabelled.CopyInformation(mask)
    sitk.WriteImage(relabelled, str(folder / "case.nii.gz"))
    dataset = tmp_path / "data.json"
    dataset.write_text(json.dumps({"test": [{"name": "case", "image": good["image"], "mask": good["mask"]}]}))
    capfd.readouterr()
    assert main(["evaluate", "--pred-dir", str(folder), "--dataset", str(dataset)]) == 0
    err = capfd.readouterr().err
    assert "case: label(s) [2] only in the prediction; label(s) [1] only in the reference" in err
    assert main(["evaluate", "--pred", str(folder / "case.nii.gz"), "--ref", good["mask"]]) == 0
    assert "label(s) [2] only in the prediction" in capfd.readouterr().err
    assert main(["evaluate", "--pred", good["mask"], "--ref", good["mask"]]) == 0
    assert "only in" not in capfd.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times from /proc")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    """A killed run's lock names its pid; when that pid has since been given to another live process (pid
    reuse), the process's start time tells them apart: the lock is stale and the next run takes it over.
    The same pid with the owner's own start time is a live owner: refused."""
    import socket
    import subprocess

    from WeakSegLib.errors import OutputError
    from WeakSegLib.io.lock import LOCK, FolderLock, _start_time

    other = subprocess.Popen(["sleep", "30"])
    try:
        folder = tmp_path / "model"
        folder.mkdir()
        owner = {"host": socket.gethostname(), "pid": other.pid, "what": "training"}
        for started, taken in ((str(int(_start_time(other.pid)) - 1000), True), (_start_time(other.pid), False)):
            (folder / LOCK).write_text(json.dumps({**owner, "started": started}))
            if taken:
                with FolderLock(folder, "training"):
                    assert json.loads((folder / LOCK).read_text())["pid"] == os.getpid()
                assert not (folder / LOCK).exists()
            else:
                with pytest.raises(OutputError, match=f"in use by training \\(pid {other.pid}"):
                    FolderLock(folder, "training").acquire()
    finally:
        other.kill()
        other.wait()


def test_an_empty_lock_is_left_alone_for_a_minute_then_taken_over(tmp_path):
    """An empty lock file is one its owner is writing right now (or was killed while writing): refused
    while it is younger than 60 s, taken over after."""
    lock = tmp_path / LOCK
    lock.write_text("")
    with pytest.raises(OutputError, match="in use by another WeakSeg run"):
        FolderLock(tmp_path, "training").acquire()
    os.utime(lock, (lock.stat().st_atime, lock.stat().st_mtime - 120))
    with FolderLock(tmp_path, "training"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_lock_held_by_process_1_is_not_taken_over(tmp_path):
    """Process 1 (init, or a container's first process) always runs: its lock is live."""
    (tmp_path / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "started": None, "what": "x"}))
    with pytest.raises(OutputError, match="pid 1"):
        FolderLock(tmp_path, "training").acquire()

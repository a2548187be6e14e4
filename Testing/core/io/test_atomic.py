"""Atomic writes: a write that fails half-way leaves the previous file as it was and no temporary file;
files staged together change together or not at all; a killed writer's leftovers are cleaned up."""

import json
import os
from pathlib import PosixPath
from types import SimpleNamespace

import pytest

from WeakSegLib.errors import OutputError
from WeakSegLib.io import atomic
from WeakSegLib.io.atomic import Staged, atomic_write_bytes, atomic_write_json, remove_stale_temporaries


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "card.json"
    atomic_write_json(path, {"good": True})
    before = path.read_bytes()

    def half_then_fail(tmp):
        tmp.write_bytes(b'{"good": fal')
        raise RuntimeError("writer stopped")

    with pytest.raises(OutputError, match=r"card.json: cannot be written: writer stopped$"):
        with Staged() as out:
            out.write_file(path, half_then_fail, verify=lambda tmp: None)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["card.json"]


def test_a_file_that_does_not_read_back_right_is_not_moved_into_place(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")

    def verify(tmp):
        raise OSError("the file read back differs from what was written")

    with pytest.raises(OutputError, match="read back differs"):
        with Staged() as out:
            out.write_file(path, lambda tmp: tmp.write_bytes(b"new"), verify)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_files_staged_together_change_together(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    atomic_write_bytes(a, b"old a")
    with pytest.raises(OutputError):
        with Staged() as out:
            out.write_bytes(a, b"new a")
            out.write_file(b, lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device")),
                           verify=lambda tmp: None)
    assert a.read_bytes() == b"old a" and not b.exists() and sorted(os.listdir(tmp_path)) == ["a.json"]
    with Staged() as out:
        out.write_bytes(a, b"new a")
        out.write_bytes(b, b"new b")
        assert a.read_bytes() == b"old a"  # nothing moves before the commit
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"new b")


def test_the_new_content_replaces_the_old_only_when_complete(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")
    seen = []

    def write(tmp):
        tmp.write_bytes(b"new")
        seen.append(path.read_bytes())  # a reader during the write still sees the old file

    with Staged() as out:
        out.write_file(path, write, verify=lambda tmp: None)
    assert seen == [b"old"] and path.read_bytes() == b"new"


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    keep = ["checkpoint.pt", ".hidden", "model.json", "notes.tmp"]
    for name in keep + [".checkpoint.pt.a1b2c3d4.tmp", ".pred.nii.gz.x_y_z_12.tmp.nii.gz"]:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == [".checkpoint.pt.a1b2c3d4.tmp",
                                                           ".pred.nii.gz.x_y_z_12.tmp.nii.gz"]
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


def test_an_output_folder_created_meanwhile_by_another_process_is_accepted(tmp_path, monkeypatch):
    """Two ranks of one training check the model folder; the other rank creates it between this one's
    two looks (seen as a flaky "the model folder is a folder; give a file name")."""
    class CreatedMeanwhile(PosixPath):
        looked = 0

        def is_dir(self):
            CreatedMeanwhile.looked += 1
            if CreatedMeanwhile.looked == 1:
                os.mkdir(self)  # the other rank, right after this rank's first look
                return False
            return super().is_dir()

    monkeypatch.setattr(atomic, "Path", CreatedMeanwhile)
    assert atomic.check_output_folder(tmp_path / "m", "model folder") == tmp_path / "m"
    assert CreatedMeanwhile.looked >= 1 and (tmp_path / "m").is_dir()


def test_a_failure_is_blamed_on_a_full_disk_below_one_mebibyte_free(tmp_path, monkeypatch):
    for free, full in ((1_500_000, False), (900_000, True)):
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder, free=free: SimpleNamespace(free=free))
        assert atomic._disk_full(tmp_path) is full


def test_the_reason_of_a_long_message_is_its_last_line():
    assert atomic.reason(ValueError("while reading\nthe header is cut short")) == "the header is cut short"


def test_the_umask_and_a_folder_sync_work_where_proc_and_folder_handles_do_not(tmp_path, monkeypatch):
    """Off Linux there is no /proc (the umask is set and put back) and some systems cannot open a folder
    to sync it: neither is an error."""
    old = os.umask(0o027)
    try:
        class NoProc(PosixPath):
            def read_text(self, *args, **kwargs):
                raise OSError("no /proc here")

        monkeypatch.setattr(atomic, "Path", NoProc)
        assert atomic.umask() == 0o027 and os.umask(0o027) == 0o027
    finally:
        os.umask(old)

    def refuse(*args, **kwargs):
        raise OSError("cannot open a folder")

    monkeypatch.setattr(atomic.os, "open", refuse)
    atomic._fsync_folder(tmp_path)  # no error


def test_files_go_into_folders_created_on_the_way_and_json_keeps_its_key_order(tmp_path):
    with Staged() as out:
        out.write_bytes(tmp_path / "a" / "b" / "c.txt", b"x")
    assert (tmp_path / "a" / "b" / "c.txt").read_bytes() == b"x"
    assert list(json.loads(atomic.json_bytes({"zeta": 1, "alpha": 2}))) == ["zeta", "alpha"]

"""Atomic writes: a write that fails half-way leaves the previous file as it was and no temporary file."""

import os

import pytest

from WeakSegLib.io.atomic import atomic_write, atomic_write_json


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "card.json"
    atomic_write_json(path, {"good": True})
    before = path.read_bytes()

    def half_then_fail(f):
        f.write(b'{"good": fal')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["card.json"]


def test_the_new_content_replaces_the_old_only_when_complete(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, lambda f: f.write(b"old"))
    seen = []

    def write(f):
        f.write(b"new")
        seen.append(path.read_bytes())  # a reader during the write still sees the old file

    atomic_write(path, write)
    assert seen == [b"old"] and path.read_bytes() == b"new"

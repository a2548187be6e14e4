"""Every file WeakSeg writes: to a temporary file in the same folder, fsynced, read back and checked,
then renamed onto its name.

A reader never sees a half-written box file, volume, model card or checkpoint, even when the writer
is killed or the disk fills up: the previous file stays as it was until the new one is complete and
verified, and a failed write removes its temporary file and raises an :class:`OutputError` whose
one-line message says why ("disk full", "permission denied", …). Several files written together
(:class:`Staged`) are renamed into place only when all of them are complete.

Temporary files are named ``.<name>.<random>.tmp<suffix>`` (``mkstemp``; the suffix keeps the file
ending SimpleITK chooses its writer by). :func:`remove_stale_temporaries` deletes those a killed
writer left behind; call it only while holding the folder's lock (:mod:`WeakSegLib.io.lock`), or for
the names of the outputs this process is about to write.

A file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it replaces,
else ``0o666`` less the user's umask (``mkstemp`` alone would leave every output readable by its
owner only, and make a replaced 0644 file 0600).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from WeakSegLib.errors import OutputError

#: what an OSError's errno means to a user
_REASONS = {errno.ENOSPC: "disk full (no space left on device)", errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system", errno.EISDIR: "it is a folder", errno.ENOTDIR:
            "a part of the path is a file, not a folder"}
#: free bytes below which a failed write is blamed on a full disk
_NEARLY_FULL = 1 << 20
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z.]+)?$")


def reason(exc: BaseException) -> str:
    """A few words for why a file operation failed."""
    if isinstance(exc, OSError) and exc.errno in _REASONS:
        return _REASONS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


def umask() -> int:
    """The process's umask (read from ``/proc`` on Linux, without changing it; elsewhere set and put back)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mode_for(path: Path) -> int:
    """The permission bits a file written at ``path`` gets (module docstring)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~umask()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Staged:
    """Files written to temporary names and moved onto their names together (module docstring).

    Use as a context manager: on a clean exit every staged file is renamed into place; on an
    exception every temporary file is removed and no destination is touched::

        with Staged() as out:
            out.write_bytes(path_a, data)
            out.write_file(path_b, lambda tmp: writer(tmp), verify=check)
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def _temporary(self, path: Path, suffix: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        self._pending.append((Path(tmp), path))
        return Path(tmp)

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> Path:
        """Stage ``data`` for ``path``; the file is read back and compared byte for byte."""
        path = Path(path)
        try:
            tmp = self._temporary(path, "")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if tmp.read_bytes() != data:
                raise OSError(errno.ENOSPC if _disk_full(path.parent) else errno.EIO, "the file read back differs")
        except OSError as exc:
            self.discard()
            raise OutputError(f"{path}: cannot be written: {reason(exc)}") from exc
        return path

    def write_file(self, path: str | os.PathLike, write: Callable[[Path], None], verify: Callable[[Path], None],
                   suffix: str = "") -> Path:
        """Stage the file ``write(tmp)`` makes for ``path`` (for writers that take a file name; ``suffix``:
        the file ending they need); ``verify(tmp)`` reads it back and raises when it is not right."""
        path = Path(path)
        try:
            tmp = self._temporary(path, suffix)
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            verify(tmp)
        except Exception as exc:  # writers report failures as RuntimeError, OSError or a verification error
            self.discard()
            why = "disk full (no space left on device)" if _disk_full(path.parent) else reason(exc)
            raise OutputError(f"{path}: cannot be written: {why}") from exc
        return path

    def commit(self) -> None:
        """Rename every staged file onto its name."""
        folders = set()
        try:
            for tmp, path in self._pending:
                os.chmod(tmp, mode_for(path))
                os.replace(tmp, path)
                folders.add(path.parent)
        except OSError as exc:
            self.discard()
            raise OutputError(f"{path}: cannot be written: {reason(exc)}") from exc
        self._pending = []
        for folder in folders:
            _fsync_folder(folder)

    def discard(self) -> None:
        """Remove every staged temporary file (the destinations are untouched)."""
        for tmp, _ in self._pending:
            try:
                tmp.unlink()
            except OSError:
                pass
        self._pending = []


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, verified (module docstring)."""
    with Staged() as out:
        out.write_bytes(path, data)
    return Path(path)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the indented UTF-8 JSON WeakSeg writes."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    return atomic_write_bytes(path, json_bytes(obj))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` ``obj`` atomically (tensors, dicts of tensors and plain Python values)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | os.PathLike, names: list[str] | None = None) -> list[str]:
    """Delete the temporary files a killed writer left in ``folder`` (only those of the destinations
    ``names``, when given); returns their names."""
    removed = []
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
        match = _TEMPORARY.match(entry.name)
        if entry.is_file() and match and (names is None or match.group("name") in names):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written as a file, without writing anything:
    it is not a folder, and its nearest existing parent is a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: the {what} is a folder; give a file name")
    return _creatable(path, what)


def _creatable(path: Path, what: str) -> Path:
    """``path``, after checking that its nearest existing parent is a writable folder."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write the {what}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: the folder {parent} is not writable")
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise :class:`OutputError` unless ``path`` is, or can be created as, a writable folder (writes
    nothing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the {what} is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: the {what} is not writable")
        return path
    return _creatable(path, what)  # (another process — a second rank — may create it meanwhile)

"""An exclusive lock on an output folder, so that two runs never write into the same model folder.

The lock is a file ``.weakseg.lock`` in the folder, created exclusively (``O_CREAT | O_EXCL``) and
holding its owner: host, process id, the process's start time (Linux: from ``/proc``, to tell a
reused process id from the owner) and what it runs. Taking the lock removes the temporary files a
killed writer left in the folder (:func:`WeakSegLib.io.atomic.remove_stale_temporaries`). A second
run is refused with a one-line :class:`~WeakSegLib.errors.OutputError` naming the folder and the
owner. A lock whose owner is a
process of this host that no longer exists is stale: the next run takes it over. A lock from
another host cannot be checked and is left alone (the message says how to remove it).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from WeakSegLib.errors import OutputError
from WeakSegLib.io.atomic import remove_stale_temporaries

LOCK = ".weakseg.lock"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: dict) -> bool:
    """Whether the process that wrote ``owner`` (on this host) still runs."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    started = _start_time(pid)
    return started is None or owner.get("started") in (None, started)


class FolderLock:
    """``with FolderLock(folder, "train"): ...`` holds ``folder`` (created) for this process (module
    docstring). Raises :class:`OutputError` when another live process holds it."""

    def __init__(self, folder: str | os.PathLike, what: str = "weakseg") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
                      "what": what, "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:200]}
        self._held = False
        self._created: list[Path] = []  # folders this lock made (removed again when left empty)

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        missing = self.folder
        while not missing.exists():
            self._created.append(missing)
            missing = missing.parent
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot create the output folder ({exc.strerror or exc})") from exc
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_stale():
                    raise self._busy() from None
                continue
            except OSError as exc:
                raise OutputError(f"{self.folder}: cannot write into the output folder ({exc.strerror or exc})") from exc
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.owner, f)
            self._held = True
            remove_stale_temporaries(self.folder)  # what a killed writer left: no other writer is here now
            return
        raise self._busy()

    def _read(self, path: Path) -> dict:
        try:
            owner = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _take_over_stale(self) -> bool:
        """Remove the lock when its owner is a dead process of this host; whether it was removed."""
        owner = self._read(self.path)
        if not owner:  # being written by its owner, or left empty by a process killed right then
            try:
                if time.time() - self.path.stat().st_mtime < 60:
                    return False
            except FileNotFoundError:
                return True
        elif owner.get("host") != self.owner["host"] or _alive(owner):
            return False
        aside = self.path.with_name(f"{LOCK}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)  # only one of several runs racing for the stale lock gets it
        except FileNotFoundError:
            return True
        if self._read(aside) != owner:  # a live run locked it meanwhile: give its lock back
            os.replace(aside, self.path)
            return False
        aside.unlink()
        return True

    def _busy(self) -> OutputError:
        owner = self._read(self.path)
        who = (f"{owner.get('what', 'a WeakSeg run')} (pid {owner.get('pid')} on {owner.get('host')}, since "
               f"{owner.get('since')})") if owner else "another WeakSeg run"
        hint = "" if owner.get("host") in (None, self.owner["host"]) else \
            f"; if that run has ended, delete {self.path}"
        return OutputError(f"{self.folder} is in use by {who}: wait for it to end or choose another output folder{hint}")

    def release(self) -> None:
        """Remove the lock, and the folders it created when nothing else was written into them."""
        if self._held:
            self._held = False
            if self._read(self.path).get("pid") == self.owner["pid"]:
                self.path.unlink(missing_ok=True)
            for folder in self._created:
                try:
                    folder.rmdir()
                except OSError:  # not empty: the run wrote into it
                    break

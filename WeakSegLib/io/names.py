"""File names made from data: a case's name becomes a file name in an output folder (its prediction,
its figure, its box file), so a name read from a dataset file — which a user may have received from
someone else — must never lead outside that folder.

A case name is a single portable file name: not empty, at most :data:`MAX_NAME` characters, no path
separator or other character Windows refuses in a file name (``< > : " / \\ | ? *``), no control
character, not ``.`` or ``..``, not starting with a dot (hidden, and the prefix of WeakSeg's own
temporary files) and not ending with a space or a dot. :func:`check_case_name` refuses any other with
a one-line :class:`~WeakSegLib.errors.InputError` naming it; :func:`case_file` is the one way to put a
case's file into a folder; :func:`safe_case_name` turns free text (a Slicer node's name) into a name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from WeakSegLib.errors import InputError

#: longest case name: file systems allow 255 bytes a name, which leaves room for the longest ending
MAX_NAME = 128
_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a case name (module docstring), or None when it can."""
    if not isinstance(name, str) or not name:
        return "it is empty" if name == "" else "it is not a text"
    if len(name) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    bad = _FORBIDDEN.search(name)
    if bad:
        return f"it contains {bad.group(0)!r}, which a file name cannot hold"
    if name.startswith("."):
        return "it starts with a dot"
    if name.endswith((" ", ".")):
        return "it ends with a space or a dot"
    return None


def check_case_name(name: object, where: str = "case") -> str:
    """``name`` when it is a safe case name; otherwise an :class:`InputError` saying why."""
    problem = name_problem(name)
    if problem is not None:
        shown = repr(name) if len(repr(name)) <= 48 else f"{name[:40]!r}…"
        raise InputError(f"{where}: the case name {shown} cannot be a file name ({problem}); give the case a "
                         "'name' of letters, digits, spaces, '-', '_' or '.'")
    return name  # type: ignore[return-value]


def case_file(folder: str | os.PathLike, name: str, suffix: str, where: str = "case") -> Path:
    """``folder/<name><suffix>`` for a checked case ``name``: always a file directly inside ``folder``."""
    path = Path(folder) / f"{check_case_name(name, where)}{suffix}"
    assert path.parent == Path(folder), path  # what the check guarantees
    return path


def safe_case_name(text: str, fallback: str = "case") -> str:
    """A case name made from free text: every character a file name cannot hold becomes ``_``, leading dots
    and spaces and trailing dots and spaces go, and it is cut to :data:`MAX_NAME` characters."""
    name = _FORBIDDEN.sub("_", text).lstrip(". ")[:MAX_NAME].rstrip(". ")
    return name or fallback


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (links resolved) lies in ``folder`` or one of its sub-folders."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())

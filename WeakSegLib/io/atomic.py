"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written box file, model card or checkpoint, even when the writer is
killed; the previous version stays in place until the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file and rename it onto ``path``.

    Args:
        path: destination file; its folder is created when missing.
        write: function that writes the whole content to the binary file object it is given.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` ``obj`` atomically (tensors, dicts of tensors and plain Python values)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))

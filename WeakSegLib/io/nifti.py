"""The voxel payload of a NIfTI file (``.nii``, ``.nii.gz``), checked without ITK.

ITK reads a truncated NIfTI file without complaint, filling the missing voxels with zeros, and
reads NaN and infinite float voxels as 0. :func:`check_nifti_payload` reads the header (NIfTI-1 or
NIfTI-2, either byte order), then streams the payload (decompressing ``.nii.gz``) and raises when it
is shorter than the header promises or holds non-finite floats. Memory stays at one chunk.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from WeakSegLib.errors import InputError

#: NIfTI float datatypes (code → numpy type) whose voxels must be finite
_FLOATS = {16: np.float32, 64: np.float64}
_CHUNK = 1 << 22


def _header(head: bytes, name: str) -> tuple[str, int, int, int, list[int]]:
    """``(byte order, datatype, bitpix, vox_offset, dims)`` of a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = list(struct.unpack(order + "8h", head[40:56]))
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            return order, datatype, bitpix, offset, dims
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = list(struct.unpack(order + "8q", head[16:80]))
            offset = struct.unpack(order + "q", head[168:176])[0]
            return order, datatype, bitpix, offset, dims
    raise InputError(f"{name}: not a NIfTI file (no valid header)")


def check_nifti_payload(path: str | os.PathLike, name: str | None = None) -> None:
    """Raise :class:`InputError` when the NIfTI file ``path`` holds fewer voxel bytes than its header
    promises, or NaN / infinite float voxels (saying how many and where the first is, as ``(z, y, x)``
    for a 3D image). A header-only ``.hdr``/``.img`` pair is not checked."""
    path = Path(path)
    name = name or str(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
            order, datatype, bitpix, offset, dims = _header(head, name)
            if head[344:347] == b"ni1":
                return
            count = int(np.prod(dims[1:1 + max(0, min(dims[0], 7))], dtype=np.int64))
            expected = count * bitpix // 8
            f.seek(offset)
            kind = _FLOATS.get(datatype)
            item = np.dtype(kind).newbyteorder(order) if kind is not None else None
            read, bad, first = 0, 0, None
            while read < expected:
                chunk = f.read(min(_CHUNK, expected - read))
                if not chunk:
                    break
                if item is not None and len(chunk) % item.itemsize == 0:
                    finite = np.isfinite(np.frombuffer(chunk, item))
                    if not finite.all():
                        if first is None:
                            first = read // item.itemsize + int(np.argmin(finite))
                        bad += int((~finite).sum())
                read += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{name}: the file is truncated or corrupt ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if read < expected:
        raise InputError(f"{name}: the file is truncated: its header promises {expected} bytes of voxels, "
                         f"it holds {read}")
    if bad:
        where = np.unravel_index(first, tuple(reversed(dims[1:4]))) if dims[0] == 3 else (first,)
        raise InputError(f"{name}: {bad} voxels are NaN or infinite (first at index z,y,x="
                         f"{tuple(int(i) for i in where)}); fill or mask them before training")

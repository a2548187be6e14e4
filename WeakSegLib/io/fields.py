"""Typed access to the JSON objects of WeakSeg's files (boxes, sizes, model cards, job files).

Every read names the file and the field it comes from, so a wrong value becomes one line a user can
act on (``boxes.json: box #3.start[1] is 1.7, not a whole number``) instead of a traceback or, worse,
a value silently truncated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from WeakSegLib.errors import InputError

_MISSING = object()


class Fields:
    """One JSON object (a dict), read field by field.

    Args:
        obj: the decoded JSON value expected to be an object.
        where: what it is, for messages (``"boxes.json: box #3"``).
        error: the exception class raised (``InputError`` for user files, ``ModelError`` for cards).
    """

    def __init__(self, obj: Any, where: str, error: type[Exception] = InputError) -> None:
        if not isinstance(obj, dict):
            raise error(f"{where} is {_kind(obj)}, not an object")
        self.obj, self.where, self.error = obj, where, error

    def _raw(self, key: str, default: Any) -> Any:
        if key not in self.obj or self.obj[key] is None:
            if default is _MISSING:
                raise self.error(f"{self.where} has no {key!r}")
            return default
        return self.obj[key]

    def _fail(self, key: str, value: Any, what: str) -> Exception:
        return self.error(f"{self.where}.{key} is {value!r}, {what}")

    def text(self, key: str, default: Any = _MISSING) -> Any:
        value = self._raw(key, default)
        if value is not default and not isinstance(value, str):
            raise self._fail(key, value, "not a text")
        return value

    def number(self, key: str, default: Any = _MISSING, positive: bool = False) -> Any:
        value = self._raw(key, default)
        if value is default:
            return value
        return self._number(key, value, positive)

    def _number(self, key: str, value: Any, positive: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(key, value, "not a finite number")
        if positive and value <= 0:
            raise self._fail(key, value, "not a positive number")
        return float(value)

    def whole(self, key: str, default: Any = _MISSING, low: int | None = None, high: int | None = None) -> Any:
        """A whole number (an integral float such as ``2.0`` is accepted), optionally in [low, high]."""
        value = self._raw(key, default)
        if value is default:
            return value
        return self._whole(key, value, low, high)

    def _whole(self, key: str, value: Any, low: int | None, high: int | None) -> int:
        number = self._number(key, value, False)
        if number != int(number):
            raise self._fail(key, value, "not a whole number")
        if (low is not None and number < low) or (high is not None and number > high):
            raise self._fail(key, value, f"outside {low if low is not None else '…'}..{high if high is not None else '…'}")
        return int(number)

    def items(self, key: str, default: Any = _MISSING) -> Any:
        """A list (any items)."""
        value = self._raw(key, default)
        if value is not default and not isinstance(value, list):
            raise self._fail(key, value, "not a list")
        return value

    def numbers(self, key: str, count: int, default: Any = _MISSING, positive: bool = False) -> Any:
        """A list of ``count`` finite numbers."""
        value = self.items(key, default)
        if value is default:
            return value
        if len(value) != count:
            raise self._fail(key, value, f"not {count} numbers")
        return [self._number(f"{key}[{i}]", v, positive) for i, v in enumerate(value)]

    def wholes(self, key: str, count: int | None, low: int | None = None, default: Any = _MISSING) -> Any:
        """A list of ``count`` (None: any number of) whole numbers, each ≥ ``low`` when given."""
        value = self.items(key, default)
        if value is default:
            return value
        if count is not None and len(value) != count:
            raise self._fail(key, value, f"not {count} whole numbers")
        return [self._whole(f"{key}[{i}]", v, low, None) for i, v in enumerate(value)]

    def mapping(self, key: str, default: Any = _MISSING) -> Any:
        """An object, as a dict (its content unchecked)."""
        value = self._raw(key, default)
        if value is not default and not isinstance(value, dict):
            raise self._fail(key, value, "not an object")
        return value

    def sub(self, key: str, default: Any = _MISSING) -> "Fields":
        """The object ``key`` (``default``: a dict used when it is absent)."""
        return Fields(self._raw(key, default), f"{self.where}.{key}", self.error)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a text", type(None): "empty", bool: "true/false"}.get(type(value), f"{value!r}")


def read_json(path: Path, what: str, error: type[Exception] = InputError) -> Any:
    """The decoded JSON of ``path``; a missing, unreadable or invalid file raises ``error`` naming it."""
    if not path.exists():
        raise error(f"{path}: {what} not found")
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: {what} is corrupt (not valid JSON: {exc})") from exc
    except OSError as exc:
        raise error(f"{path}: {what} cannot be read ({exc.strerror or exc})") from exc


def read_versioned(path: Path, fmt: str, newest: int, what: str, error: type[Exception] = InputError) -> Fields:
    """A WeakSeg JSON file of format ``fmt`` (its ``"format"`` key) and a version ≤ ``newest``."""
    obj = read_json(path, what, error)
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else None
        raise error(f"{path}: not a {what} (its \"format\" is {found!r}, expected \"{fmt}\")")
    fields = Fields(obj, str(path), error)
    version = fields.whole("version", 0, low=0)
    if version > newest:
        raise error(f"{path}: {what} version {version} is newer than this WeakSeg (reads version ≤ {newest}); "
                    "update WeakSeg")
    return fields

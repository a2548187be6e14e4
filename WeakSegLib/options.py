"""The option machinery of every settings class: dataclass fields that carry their command-line help,
typed construction from JSON (job files, model cards), and the fingerprint a checkpoint is resumed
against. Torch-free, layer 1: :mod:`WeakSegLib.config` (shared settings) and :mod:`WeakSegLib.registry`
(each recipe family's settings) build on it, and :mod:`WeakSegLib.app.cli` turns its fields into options.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any

from WeakSegLib.errors import InputError

#: the value of a choice the tool makes itself (device, recipe, normalisation, modality, precision,
#: process-group backend, slice axis): every such option's default
AUTO = "auto"


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
           choices: tuple | None = None, flag: str | None = None, metavar: Any = None, cli: bool = True,
           by_recipe: bool = False) -> Any:
    """A dataclass field with the metadata the command line is generated from.

    Args:
        default, factory: the field's default (or default factory).
        help: one-line help text (the default is appended by the command line).
        choices: allowed values.
        flag: command line flag when it is not ``--`` + the field name with ``-`` for ``_``.
        metavar: argparse metavar.
        cli: False for settings the command line does not offer (set from scripts and job files).
        by_recipe: None stands for the recipe's own default, the spec's attribute of the same name
            (the command line's help lists them).
    """
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "cli": cli, "by_recipe": by_recipe}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def non_optional(hint: Any) -> Any:
    """``X | None`` → ``X`` (any other type hint as it is)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(hint) and len(args) == 1 else hint


def _typed(name: str, value: Any, hint: Any, what: str) -> Any:
    """``value`` checked against the type ``hint`` of setting ``name`` (lists become tuples where a
    tuple is expected); a wrong type is an :class:`InputError`."""
    if value is None and non_optional(hint) is not hint:
        return None
    hint = non_optional(hint)
    args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), str: lambda v: isinstance(v, str),
          dict: lambda v: isinstance(v, dict), list: lambda v: isinstance(v, list),
          tuple: lambda v: isinstance(v, (list, tuple))}[origin]
    if not ok(value):
        raise InputError(f"{what}: {name} is {value!r}, not {_TYPE_NAMES[origin]}")
    if origin is tuple:
        items = args[:1] * len(value) if args and args[-1] is Ellipsis else args
        if len(items) != len(value):
            raise InputError(f"{what}: {name} is {value!r}, not {len(items)} values")
        return tuple(_typed(f"{name}[{i}]", v, t, what) for i, (v, t) in enumerate(zip(value, items)))
    if origin is list and args:
        return [_typed(f"{name}[{i}]", v, args[0], what) for i, v in enumerate(value)]
    return float(value) if origin is float else value


_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a text", dict: "an object",
               list: "a list", tuple: "a list"}


def from_dict(cls: type, values: Any, what: str) -> Any:
    """``cls(**values)`` with every value checked against the field's type; unknown or missing keys and
    wrong types are an :class:`InputError` naming them (and ``what``, e.g. ``"job config"``)."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise InputError(f"{what} is {values!r}, not an object of settings")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{what} has unknown settings: {', '.join(unknown)}")
    missing = [name for name, f in fields.items() if name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{what} has no {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _typed(name, value, hints[name], what) for name, value in values.items()})


def fingerprint(config: Any, ignore: tuple[str, ...]) -> dict:
    """The settings of ``config`` that must match for a checkpoint to be resumed, JSON-like."""
    d = dataclasses.asdict(config)
    for key in ignore:
        d.pop(key)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")

"""Frozen dataclasses to and from plain data (TOML tables, JSON objects), type-checked.

:func:`plain` turns a dataclass into JSON/TOML-ready data; :func:`convert` builds a dataclass
(or any supported field type: nested dataclasses, unions with ``None``, tuples, dicts, bool,
int, float, str) from such data, naming the offending field on a wrong type;
:func:`check_keys` refuses keys that are not fields, listing the valid ones; files are read by
:func:`drac_algo.common.datafiles.read_toml`. TOML has no null: the string ``"none"`` gives
``None`` for an optional field. Every bad input raises
:class:`drac_algo.common.errors.DracInputError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drac_algo.common.errors import DracInputError

# Scalar field types: what an error says was expected, and the plain types accepted (a bool is
# never accepted as a number, although Python counts it as an int).
_SCALARS: dict[type, tuple[str, tuple[type, ...]]] = {
    bool: ("true or false", (bool,)),
    int: ("an integer", (int,)),
    float: ("a number", (int, float)),
    str: ("a string", (str,)),
}


def plain(value: Any) -> Any:
    """``value`` as JSON/TOML-ready data: dataclasses as dicts of their fields, tuples and lists
    as lists, mappings as dicts, paths as strings, recursively; anything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _require_table(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise DracInputError(f"{where}: expected a table, got {value!r}")


def check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    """Raise on keys that are not fields of ``cls`` (recursing into dataclass sections)."""
    _require_table(data, where)
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise DracInputError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(hints)}"
        )
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]):
            check_keys(value, hints[key], f"{where} [{key}]")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` from TOML/JSON as type ``tp`` (dataclasses, unions, tuples, scalars)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _require_table(value, where)
        hints = _hints(tp)
        kwargs = {k: convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except (TypeError, DracInputError) as exc:  # TypeError: a required field is missing
            raise DracInputError(f"{where}: {exc}" if where else str(exc)) from exc
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if type(None) in members and (value is None or value == "none"):
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return convert(value, member, where)
            except DracInputError:
                continue
        raise DracInputError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise DracInputError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise DracInputError(f"{where}: expected {len(args)} values, got {list(value)}")
        return tuple(
            convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        _require_table(value, where)
        return dict(value)
    if tp in _SCALARS:
        expected, accepted = _SCALARS[tp]
        if not isinstance(value, accepted) or (isinstance(value, bool) and tp is not bool):
            raise DracInputError(f"{where}: expected {expected}, got {value!r}")
        return float(value) if tp is float else value
    raise TypeError(f"config field type {tp!r} is not supported")  # a bug here, not bad input

"""Reading JSON and TOML files that come from outside (a bundle's ``manifest.json``, a job's
``inputs.json``, ``platform.json``, ``results.json``, recipes and ``--config`` files).

Every way such a file can fail to parse becomes one :class:`DracInputError` naming the file
and what it is: unreadable (missing, a folder, permission denied, a dangling link), not UTF-8,
a syntax error (with its line and column), nested deeper than :data:`MAX_DEPTH` levels (Python's
parsers would raise ``RecursionError`` on ~1000 levels, and every reader below them recurses
too), or a top level of the wrong kind. What the values mean is each caller's to check.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from drac_algo.common.errors import DracInputError

# No file this project reads nests deeper than 6 levels; 64 leaves room for any future format
# while keeping every recursive reader far from Python's recursion limit.
MAX_DEPTH = 64


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar is 0, ``[]`` is 1), counted
    without recursion; stops counting once past ``limit`` (returns ``limit + 1``)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return limit + 1
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_depth(value: Any, where: str) -> Any:
    if nesting_depth(value) > MAX_DEPTH:
        raise DracInputError(f"{where}: nested deeper than {MAX_DEPTH} levels of lists/objects")
    return value


def _check_top(value: Any, expect: type | None, where: str) -> Any:
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise DracInputError(f"{where}: expected {kind}, found {type(value).__name__}")
    return value


def _parse(raw: bytes | str, loads: Any, where: str, not_valid: str, nesting: str) -> Any:
    """``loads`` of ``raw`` (UTF-8 bytes or text), every failure a :class:`DracInputError`:
    ``not_valid`` says what the file is not ("is not readable JSON"), ``nesting`` what nests."""
    try:
        return loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:  # before ValueError, of which it is one
        raise DracInputError(f"{where} {not_valid}: not UTF-8 text ({exc})") from None
    except RecursionError:
        raise DracInputError(
            f"{where}: nested deeper than {MAX_DEPTH} levels of {nesting}"
        ) from None
    except ValueError as exc:  # the syntax errors of both parsers; integers over 4300 digits
        raise DracInputError(f"{where} {not_valid}: {exc}") from None


def parse_json(raw: bytes | str, where: str, expect: type | None = dict) -> Any:
    """The JSON document ``raw`` (UTF-8 bytes or text); ``where`` names it in errors (e.g.
    "bundle manifest /opt/ml/model/manifest.json"). ``expect``: the type the top level must
    have (``dict`` by default; ``None`` for any)."""
    value = _parse(raw, json.loads, where, "is not readable JSON", "lists/objects")
    return _check_top(_check_depth(value, where), expect, where)


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of ``path``; any OS error (missing, a folder, a dangling link, permission
    denied) is a :class:`DracInputError` naming ``what`` and the file."""
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DracInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_json(path: str | os.PathLike, what: str, expect: type | None = dict) -> Any:
    """The JSON document in ``path``, ``what`` saying what it is ("inputs.json", "bundle
    manifest", ...); see :func:`parse_json`."""
    return parse_json(read_bytes(path, what), f"{what} {path}", expect)


def read_toml(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """The tables of the TOML file ``path``; see the module docstring for the errors."""
    where = f"{what} {path}"
    value = _parse(
        read_bytes(path, what), tomllib.loads, where, "is not valid TOML", "arrays/tables"
    )
    return _check_depth(value, where)

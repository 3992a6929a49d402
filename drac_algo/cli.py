"""Shared command-line plumbing: logging set-up and the bad-input exit path."""

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from drac_algo.errors import DracInputError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def exits_on_bad_input(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so that a :class:`DracInputError` prints ``error: <message>`` on stderr and
    exits with status 2 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DracInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper

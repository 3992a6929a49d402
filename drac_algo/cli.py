"""Shared command-line plumbing: logging set-up, the bad-input exit path and SIGTERM."""

import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drac_algo.errors import DracInputError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def add_log_file(path: Path) -> logging.Handler:
    """Also write every log record the console shows to ``path`` (appended, with the date in each
    timestamp, since a run folder outlives the day it ran). Returns the handler, for a caller
    that wants to detach it again (``logging.getLogger().removeHandler``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    handler.setLevel(root.level)
    root.addHandler(handler)
    return handler


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt (a BaseException, so no
    ``except Exception`` swallows it): cleanups run and partial outputs are removed."""


TERMINATED_EXIT = 128 + signal.SIGTERM  # 143, the shell's status for a process ended by SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def exits_on_bad_input(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so that a :class:`DracInputError` prints ``error: <message>`` on stderr and
    exits with status 2 instead of a traceback, and SIGTERM (``docker stop``, a job's time limit)
    unwinds like an exception, so every atomic write removes its partial file, and then exits
    143 with one line saying so (Python's default would end at once and silently)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return func(*args, **kwargs)
        except DracInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except Terminated:
            print(
                "error: terminated by SIGTERM; outputs being written were removed",
                file=sys.stderr,
            )
            raise SystemExit(TERMINATED_EXIT) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper

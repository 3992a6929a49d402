"""Run-level progress with an ETA: a tqdm bar on a terminal, plain log lines elsewhere.

    progress = RunProgress(total=65, what="case", desc="inference")
    for path in images:
        ...
        progress.advance()          # bar: "inference  12/65 [02:10<09:35]"
    progress.close()

On a terminal (stderr a TTY) the bar sits above the inner per-epoch bars of training
(``position=0``) and stays when done. Elsewhere (the container, CI, a pipe, a log file) a bar
would be a stream of carriage returns, so the same facts go to the log as lines instead, at most
one per ``every_s`` seconds plus the last one: ``inference: 12/65 cases, 2m10s elapsed, ETA
9m35s``. The ETA is the mean time per step so far times the steps left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m`` (rounded down; negative counts as 0)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the mean pace so far; ``None`` before the first step."""
    if done <= 0:
        return None
    return elapsed / done * max(0, total - done)


def progress_line(desc: str, done: int, total: int, what: str, elapsed: float) -> str:
    """The log line of the non-terminal mode."""
    eta = eta_seconds(done, total, elapsed)
    plural = what if total == 1 else f"{what}s"
    tail = "" if eta is None or done >= total else f", ETA {format_duration(eta)}"
    return f"{desc}: {done}/{total} {plural}, {format_duration(elapsed)} elapsed{tail}"


class RunProgress:
    """``total`` steps of one run; see the module docstring. ``enabled=False`` (e.g. on a
    worker rank) makes every method a no-op."""

    def __init__(
        self,
        total: int,
        what: str,
        desc: str,
        *,
        enabled: bool = True,
        every_s: float = 30.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.what, self.desc = total, what, desc
        self.enabled, self.every_s, self.clock = enabled, every_s, clock
        self.done = 0
        self.started = clock()
        self._last_line = -float("inf")
        stream = sys.stderr if stream is None else stream
        self.bar: tqdm | None = None
        self._redirect = None
        if enabled and _is_terminal(stream):
            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=what,
                file=stream,
                position=0,
                leave=True,
                dynamic_ncols=True,
            )
            # Log lines printed through tqdm, above the bars, instead of through them.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def advance(self, steps: int = 1) -> None:
        if not self.enabled or steps <= 0:
            return
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
            return
        now = self.clock()
        if self.done >= self.total or now - self._last_line >= self.every_s:
            self._last_line = now
            log.info(progress_line(self.desc, self.done, self.total, self.what, now - self.started))

    def close(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False

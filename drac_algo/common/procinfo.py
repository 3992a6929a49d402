"""What this process has cost so far, for a run's diagnostics: how long ago it started (the
interpreter and its imports, before any of the run's own code) and its peak memory."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Iterable
from pathlib import Path

_STARTUP_TAKEN: list[bool] = []  # command_startup_s answers once per process


def process_age_s() -> float | None:
    """Seconds since this process was created (the kernel's start time in ``/proc/self/stat``,
    against ``/proc/uptime``; 10 ms resolution), or None where ``/proc`` cannot say (not Linux).
    Taken at the start of a run, it is the cold start before the run: interpreter, imports and
    command-line parsing."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        # Field 22 (starttime, clock ticks since boot); the command name (field 2) may hold
        # spaces, so count from its closing parenthesis.
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def command_startup_s(commands: Iterable[str]) -> float | None:
    """The cold start of a process started as one of ``commands`` (the file or script name that
    ``sys.argv[0]`` names, suffix aside: ``process`` for ``python process.py`` and ``python -m
    process``, ``drac-process``): :func:`process_age_s` at the first call. None at any later
    call and in a process started as something else (a test runner, a notebook, a Python
    program calling the run), whose age says nothing about this command's start."""
    if _STARTUP_TAKEN:
        return None
    _STARTUP_TAKEN.append(True)
    if not sys.argv or Path(sys.argv[0]).stem not in set(commands):
        return None
    return process_age_s()


def peak_rss_bytes() -> int:
    """The largest resident set size this process has had (``getrusage``; the largest of its
    finished children's too, e.g. a decoder started as a process)."""
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * scale

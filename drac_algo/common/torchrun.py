"""What torchrun tells each process it starts, read from the environment once and checked.

torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for
every process. ``WORLD_SIZE`` above 1 is how training and ``process.py`` know they are one of
several processes; without the others (a job script that exports ``WORLD_SIZE`` for another
tool, a half-copied torchrun environment) they would end in a ``KeyError`` traceback or wait in a
rendezvous that never comes. Here that is one clear error naming what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from drac_algo.common.errors import DracInputError

# What torchrun sets besides WORLD_SIZE, and what every rank needs to find the others.
REQUIRED = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class TorchrunProcess:
    """One of ``world_size`` (> 1) processes that torchrun started."""

    rank: int
    world_size: int
    local_rank: int


def _integer(environ: Mapping[str, str], name: str, minimum: int) -> int:
    raw = environ[name].strip()
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DracInputError(
            f"environment variable {name}={raw!r}: expected an integer >= {minimum} "
            "(torchrun sets it for each process it starts)"
        )
    return value


def torchrun_process(environ: Mapping[str, str] | None = None) -> TorchrunProcess | None:
    """This process's place among torchrun's processes, or None for a single process (no
    ``WORLD_SIZE``, or 1). Raises :class:`DracInputError` when ``WORLD_SIZE`` says several but
    the rest of torchrun's environment is missing or malformed."""
    environ = os.environ if environ is None else environ
    if not environ.get("WORLD_SIZE", "").strip():
        return None
    world = _integer(environ, "WORLD_SIZE", 1)
    if world == 1:
        return None
    missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
    if missing:
        raise DracInputError(
            f"WORLD_SIZE={world} in the environment says this is one of {world} torchrun "
            f"processes, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            "set: start it with torchrun (e.g. torchrun --standalone --nproc_per_node="
            f"{world} -m ...), or unset WORLD_SIZE to run a single process"
        )
    rank = _integer(environ, "RANK", 0)
    local_rank = _integer(environ, "LOCAL_RANK", 0)
    _integer(environ, "MASTER_PORT", 1)
    if rank >= world:
        raise DracInputError(
            f"environment variable RANK={rank}: expected a rank below WORLD_SIZE={world}"
        )
    return TorchrunProcess(rank, world, local_rank)

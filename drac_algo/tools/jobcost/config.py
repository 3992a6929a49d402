"""The job-cost benchmark's configuration: the instance sizes (``--sizes 2:8g,4:16g``) and
:class:`JobCostConfig` (one run, validated). Imports no torch, so option errors answer at once."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from drac_algo.common.errors import DracInputError

# Grand Challenge's instance sizes: CPU-only jobs (2 vCPU / 8 GB), GPU (T4) jobs (4 vCPU / 16 GB).
DEFAULT_SIZES = "2:8g,4:16g"
RUNNERS = ("docker", "local")
# The DRAC2022 Task 1 test set: 65 images, each one platform job.
TEST_SET_JOBS = 65
DEFAULT_CACHE = Path("~/.cache/drac-algo/jobcost")
QUICK_SIDE = 256
# docker's memory units (`docker run --memory`): bytes, KiB, MiB, GiB.
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
_SIZE = re.compile(r"(?P<cpus>\d+(\.\d+)?):(?P<amount>\d+)(?P<unit>[bkmg]?)")
SIZE_FORMAT = (
    "CPUS:MEMORY items separated by commas, e.g. 2:8g,4:16g (CPUS a positive number, MEMORY a "
    "whole number with an optional unit b, k, m or g, as docker run --memory takes it)"
)


@dataclass(frozen=True)
class Size:
    """One instance size: ``cpus`` (``docker run --cpus``) and ``memory`` (``--memory`` and
    ``--memory-swap``, docker's spelling), as the user wrote it in ``spec``."""

    spec: str
    cpus: float
    memory: str
    memory_bytes: int

    @property
    def threads(self) -> int:
        """Whole CPUs: the intra-op threads a job gets (process.py rounds a quota up too)."""
        return max(1, math.ceil(self.cpus))

    @property
    def label(self) -> str:
        return f"{self.cpus:g} vCPU / {self.memory}"


def parse_size(item: str) -> Size:
    """``"2:8g"`` -> ``Size("2:8g", 2.0, "8g", 8 GiB)``; anything else is refused, naming the
    format expected and the item found."""
    spec = item.strip().lower()
    match = _SIZE.fullmatch(spec)
    if match is None or float(match["cpus"]) <= 0 or int(match["amount"]) <= 0:
        raise DracInputError(f"--sizes: expected {SIZE_FORMAT}; found {item.strip()!r}")
    return Size(
        spec=spec,
        cpus=float(match["cpus"]),
        memory=f"{match['amount']}{match['unit']}",
        memory_bytes=int(match["amount"]) * _UNITS[match["unit"]],
    )


def parse_sizes(text: str) -> tuple[Size, ...]:
    """Every size of ``--sizes`` (duplicates refused: each is measured once)."""
    items = [item for item in text.split(",")]
    if not text.strip():
        raise DracInputError(f"--sizes: expected {SIZE_FORMAT}; found nothing")
    sizes = tuple(parse_size(item) for item in items)
    specs = [s.spec for s in sizes]
    repeated = sorted({s for s in specs if specs.count(s) > 1})
    if repeated:
        raise DracInputError(f"--sizes: each size once; found {', '.join(repeated)} repeated")
    return sizes


@dataclass(frozen=True)
class JobCostConfig:
    """One job-cost run; see :mod:`drac_algo.tools.jobcost` and ``python -m drac_algo.jobcost -h``.

    ``bundle``: a real bundle, else the default recipes' ensemble with random weights
    (``members`` per class, default the recipes' own count; ``quick``: one tiny member per
    class, and a 256 px job) cached under ``cache``. ``side``: the job image's side and the
    random networks' input size. ``process_args``: extra arguments for ``process.py`` in every job.
    """

    runner: str = "docker"
    sizes: tuple[Size, ...] = field(default_factory=lambda: parse_sizes(DEFAULT_SIZES))
    jobs: int = 1
    image: str = "drac-algo"
    bundle: Path | None = None
    members: int | None = None
    side: int = 1024
    seed: int = 0
    cache: Path = DEFAULT_CACHE
    quick: bool = False
    gpus: str = "auto"
    timeout_s: float = 3600.0
    process_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise DracInputError(
                f"runner: expected one of {', '.join(RUNNERS)}, found {self.runner!r}"
            )
        if self.jobs < 1:
            raise DracInputError(f"--jobs must be >= 1, found {self.jobs}")
        if self.side < 32:
            raise DracInputError(f"--side must be >= 32, found {self.side}")
        if self.members is not None and self.members < 1:
            raise DracInputError(f"--members must be >= 1, found {self.members}")
        if self.bundle is not None and self.members is not None:
            raise DracInputError(
                "--members describes the random-weight bundle; a --bundle brings its own"
            )
        if self.gpus not in ("auto", "all", "none"):
            raise DracInputError(f"--gpus: expected auto, all or none, found {self.gpus!r}")
        if self.timeout_s <= 0:
            raise DracInputError(f"--timeout must be > 0 seconds, found {self.timeout_s:g}")
        if not self.sizes:
            raise DracInputError(f"--sizes: expected {SIZE_FORMAT}; found nothing")

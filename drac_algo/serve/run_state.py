"""A run's shared settings (:class:`RunConfig`, what both modes take) and what it accumulates
on its way to ``results.json`` (:class:`RunState`: the cases, the warnings, the time per stage),
with the per-case steps both modes share. The batch folder's own settings are
:class:`drac_algo.serve.batch.BatchOptions`."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drac_algo.common.classes import BY_INDEX
from drac_algo.data.images import LoadedImage
from drac_algo.engine.ensemble import CasePrediction
from drac_algo.serve.job_settings import JobSettings
from drac_algo.serve.outputs import case_record

if TYPE_CHECKING:
    from drac_algo.serve.modes import Mode

log = logging.getLogger("drac_algo.serve.pipeline")


@dataclass
class RunConfig:
    """The settings both modes share, named as their ``process.py`` flags (the container's
    defaults: Grand Challenge paths, D4 TTA).

    ``views_per_batch``: at most this many TTA views per forward pass (None: the engine's default
    for the device, 8 on CUDA and 1 on the CPU). ``input_slug``, ``output_specs``
    (``CLASS=SLUG[:RELATIVE_PATH]``) and ``require_gpu`` are the command line's values (None /
    empty: not given), resolved with the environment and the model folder's ``platform.json`` by
    :func:`drac_algo.serve.job_settings.resolve_job_settings`.
    """

    input_dir: Path = Path("/input")
    output_dir: Path = Path("/output")
    bundle: Path = Path("/opt/ml/model")
    tta: str = "d4"
    device: str = "auto"
    views_per_batch: int | None = None
    precision: str = "auto"
    backend: str = "auto"
    input_slug: str | None = None
    output_specs: tuple[str, ...] = ()
    require_gpu: bool | None = None


@dataclass
class RunState:
    """What a run accumulates on its way to ``results.json``; ``mode`` is the mode object
    (:class:`drac_algo.serve.modes.Mode`) whose outputs these are."""

    config: RunConfig
    mode: Mode
    job: JobSettings
    warnings: list[str] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    # Where the time before the first image went (results.json's diagnostics.cold_start):
    # startup_s (process start to the run's first line: interpreter, imports), gpu_probe_s,
    # bundle_check_s (manifest, checksums) and each member's build time.
    cold_start: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to ``stages[stage]`` (thread-safe enough for one adder
        per stage)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start


def note_conversion(run: RunState, path: Path, loaded: LoadedImage) -> None:
    if loaded.converted:
        run.warn(f"{path}: {loaded.converted}")


def log_case(position: str, name: str, record: dict[str, Any]) -> None:
    parts = [
        f"{BY_INDEX[int(i)].key} {c['area_px']} px in {c['components']} component(s)"
        for i, c in record["classes"].items()
    ]
    npi = record["non_perfusion_index"]
    if npi is not None:
        parts.append(f"non-perfusion index {npi:.4f}")
    log.info("%s %s: %.2f s; %s", position, name, record["seconds"], "; ".join(parts))


def record_case(
    run: RunState, path: Path, name: str, loaded: LoadedImage, prediction: CasePrediction
) -> dict[str, Any]:
    run.warnings.extend(prediction.warnings)  # out-of-memory events, already logged
    cid = run.mode.case_id(path)
    record = case_record(
        name,
        path,
        loaded.pixels.shape,
        prediction.masks,
        case_id=cid,
        converted=loaded.converted,
        seconds=round(prediction.seconds, 4),
    )
    run.cases.append(record)
    return record

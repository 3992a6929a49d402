"""``results.json``: what a run records (its settings, the environment, the GPU diagnosis, the
time per stage, each case's lesion measurements, the warnings), assembled in one place, and
written after every output it describes, so that its presence means they are complete (see
:mod:`drac_algo.serve.pipeline`; a batch run's report page is made from it afterwards).

Top-level keys: ``format``, ``version``, ``mode``, ``input``, ``output``, ``finished``,
``settings`` (the engine's settings, the bundle, versions, the job's sockets), ``diagnostics``,
``timings``, ``engine`` (the engine's counters), ``classes`` (per class: written, not
requested or missing from the bundle), what the mode adds (``submission``, ``continued``,
``report``: the report page a batch run writes after this file, or null with ``--no-report``),
``cases`` and ``warnings``.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import drac_algo
from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.datafiles import read_json
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_write_text
from drac_algo.common.procinfo import peak_rss_bytes
from drac_algo.common.provenance import environment

if TYPE_CHECKING:  # annotations only: reading results.json (the report) needs no torch
    from drac_algo.engine.gpu import GpuStatus
    from drac_algo.engine.predictor import Predictor
    from drac_algo.serve.run_state import RunState

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "drac-algo-results"
RESULTS_VERSION = 1


def class_table(
    predictor: Predictor, outputs: dict[str, str], requested: tuple[int, ...] | None
) -> dict[str, Any]:
    """Per lesion class: its key and name, whether it was written, and its output."""
    table = {}
    for c in LESION_CLASSES:
        present = c.index in predictor.classes
        if present:
            status = "written"
        elif requested is not None and c.index not in requested:
            status = "not requested (--classes)"
        else:
            status = "missing from the model bundle"
        table[str(c.index)] = {
            "key": c.key,
            "name": c.name,
            "status": status,
            "output": outputs.get(str(c.index)) if present else None,
        }
    return table


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


def results_document(
    run: RunState,
    predictor: Predictor,
    *,
    gpu: GpuStatus,
    bundle: dict[str, Any],
    load_seconds: float,
    mode_results: dict[str, Any],
    output_dir: Path,
    started: float,
) -> dict[str, Any]:
    """The whole ``results.json`` of a finished run. ``mode_results`` is what the mode returned:
    ``outputs`` (class index -> output path) and the keys it adds at the top level."""
    config, job, mode = run.config, run.job, run.mode
    extra = dict(mode_results)
    outputs = extra.pop("outputs")
    stats = predictor.stats()
    settings = predictor.settings()
    settings.update(
        bundle=bundle,
        requested_device=config.device,
        drac_algo_version=drac_algo.__version__,
        environment=environment(),
        requested_classes=None if mode.classes is None else list(mode.classes),
        job=job.to_json(),
    )
    settings.update(mode.settings())
    stages = {
        "model_load_s": round(load_seconds, 4),
        "decode_s": round(run.stages.get("decode_s", 0.0), 4),
        "inference_s": round(stats["seconds_total"], 4),
        "write_s": round(run.stages.get("write_s", 0.0), 4),
    }
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "mode": mode.name,
        "input": str(config.input_dir),
        "output": str(output_dir),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "diagnostics": {
            "gpu": gpu.to_json(),
            "device": str(predictor.device),
            "autocast": settings["autocast"],
            "backend": settings["backend"],
            "threads": settings["threads"],
            "views_per_batch": settings["max_views_per_batch"],
            "bundle_id": bundle["id"],
            "stages": stages,
            "cold_start": dict(run.cold_start),
            "peak_rss_bytes": peak_rss_bytes(),
        },
        "timings": {
            "total_s": round(time.perf_counter() - started, 4),
            "model_load_s": round(load_seconds, 4),
            "images": stats["images"],
            "per_image_mean_s": _rounded(stats["seconds_mean"]),
            "per_image_max_s": _rounded(stats["seconds_max"]),
        },
        "engine": stats,
        "classes": class_table(predictor, outputs, mode.classes),
        **extra,
        "cases": run.cases,
        "warnings": run.warnings,
    }


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results`` as indented JSON, atomically (NaN is refused: JSON has no NaN)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False) + "\n")
    return path


def read_results(path: str | os.PathLike) -> dict[str, Any] | None:
    """The results file at ``path`` if it is one this project wrote, else None."""
    try:
        data = read_json(path, "results file")
    except DracInputError:
        return None
    if data.get("format") == RESULTS_FORMAT:
        return data
    return None

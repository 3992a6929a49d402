"""A whole job-cost run: the bundle, the job input, then per size ``jobs`` jobs back to back
(each in a fresh container or process, each into a fresh output folder), each job's numbers read
from the host's clock and from the ``results.json`` it wrote, and the summary per size."""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from drac_algo.common.hardware import cpu_features
from drac_algo.tools.jobcost.bundle import (
    QUICK_MODEL,
    cached_bundle,
    default_members_per_class,
    describe_bundle,
)
from drac_algo.tools.jobcost.config import TEST_SET_JOBS, JobCostConfig, Size
from drac_algo.tools.jobcost.job import write_job
from drac_algo.tools.jobcost.runners import JobFailed, JobRun, make_runner

log = logging.getLogger(__name__)

REPORT_FORMAT = "drac-algo-jobcost"
# results.json's fields a job must have written (process.py since the cold-start diagnostics).
REQUIRED = {
    "diagnostics.cold_start": ("startup_s", "gpu_probe_s", "bundle_check_s", "members"),
    "diagnostics.stages": ("model_load_s", "decode_s", "inference_s", "write_s"),
}
# The per-job numbers summarised per size (median, min, max).
SUMMARISED = (
    "wall_s",
    "first_line_s",
    "startup_s",
    "gpu_probe_s",
    "bundle_check_s",
    "members_total_s",
    "model_load_s",
    "decode_s",
    "inference_s",
    "write_s",
    "total_s",
    "overhead_share",
    "peak_rss_bytes",
)


def machine() -> dict[str, Any]:
    """The host: CPU model, its instruction sets that decide speed, CPU count, memory, load."""
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                None,
            )
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            memory = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpu_model": model,
        "cpu_features": cpu_features(),
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "load_average_1m": os.getloadavg()[0],
    }


def resolve_bundle(cfg: JobCostConfig) -> tuple[Path, dict[str, Any]]:
    """``--bundle``, or the cached random-weight bundle (built on first use); with what made it."""
    if cfg.bundle is not None:
        folder = cfg.bundle.expanduser().resolve()
        info = describe_bundle(folder)  # refuses a folder without a manifest, before any job
        return folder, {**info, "weights": "given (--bundle)"}
    if cfg.quick:
        members, changes = cfg.members or 1, dict(QUICK_MODEL)
    else:
        members, changes = cfg.members or default_members_per_class(), None
    folder, reused = cached_bundle(
        cfg.cache.expanduser(), members, cfg.seed, cfg.side, model_changes=changes
    )
    info = describe_bundle(folder)
    weights = f"random (seed {cfg.seed}; the default recipes' networks"
    weights += ", --quick's resnet18)" if cfg.quick else ")"
    return folder, {**info, "weights": weights, "cached": reused}


def _dig(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def job_numbers(run: JobRun, results: dict[str, Any], where: str) -> dict[str, Any]:
    """One job's numbers: the host's (wall, first line) and its ``results.json``'s. A file
    without the cold-start diagnostics (an image built before them) is refused, naming what is
    missing."""
    missing = [
        f"{section}.{key}"
        for section, keys in REQUIRED.items()
        for key in keys
        if not isinstance(_dig(results, section), dict) or key not in _dig(results, section)
    ]
    if not isinstance(_dig(results, "timings.total_s"), int | float):
        missing.append("timings.total_s")
    if missing:
        raise JobFailed(
            f"{where}: its results.json lacks {', '.join(missing)}: the "
            "image or checkout predates the cold-start diagnostics; rebuild it (./build.sh)"
        )
    diagnostics = results["diagnostics"]
    cold, stages = diagnostics["cold_start"], diagnostics["stages"]
    members = [float(m["seconds"]) for m in cold["members"]]
    inference = float(stages["inference_s"])
    return {
        "wall_s": run.wall_s,
        "first_line_s": run.first_line_s,
        "first_line": run.first_line,
        "exit_status": run.returncode,
        "startup_s": cold["startup_s"],
        "gpu_probe_s": cold["gpu_probe_s"],
        "bundle_check_s": cold["bundle_check_s"],
        "members": cold["members"],
        "members_count": len(members),
        # The wall time of building them all (several at once on the ONNX Runtime path); older
        # results.json files have only each member's own time.
        "members_total_s": float(cold.get("members_s", sum(members))),
        "member_min_s": min(members, default=None),
        "member_mean_s": statistics.fmean(members) if members else None,
        "member_max_s": max(members, default=None),
        "model_load_s": stages["model_load_s"],
        "decode_s": stages["decode_s"],
        "inference_s": inference,
        "write_s": stages["write_s"],
        "total_s": results["timings"]["total_s"],
        "overhead_share": (run.wall_s - inference) / run.wall_s,
        "peak_rss_bytes": diagnostics.get("peak_rss_bytes"),
        "device": diagnostics.get("device"),
        "autocast": diagnostics.get("autocast"),
        "backend": diagnostics.get("backend"),
        "threads": diagnostics.get("threads"),
        "views_per_batch": diagnostics.get("views_per_batch"),
        "bundle_id": diagnostics.get("bundle_id"),
        "tta": _dig(results, "settings.tta"),
    }


def summarise(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per number of :data:`SUMMARISED`: median, min and max over the jobs (None where a job
    could not say, e.g. startup off Linux); the 65-job figure, extrapolated from the median
    wall time per job."""
    summary: dict[str, Any] = {}
    for key in SUMMARISED:
        values = [job[key] for job in jobs if job[key] is not None]
        summary[key] = (
            {"median": statistics.median(values), "min": min(values), "max": max(values)}
            if values
            else None
        )
    median_wall = summary["wall_s"]["median"]
    summary["test_set"] = {
        "jobs": TEST_SET_JOBS,
        "seconds": TEST_SET_JOBS * median_wall,
        "extrapolated": True,
        "how": f"{TEST_SET_JOBS} x the median wall time per job (not measured)",
    }
    return summary


def size_entry(size: Size) -> dict[str, Any]:
    return {
        "size": size.spec,
        "cpus": size.cpus,
        "memory": size.memory,
        "memory_bytes": size.memory_bytes,
    }


def run_size(
    cfg: JobCostConfig, runner: Any, size: Size, bundle: Path, job_dir: Path, work: Path
) -> dict[str, Any]:
    """``cfg.jobs`` jobs at ``size``, back to back; the first failure stops the run."""
    jobs = []
    for index in range(1, cfg.jobs + 1):
        where = f"job {index} of {cfg.jobs} at size {size.spec} ({runner.name})"
        output = work / f"output-{size.spec.replace(':', '-')}-{index}"
        output.mkdir()
        os.chmod(output, 0o777)  # the container's user, whatever its uid, writes here
        load = os.getloadavg()[0]
        log.info("%s: running", where)
        run = runner.run(size, bundle, job_dir, output, index)
        if run.timed_out or run.returncode != 0:
            what = (
                f"ran longer than --timeout {cfg.timeout_s:g} s and was stopped"
                if run.timed_out
                else f"exited with status {run.returncode}"
            )
            tail = "\n  ".join(run.stderr_tail) or "(nothing on stderr)"
            raise JobFailed(f"{where} {what}; the last lines of its stderr:\n  {tail}")
        results_file = output / "results.json"
        try:
            results = json.loads(results_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobFailed(f"{where} exited 0 but its results.json is unreadable: {exc}") from None
        job = {"index": index, "load_average_1m": load, **job_numbers(run, results, where)}
        runner.cleanup(output)
        log.info(
            "%s: %.1f s wall, %.1f s inference, first log line after %s",
            where,
            job["wall_s"],
            job["inference_s"],
            "-" if job["first_line_s"] is None else f"{job['first_line_s']:.1f} s",
        )
        jobs.append(job)
    return {**size_entry(size), "jobs": jobs, "summary": summarise(jobs)}


def run_jobcost(cfg: JobCostConfig) -> dict[str, Any]:
    """The whole run; returns the report (every raw number: see :mod:`drac_algo.tools.jobcost`).
    Raises :class:`JobFailed` (a :class:`DracInputError`) at the first job that fails."""
    runner = make_runner(cfg)
    runner_info = runner.prepare()
    bundle, bundle_info = resolve_bundle(cfg)
    work = Path(tempfile.mkdtemp(prefix="drac-jobcost."))
    os.chmod(work, 0o755)
    try:
        job_dir = work / "input"
        image_bytes = write_job(job_dir, cfg.side, cfg.seed).stat().st_size
        sizes = []
        for size in cfg.sizes:
            reason = runner.unavailable(size)
            if reason is not None:
                log.warning("size %s (%s) skipped: %s", size.spec, size.label, reason)
                sizes.append({**size_entry(size), "skipped": reason})
                continue
            sizes.append(run_size(cfg, runner, size, bundle, job_dir, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "machine": machine(),
        "runner": runner_info,
        "bundle": bundle_info,
        "job": {
            "side": cfg.side,
            "seed": cfg.seed,
            "image_bytes": image_bytes,
            "jobs_per_size": cfg.jobs,
            "process_args": list(cfg.process_args),
        },
        "sizes": sizes,
    }

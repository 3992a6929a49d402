"""The job-cost report as markdown: a header naming the machine (CPU model and instruction sets),
the runner (image tag and id, or this checkout), the bundle and what the jobs ran (device,
precision, backend), then one row per instance size."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "size",
    "wall per job",
    "first log line",
    "startup (imports)",
    "bundle check",
    "member builds",
    "inference",
    "write",
    "overhead share",
    "peak RSS",
    "65 jobs (extrapolated)",
)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{seconds / 60:.1f} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _cell(summary: dict[str, Any], key: str, fmt: Any, jobs: int) -> str:
    """The median; with more than one job, the range too."""
    stats = summary.get(key)
    if stats is None:
        return "-"
    if jobs == 1:
        return fmt(stats["median"])
    return f"{fmt(stats['median'])} ({fmt(stats['min'])}-{fmt(stats['max'])})"


def size_row(entry: dict[str, Any]) -> list[str]:
    label = f"{entry['cpus']:g} vCPU / {entry['memory']}"
    if "skipped" in entry:
        return [label, f"skipped: {entry['skipped']}", *["-"] * (len(COLUMNS) - 2)]
    summary, jobs = entry["summary"], entry["jobs"]
    n = len(jobs)
    first = jobs[0]
    threads = first.get("threads")
    if threads:
        label += f" ({threads} thread{'s' if threads != 1 else ''})"
    members = _cell(summary, "members_total_s", _seconds, n)
    if first["members_count"]:
        mean = summary_mean(jobs, "member_mean_s")
        members += f"; {first['members_count']} x {_seconds(mean)}"
    return [
        label,
        _cell(summary, "wall_s", _seconds, n),
        _cell(summary, "first_line_s", _seconds, n),
        _cell(summary, "startup_s", _seconds, n),
        _cell(summary, "bundle_check_s", _seconds, n),
        members,
        _cell(summary, "inference_s", _seconds, n),
        _cell(summary, "write_s", _seconds, n),
        _cell(summary, "overhead_share", _share, n),
        _cell(summary, "peak_rss_bytes", _gib, n),
        _duration(summary["test_set"]["seconds"]),
    ]


def summary_mean(jobs: list[dict[str, Any]], key: str) -> float | None:
    values = [job[key] for job in jobs if job[key] is not None]
    return sum(values) / len(values) if values else None


def _header(report: dict[str, Any]) -> list[str]:
    machine, runner, bundle, job = (report[k] for k in ("machine", "runner", "bundle", "job"))
    features = ", ".join(machine["cpu_features"]) or "none of avx2, avx512f, avx512_bf16, amx_bf16"
    lines = [
        f"- CPU: {machine['cpu_model'] or 'unknown'} ({machine['cpus']} CPUs on the host; "
        f"{features}); load average {machine['load_average_1m']:.2f} at the start",
    ]
    if runner["runner"] == "docker":
        lines.append(
            f"- Runner: docker, image `{runner['image']}` ({runner['image_id'][:19]}), GPUs: "
            f"{runner['gpus']}, a fresh container per job, e.g. `{runner['command']}`"
        )
    else:
        lines.append(
            f"- Runner: --local, `python -m process` from this checkout (commit "
            f"{runner['commit'] or 'unknown'}), a fresh process per job; CPUs pinned: "
            f"{runner['cpu_pinning']}; memory limit {runner['memory_limit']}"
        )
    per_class = ", ".join(f"class {k}: {n}" for k, n in sorted(bundle["members"].items()))
    lines.append(
        f"- Bundle: {bundle['members_total']} members ({per_class}; "
        f"{', '.join(bundle['architectures'])}; input {', '.join(map(str, bundle['input_sizes']))} "
        f"px; ONNX files: {'all members' if bundle['onnx'] else 'not all members'}), "
        f"{_gib(bundle['bytes'])} on disk, weights {bundle['weights']}: `{bundle['folder']}`"
    )
    ran = next((s["jobs"][0] for s in report["sizes"] if s.get("jobs")), None)
    if ran is not None:
        lines.append(
            f"- Ran: device {ran['device']}, precision {ran['autocast']}, backend "
            f"{ran['backend']}, {ran['views_per_batch']} view(s) per batch, TTA {ran['tta']} "
            f"(each member runs the views its manifest lists); bundle id {ran['bundle_id']}"
        )
    extra = (
        f", process.py arguments: {' '.join(job['process_args'])}" if job["process_args"] else ""
    )
    lines.append(
        f"- Job: one {job['side']} x {job['side']} uint8 phantom image (inputs.json + .mha, "
        f"{job['image_bytes'] / 1e6:.2f} MB), {job['jobs_per_size']} job(s) per size, back to "
        f"back{extra}"
    )
    return lines


def _notes(report: dict[str, Any]) -> list[str]:
    notes = []
    jobs = max((len(s.get("jobs", ())) for s in report["sizes"]), default=0)
    if jobs > 1:
        notes.append(f"Cells: the median of {jobs} jobs (min-max).")
    notes.append(
        "65 jobs: extrapolated, 65 x the median wall time per job (the DRAC test set's 65 "
        "images, one job each); not measured."
    )
    for entry in report["sizes"]:
        peak = (entry.get("summary") or {}).get("peak_rss_bytes")
        if peak and peak["max"] > entry["memory_bytes"]:
            notes.append(
                f"Size {entry['size']}: peak RSS {_gib(peak['max'])} is over its memory limit "
                f"{entry['memory']}"
                + (" (not enforced by --local)" if report["runner"]["runner"] == "local" else "")
                + "."
            )
        loads = [j["load_average_1m"] for j in entry.get("jobs", ())]
        cpus = report["machine"]["cpus"] or 1
        if loads and max(loads) > cpus:
            notes.append(
                f"Size {entry['size']}: the load average before a job reached {max(loads):.1f} "
                f"on {cpus} CPUs: other work was running; its times are inflated."
            )
    return notes


def format_report(report: dict[str, Any]) -> str:
    """The markdown report: header, the table, the notes."""
    rows = [size_row(entry) for entry in report["sizes"]]
    lines = ["# What a Grand Challenge job costs", "", *_header(report), ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *_notes(report)]
    return "\n".join(lines) + "\n"

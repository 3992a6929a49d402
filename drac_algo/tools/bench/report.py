"""The report as plain-text tables (the JSON report is :func:`drac_algo.tools.bench.run.run_bench`'s
dict)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drac_algo.common.hardware import CPU_FEATURES
from drac_algo.tools.bench.plan import describe_spec
from drac_algo.tools.bench.targets import DRAC_TEST_IMAGES, GIB


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def _memory_columns(memory: dict[str, Any]) -> tuple[int | None, int | None]:
    """(peak, working) bytes for the table: the GPU's max allocated and reserved on CUDA, the
    process RSS high-water mark and its rise over the baseline on the CPU."""
    if "cuda_max_allocated_bytes" in memory:
        return memory["cuda_max_reserved_bytes"], memory["cuda_max_allocated_bytes"]
    return memory["rss_peak_bytes"], memory["rss_working_bytes"]


def _cost_cells(row: dict[str, Any]) -> list[str]:
    """A timed row's memory (peak, working), GFLOP/s and fraction-of-peak cells, the same for
    the inference methods' table and the training steps' table."""
    peak_bytes, working = _memory_columns(row["memory"])
    frac = row.get("fraction_of_peak")
    return [
        _gib(peak_bytes),
        _gib(working),
        f"{row['achieved_gflops']:.0f}",
        "-" if frac is None else f"{100 * frac:.0f} %",
    ]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in rows:
        out.append(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    cfg, machine = report["config"], report["machine"]
    lines = []
    where = machine.get("gpu") or machine["cpu"]
    n_views = {len(m["views"]) for m in report["ensemble"]}
    groups: dict[str, int] = {}
    for m in report["ensemble"]:
        label = (
            f"{m['key']} {describe_spec(_Spec(m['model']))} ({m['gflop_per_view']:.3g} GFLOP/view)"
        )
        groups[label] = groups.get(label, 0) + 1
    models = ", ".join(f"{n} x {label}" if n > 1 else label for label, n in groups.items())
    image_shapes = ", ".join(f"{h} x {w}" for h, w in report["images"]["shapes"])
    features = ", ".join(machine.get("cpu_features") or ["none of " + "/".join(CPU_FEATURES)])
    lines.append(
        f"device {machine['device']} ({where}, {machine['torch_threads']} threads), "
        f"torch {machine['torch']}; CPU instruction sets: {features}"
    )
    lines.append(
        f"weights: {report['weights']}"
        + (f" {cfg['bundle']}" if cfg["bundle"] else "")
        + f"; images: {report['images']['count']} x {image_shapes} "
        f"({report['images']['source']}); tta {cfg['tta']} "
        f"({'/'.join(str(n) for n in sorted(n_views))} views)"
    )
    lines.append(f"networks: {models}")
    peaks = "; ".join(
        f"{k} {v['peak']:.0f} (matmul {v['matmul']:.0f}, conv "
        + ("-" if v["conv3x3"] is None else f"{v['conv3x3']:.0f}")
        + ")"
        for k, v in report["peak_gflops"].items()
    )
    lines.append(
        f"FLOPs per image (convolutions + matmuls, all views): "
        f"{report['gflop_per_image'] / 1e3:.2f} TFLOP; peak GFLOP/s: {peaks}"
    )
    lines.append(
        f"timing: median of {cfg['repeats']} pass(es) after {cfg['warmup']} warm-up pass(es); "
        + (
            "memory: each method in a fresh process"
            if cfg["isolate"]
            else "memory: in-process (indicative)"
        )
    )
    lines.append("")
    rows = []
    busy = []
    not_timed = []
    for name, r in report["methods"].items():
        if "images_per_second" not in r:
            # Below the table, first line only: a worker's error carries its traceback (the
            # JSON keeps it whole).
            why = (r.get("skipped") or r.get("error") or "?").splitlines()[0]
            not_timed.append(f"{name}: not timed: {why}")
            continue
        rows.append(
            [
                name,
                f"{r['ran_dtype']}",
                f"{r['ran_layout']}",
                str(r["views_per_batch"]),
                f"{r['images_per_second']:.4g}",
                f"{1 / r['images_per_second']:.2f}",
                f"{r['speedup_vs_naive']:.2f}x" if "speedup_vs_naive" in r else "-",
                *_cost_cells(r),
                _duration(r["drac_test_set_seconds"]),
            ]
        )
        load = max((x for x in r.get("load_average", []) if x is not None), default=None)
        if load is not None and load > (machine["cpu_count"] or 1) + 0.5:
            busy.append(f"{name} (load {load:.1f})")
    on_gpu = machine["device"].startswith("cuda")
    peak_label, work_label = ("GPU reserved", "allocated") if on_gpu else ("peak RSS", "working")
    lines.extend(
        _rows(
            [
                "method",
                "dtype",
                "layout",
                "views/batch",
                "img/s",
                "s/img",
                "vs naive",
                peak_label,
                work_label,
                "GFLOP/s",
                "of peak",
                f"{DRAC_TEST_IMAGES} images",
            ],
            rows,
        )
    )
    lines.extend(not_timed)
    default = report["default_ensemble"]
    timed = {n: r for n, r in report["methods"].items() if "images_per_second" in r}
    if timed:
        lines.append(
            f"{DRAC_TEST_IMAGES} images with the default ensemble ("
            + ", ".join(f"{k} {n}" for k, n in default["members"].items())
            + f" members: the recipes' folds x seeds; {default['gflop_per_image'] / 1e3:.2f} "
            "TFLOP per image), scaled from this run by FLOPs: "
            + ", ".join(
                f"{n} {_duration(r['drac_test_set_default_ensemble_seconds'])}"
                for n, r in timed.items()
            )
        )
    if busy:
        lines.append(
            f"warning: the machine was busy (1-min load average above {machine['cpu_count']} "
            f"cores) during: {', '.join(busy)}; timings are unreliable"
        )
    if report["agreement"]:
        lines.append("")
        lines.append(
            f"agreement with naive fp32 ({next(iter(report['agreement'].values()))['images']} "
            "image(s) pooled; masks at the class thresholds, after clean-up):"
        )
        keys = {str(m["class"]): m["key"] for m in report["ensemble"]}
        rows = []
        for name, a in report["agreement"].items():
            rows.append(
                [
                    name,
                    f"{a['pixel_agreement_percent']:.4f} %",
                    *[f"{a['dice'][c]:.4f}" for c in keys],
                    f"{a['max_abs_probability_difference']:.2e}",
                    f"{a['mean_abs_probability_difference']:.2e}",
                ]
            )
        lines.extend(
            _rows(
                [
                    "method",
                    "pixels agree",
                    *[f"Dice {k}" for k in keys.values()],
                    "max |dp|",
                    "mean |dp|",
                ],
                rows,
            )
        )
        first = next(iter(report["agreement"].values()))
        fg = ", ".join(f"{keys[c]} {v:.1f} %" for c, v in first["foreground_percent"].items())
        lines.append(f"naive foreground: {fg}")
        if not cfg["bundle"]:
            lines.append(
                "note: random weights put most probabilities near 0.5, where any rounding flips "
                "a pixel; judge agreement on a trained bundle (--bundle)"
            )
    if report["training"]:
        lines.append("")
        t0 = next((t for t in report["training"] if "task" in t), None)
        if t0 is not None:
            lines.append(
                f"training step ({t0['task']}: {t0['model']}, batch {t0['batch']}, "
                f"{t0['size']} x {t0['size']}, forward + loss + backward + optimizer step, "
                f"{t0['gflop_per_step']:.0f} GFLOP per step):"
            )
        rows = []
        for t in report["training"]:
            label = f"{t['precision']}{' + channels-last' if t['channels_last'] else ''}"
            if "error" in t:
                rows.append([label, t["error"], *[""] * 6])
                continue
            rows.append(
                [
                    label,
                    f"{t['ran_dtype']} {t['ran_layout']}",
                    f"{t['images_per_second']:.4g}",
                    f"{t['median_seconds']:.2f}",
                    *_cost_cells(t),
                ]
            )
        lines.extend(
            _rows(
                ["variant", "ran", "img/s", "s/step", peak_label, work_label, "GFLOP/s", "of peak"],
                rows,
            )
        )
    targets = report["targets"]
    lines.append("")
    lines.append(
        "targets (stated for CPU, 1024 x 1024, D4, default ensemble"
        + ("" if targets["applicable"] else "; this run is not that setting, indicative only")
        + "):"
    )
    for name, label, fmt in (
        ("engine_vs_naive", "engine / naive images per second", "{:.2f}x >= {}x"),
        ("engine_vs_ttach", "engine / ttach images per second", "{:.2f}x >= {}x"),
        ("agreement_percent", "engine pixel agreement with naive", "{:.3f} % >= {} %"),
        ("cpu_peak_gib", "engine peak memory (process RSS)", "{:.2f} GiB < {} GiB"),
    ):
        t = targets[name]
        if t["value"] is None:
            lines.append(f"  {label}: not measured")
            continue
        verdict = "met" if t["met"] else "NOT met"
        if name == "agreement_percent" and not t["conclusive"]:
            verdict += " (random weights: not conclusive)"
        if name == "cpu_peak_gib" and not t["default_ensemble"]:
            verdict += (
                " (not the default ensemble's size: every member stays loaded, rerun with "
                f"--members {max(default['members'].values())} for its memory)"
            )
        lines.append(f"  {label}: {fmt.format(t['value'], t['target'])}: {verdict}")
    return "\n".join(lines)


class _Spec:
    """Attribute view of a ModelSpec dict, for :func:`describe_spec`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)

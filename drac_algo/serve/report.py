"""``report.html``: a batch run's results on one page, for a person to look at before reading
numbers (the page itself: :mod:`drac_algo.serve.report_page`).

:func:`write_report` reads a finished batch run back from its output folder, nothing from
memory, so that whatever assembles a run's outputs can call it once at the end::

    OUT/report.html     the page: run facts, per-class lesion burden, one row per case
    OUT/report/         its thumbnails, <case>_<class key>.png (linked relatively)

Per case and class: the lesion's pixels and components (``results.json``) and a thumbnail of the
class's prediction overlay (the input image under the mask in the class colour); a click opens
``overlays/<case>.png`` at full size. Thumbnails are drawn small from the full-size masks
(``masks/``) and input images (named in ``results.json``; when an input is gone, the overlay's
grey is used instead and the page says so). Ground truth and Dice come from
``python -m drac_algo.evaluate --report`` (:mod:`drac_algo.tools.evaluate_report`).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError
from drac_algo.data.images import load_image
from drac_algo.serve.outputs import MASKS_DIR, NA_INDEX, OVERLAYS_DIR, mask_png_path
from drac_algo.serve.overlay import CLASS_COLOURS
from drac_algo.serve.report_page import (
    THUMB_SIDE,
    Assets,
    CaseRow,
    Column,
    ReportPage,
    Thumb,
    prediction_rgb,
    shrink_image,
    shrink_mask,
    thumb_shape,
    write_page,
)
from drac_algo.serve.results import RESULTS_FILE, read_results

REPORT_FILE = "report.html"
REPORT_DIR = "report"  # the page's thumbnails (report_page.assets_folder of REPORT_FILE)
MAX_THREADS = 4  # threads drawing thumbnails, at most (and at most the CPUs the process may use)

log = logging.getLogger("drac_algo.serve.pipeline")


def _seconds(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.1f} s"


def _gib(value: Any) -> str:
    return "n/a" if value is None else f"{float(value) / 2**30:.2f} GiB"


def run_facts(results: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The header tables of a run's ``results.json``: bundle (classes, members, thresholds),
    settings, device, timings, environment and warnings."""
    settings = results.get("settings") or {}
    diagnostics = results.get("diagnostics") or {}
    timings = results.get("timings") or {}
    bundle = settings.get("bundle") or {}
    bundle_facts = [
        ("path", str(bundle.get("path"))),
        ("id", str(bundle.get("id"))),
        ("created", str(bundle.get("created"))),
    ]
    for index, entry in sorted((settings.get("classes") or {}).items()):
        members = entry.get("members") or []
        views = sorted({len(m.get("views") or []) for m in members})
        bundle_facts.append(
            (
                f"class {index} {entry.get('key')}",
                f"threshold {entry.get('threshold')}, {len(members)} member(s) "
                f"({', '.join(str(m.get('name')) for m in members)}), input "
                f"{', '.join(sorted({str(m.get('input_size')) for m in members}))} px, "
                f"{'/'.join(map(str, views))} TTA view(s) each, components >= "
                f"{entry.get('min_component_px')} px"
                + (", holes filled" if entry.get("fill_holes") else "")
                + (
                    f", the {entry['keep_components']} most confident component(s) kept"
                    if entry.get("keep_components")
                    else ""
                ),
            )
        )
    requested = settings.get("requested_classes")
    setting_facts = [
        ("mode", str(results.get("mode"))),
        ("input", str(results.get("input"))),
        ("output", str(results.get("output"))),
        ("finished", str(results.get("finished"))),
        ("TTA", str(settings.get("tta"))),
        ("precision", f"{settings.get('precision')} (ran {settings.get('autocast')})"),
        ("backend", f"{settings.get('backend')} ({settings.get('backend_reason')})"),
        ("classes", "all in the bundle" if requested is None else str(requested)),
        ("views per batch", str(settings.get("max_views_per_batch"))),
    ]
    submission = results.get("submission")
    if submission:
        written = submission.get("written")
        setting_facts.append(
            ("submission", "written" if written else f"not written: {submission.get('reason')}")
        )
    gpu = diagnostics.get("gpu") or {}
    if gpu.get("usable"):
        gpu_text = f"{gpu.get('device_name')} (compute {gpu.get('capability')})"
    else:
        gpu_text = f"none usable: {gpu.get('reason')}"
    device_facts = [
        ("device", f"{diagnostics.get('device')}, {diagnostics.get('threads')} thread(s)"),
        ("GPU", gpu_text),
        ("driver", str(gpu.get("driver"))),
    ]
    stages = diagnostics.get("stages") or {}
    images = timings.get("images")
    timing_facts = [
        ("total", f"{_seconds(timings.get('total_s'))} for {images} image(s)"),
        ("startup", _seconds((diagnostics.get("cold_start") or {}).get("startup_s"))),
        ("model load", _seconds(stages.get("model_load_s"))),
        ("decode", _seconds(stages.get("decode_s"))),
        ("inference", _seconds(stages.get("inference_s"))),
        ("write", _seconds(stages.get("write_s"))),
        (
            "per image",
            f"mean {_seconds(timings.get('per_image_mean_s'))}, "
            f"max {_seconds(timings.get('per_image_max_s'))}",
        ),
        ("peak memory", _gib(diagnostics.get("peak_rss_bytes"))),
    ]
    environment = settings.get("environment") or {}
    facts = [
        ("Bundle", bundle_facts),
        ("Settings", setting_facts),
        ("Device", device_facts),
        ("Timings", timing_facts),
        ("Environment", [("versions", ", ".join(f"{k} {v}" for k, v in environment.items()))]),
    ]
    warnings = results.get("warnings") or []
    if warnings:
        facts.append(("Warnings", [(str(i + 1), str(w)) for i, w in enumerate(warnings)]))
    return facts


def read_run(output_dir: Path) -> dict[str, Any]:
    """The ``results.json`` of a finished batch run in ``output_dir``, or
    :class:`DracInputError` saying what is missing."""
    results = read_results(output_dir / RESULTS_FILE)
    if results is None:
        raise DracInputError(
            f"{output_dir} holds no {RESULTS_FILE} of a finished process.py run: the report is "
            "written from a finished run's output folder"
        )
    if results.get("mode") != "batch":
        raise DracInputError(
            f"{output_dir / RESULTS_FILE} is a {results.get('mode')!r} run: only a batch run "
            "(a folder of images) has a report"
        )
    return results


def written_classes(results: dict[str, Any]) -> list[int]:
    """The class indices whose masks the run wrote, in order."""
    classes = results.get("classes") or {}
    return sorted(int(i) for i, c in classes.items() if c.get("status") == "written")


def _background(
    output_dir: Path, case: dict[str, Any], shape: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """The case's input image, (H, W) uint8, and False; when it cannot be read any more, the
    grey of its overlay and True (raises :class:`DracInputError` when neither reads)."""
    try:
        pixels = load_image(case["file"]).pixels
        if pixels.shape == tuple(shape):
            return pixels, False
    except (DracInputError, OSError):
        pass
    overlay_png = output_dir / OVERLAYS_DIR / f"{case['case']}.png"
    rgb = cv2.imread(str(overlay_png), cv2.IMREAD_COLOR)
    if rgb is None or rgb.shape[:2] != tuple(shape):
        raise DracInputError(
            f"report: neither the input {case['file']} nor the overlay {overlay_png} of case "
            f"{case['case']} can be read at its size {tuple(shape)}"
        )
    return cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY), True


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask this run wrote, (H, W) uint8 (non-zero = lesion), read with OpenCV alone: the
    run checked it when it wrote it, and :func:`drac_algo.data.images.read_mask_png`'s value
    check would cost the report most of its time. Raises :class:`DracInputError` when the file
    is missing, unreadable or of another size."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None or mask.shape != tuple(shape):
        found = "unreadable or missing" if mask is None else f"of size {mask.shape}"
        raise DracInputError(f"report: the mask {path} is {found}; expected {tuple(shape)}")
    return mask


def _burden_summary(cases: list[dict[str, Any]], classes: list[int]) -> list[list[str]]:
    rows = []
    for index in classes:
        pixels = [c["classes"][str(index)]["area_px"] for c in cases]
        parts = [c["classes"][str(index)]["components"] for c in cases]
        rows.append(
            [
                f"{index} {BY_INDEX[index].name} ({BY_INDEX[index].key})",
                f"{sum(p > 0 for p in pixels)} of {len(cases)}",
                f"{statistics.fmean(pixels):,.0f}",
                f"{statistics.median(pixels):,.0f}",
                f"{max(pixels):,}",
                f"{statistics.fmean(parts):.1f}",
                f"{max(parts)}",
            ]
        )
    return rows


def build_run_page(
    output_dir: Path, results: dict[str, Any], assets: Assets, side: int = THUMB_SIDE
) -> ReportPage:
    """The page of a batch run without ground truth; writes the thumbnails into ``assets``."""
    classes = written_classes(results)
    cases = results.get("cases") or []
    columns = [Column("case", "text")]
    if NA_INDEX in classes:
        columns.append(
            Column("NPI", digits=4, title="non-perfusion index: the image fraction of NA")
        )
    for index in classes:
        group = f"{index} {BY_INDEX[index].key}"
        columns += [
            Column("pixels", group=group, title=f"{BY_INDEX[index].name}: lesion pixels"),
            Column("components", group=group, title="8-connected lesion components"),
            Column("prediction", "image", group=group),
        ]
    # File names first, in case order (they must not depend on the threads' timing).
    files = [
        {i: assets.file_name(f"{case['case']}_{BY_INDEX[i].key}") for i in classes}
        for case in cases
    ]

    def draw(case: dict[str, Any], names: dict[int, str]) -> tuple[CaseRow, bool]:
        name, shape = case["case"], tuple(case["shape"])
        image, from_overlay = _background(output_dir, case, shape)
        small_shape = thumb_shape(shape, side)
        small = shrink_image(image, small_shape)
        values: list[Any] = [name]
        if NA_INDEX in classes:
            values.append(case.get("non_perfusion_index"))
        full = quote(f"{OVERLAYS_DIR}/{name}.png")
        for index in classes:
            stats = case["classes"][str(index)]
            mask = _read_mask(mask_png_path(output_dir / MASKS_DIR, index, name), shape)
            small_mask = shrink_mask(mask, small_shape)
            src = assets.add_image(names[index], prediction_rgb(small, small_mask, index))
            alt = f"{name} {BY_INDEX[index].key}: {stats['area_px']} px predicted"
            thumb = Thumb(src, full, alt, small_shape[1], small_shape[0])
            values += [stats["area_px"], stats["components"], thumb]
        return CaseRow(name, values), from_overlay

    # Decoding the PNGs is most of the time, and OpenCV and SimpleITK decode without the GIL.
    workers = max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(workers, thread_name_prefix="report") as pool:
        drawn = list(pool.map(draw, cases, files))
    rows = [row for row, _ in drawn]
    notes = []
    fallbacks = [case["file"] for case, (_, overlay) in zip(cases, drawn, strict=True) if overlay]
    if fallbacks:
        notes.append(
            f"{len(fallbacks)} input image(s) could not be read any more (first: "
            f"{fallbacks[0]}): their thumbnails are drawn over the grey of the overlay."
        )
    legend = [(f"{i} {BY_INDEX[i].key} prediction", CLASS_COLOURS[i]) for i in classes]
    summary_header = [
        "class",
        "cases with lesion",
        "pixels per case: mean",
        "median",
        "max",
        "components per case: mean",
        "max",
    ]
    return ReportPage(
        title=f"drac-algo report: {output_dir.name}",
        subtitle=(
            f"{len(cases)} case(s) from {results.get('input')}, finished "
            f"{results.get('finished')}; without ground truth (score against it with "
            "python -m drac_algo.evaluate --report)"
        ),
        facts=run_facts(results),
        summary=(summary_header, _burden_summary(cases, classes)),
        columns=columns,
        rows=rows,
        legend=legend,
        sorted_by=0,
        notes=notes,
    )


def write_report(output_dir: str | Path, side: int = THUMB_SIDE) -> Path:
    """Write ``output_dir/report.html`` and its thumbnails ``output_dir/report/`` from the
    finished batch run there (``results.json``, ``masks/``, ``overlays/``, the input images);
    returns the page's path. Atomic: a failure leaves neither. Raises :class:`DracInputError`
    when the folder holds no finished batch run or a file it names cannot be read."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    results = read_run(output_dir)
    path = write_page(
        output_dir / REPORT_FILE, lambda assets: build_run_page(output_dir, results, assets, side)
    )
    log.info(
        "report: %s (%d case(s), %.1f s)",
        path,
        len(results.get("cases") or []),
        time.perf_counter() - started,
    )
    return path

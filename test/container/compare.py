"""Compare an algorithm run's output folder with the checked-in expected outputs.

    python test/container/compare.py EXPECTED_DIR ACTUAL_DIR

Exit status 0 when every expected file is matched, 1 with one line per difference otherwise
(missing, unexpected or unreadable files; masks; image geometry; results.json fields), 2 for
bad arguments. Used by ``test.sh`` on the container's outputs and by
``test/test_container_fixtures.py`` (imported) on a local run; needs only numpy and SimpleITK.

What counts as a match:

- Mask images (``.mha``, ``.nii.gz``, the PNGs under ``masks/``): same size, pixel type and
  number of components; spacing, origin and direction equal (to 1e-6); Dice >= 0.99 per mask
  (per slice of a stack, each slice being one case), where two empty masks match.
- ``results.json``: the same format, mode, class table, submission record, model settings
  (thresholds, post-processing, members, TTA views) and cases in the same order with the same
  names, ids, shapes and conversions; per case and class the lesion area within 1 % (at least
  3 px) and the component count within 2 % (at least 1) of the expected, the non-perfusion
  index likewise. Paths (input/output folders, the case files' folders), timings, the device,
  the precision and the finish time are not compared: they depend on where and how it ran.
- ``overlays/<case>.png`` is not stored (it is large and derived from the masks): every case of
  a batch run must have one, RGB, of the case's shape.
- ``report.html`` and its thumbnails ``report/`` are not stored either (derived from the
  outputs): a batch run must have the page, and a thumbnail it links must be there.
- ``process.log`` must be there and not empty; its content (times, versions) is not compared.
- Every other non-hidden file in the actual output that has no expected counterpart is an error.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import SimpleITK as sitk

DICE_MIN = 0.99
GEOMETRY_TOL = 1e-6
AREA_REL_TOL, AREA_ABS_TOL = 0.01, 3
COMPONENTS_REL_TOL, COMPONENTS_ABS_TOL = 0.02, 1
RESULTS_FILE = "results.json"
# The run's log (times, versions, paths): required, never compared with the expected outputs.
PROCESS_LOG = "process.log"
OVERLAYS_DIR = "overlays"
REPORT_FILE, REPORT_DIR = "report.html", "report"
MASK_SUFFIXES = (".mha", ".nii.gz", ".png")


def dice(expected: np.ndarray, actual: np.ndarray) -> float:
    """Dice of two same-shape masks (non-zero = foreground); 1.0 when both are empty."""
    e, a = expected != 0, actual != 0
    total = int(e.sum()) + int(a.sum())
    return 1.0 if total == 0 else 2.0 * int((e & a).sum()) / total


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix.lower()


def _files(folder: Path) -> Iterator[Path]:
    """Non-hidden files under ``folder``, relative to it, sorted."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield rel


def _read(path: Path) -> tuple[sitk.Image | None, str | None]:
    try:
        return sitk.ReadImage(str(path)), None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        return None, f"{path}: cannot read: {first}"


def compare_mask_image(rel: Path, expected_path: Path, actual_path: Path) -> list[str]:
    """Problems between two mask images (2D mask or (N, H, W) stack of masks)."""
    expected, err = _read(expected_path)
    if err:
        return [f"{rel}: the expected file is unreadable ({err}); regenerate the fixtures"]
    actual, err = _read(actual_path)
    if err:
        return [f"{rel}: {err}"]
    problems = []
    e_type = (expected.GetPixelIDTypeAsString(), expected.GetNumberOfComponentsPerPixel())
    a_type = (actual.GetPixelIDTypeAsString(), actual.GetNumberOfComponentsPerPixel())
    if e_type != a_type:
        problems.append(
            f"{rel}: pixel type {a_type[0]} x{a_type[1]}, expected {e_type[0]} x{e_type[1]}"
        )
    if expected.GetSize() != actual.GetSize():
        return [*problems, f"{rel}: size {actual.GetSize()}, expected {expected.GetSize()}"]
    for what in ("Spacing", "Origin", "Direction"):
        e_val, a_val = getattr(expected, f"Get{what}")(), getattr(actual, f"Get{what}")()
        if not np.allclose(e_val, a_val, rtol=0, atol=GEOMETRY_TOL):
            problems.append(f"{rel}: {what.lower()} {_fmt(a_val)}, expected {_fmt(e_val)}")
    e_arr, a_arr = sitk.GetArrayFromImage(expected), sitk.GetArrayFromImage(actual)
    allowed = {0, 255} if _suffix(rel) == ".png" else {0, 1}
    found = set(np.unique(a_arr).tolist())
    if not found <= allowed:
        problems.append(f"{rel}: holds values {sorted(found)[:8]}; expected {sorted(allowed)}")
    if e_arr.ndim == 2:
        slices = [(None, e_arr, a_arr)]
    else:  # a submission stack: one slice per case
        slices = list(zip(range(len(e_arr)), e_arr, a_arr, strict=True))
    for index, e_mask, a_mask in slices:
        d = dice(e_mask, a_mask)
        if d < DICE_MIN:
            where = f"{rel}" if index is None else f"{rel} slice {index}"
            problems.append(
                f"{where}: Dice {d:.4f} < {DICE_MIN} (expected {int((e_mask != 0).sum())} "
                f"foreground px, got {int((a_mask != 0).sum())})"
            )
    return problems


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _within(expected: float, actual: float, rel: float, abs_: float) -> bool:
    return abs(actual - expected) <= max(abs_, rel * abs(expected))


def _get(data: Any, *keys: str | int) -> Any:
    for key in keys:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


def _model_settings(results: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``settings`` that must not depend on the machine."""
    settings = results.get("settings") or {}
    keep = {
        "tta": settings.get("tta"),
        "classes": settings.get("classes"),
        "bundle_classes": _get(settings, "bundle", "classes"),
        "bundle_created": _get(settings, "bundle", "created"),
    }
    for key in ("input_slug", "output_slugs"):
        if key in settings:
            keep[key] = settings[key]
    return keep


def compare_results(rel: Path, expected_path: Path, actual_path: Path) -> list[str]:
    """Problems between two ``results.json`` files (see the module docstring for the rules)."""
    try:
        expected = json.loads(expected_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{rel}: the expected file is unreadable ({exc}); regenerate the fixtures"]
    try:
        actual = json.loads(actual_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{rel}: not readable JSON: {exc}"]
    if not isinstance(actual, dict):
        return [f"{rel}: expected a JSON object, found {type(actual).__name__}"]
    problems = []

    def same(label: str, e_val: Any, a_val: Any) -> None:
        if e_val != a_val:
            problems.append(f"{rel}: {label} is {json.dumps(a_val)}, expected {json.dumps(e_val)}")

    for key in ("format", "version", "mode", "classes", "submission", "overlays"):
        same(key, expected.get(key), actual.get(key))
    e_settings, a_settings = _model_settings(expected), _model_settings(actual)
    for key in e_settings:
        same(f"settings.{key}", e_settings[key], a_settings.get(key))
    total = _get(actual, "timings", "total_s")
    if not isinstance(total, int | float) or isinstance(total, bool):
        problems.append(f"{rel}: timings.total_s is {json.dumps(total)}, expected a number")
    same(
        "number of warnings", len(expected.get("warnings") or []), len(actual.get("warnings") or [])
    )

    e_cases, a_cases = expected.get("cases") or [], actual.get("cases") or []
    e_names = [c.get("case") for c in e_cases]
    a_names = [c.get("case") for c in a_cases if isinstance(c, dict)]
    if e_names != a_names:
        return [*problems, f"{rel}: cases {a_names}, expected {e_names} (in this order)"]
    for e_case, a_case in zip(e_cases, a_cases, strict=True):
        name = e_case["case"]
        for key in ("case_id", "shape", "converted"):
            same(f"case {name} {key}", e_case.get(key), a_case.get(key))
        same(
            f"case {name} file name",
            Path(str(e_case.get("file"))).name,
            Path(str(a_case.get("file"))).name,
        )
        e_classes, a_classes = e_case.get("classes") or {}, a_case.get("classes") or {}
        same(f"case {name} classes", sorted(e_classes), sorted(a_classes))
        for index in sorted(set(e_classes) & set(a_classes)):
            e_cls, a_cls = e_classes[index], a_classes[index]
            label = f"case {name} class {index} ({e_cls.get('key')})"
            same(f"{label} key", e_cls.get("key"), a_cls.get("key"))
            checks = (
                ("area_px", AREA_REL_TOL, AREA_ABS_TOL),
                ("components", COMPONENTS_REL_TOL, COMPONENTS_ABS_TOL),
            )
            for key, rel_tol, abs_tol in checks:
                e_val, a_val = e_cls.get(key), a_cls.get(key)
                if not isinstance(a_val, int) or not _within(e_val, a_val, rel_tol, abs_tol):
                    problems.append(
                        f"{rel}: {label} {key} is {json.dumps(a_val)}, expected {e_val} "
                        f"(tolerance {rel_tol:.0%}, at least {abs_tol})"
                    )
            pixels = math.prod(e_case["shape"])
            e_frac, a_frac = e_cls.get("area_fraction"), a_cls.get("area_fraction")
            if not isinstance(a_frac, float | int) or not _within(
                e_frac, a_frac, AREA_REL_TOL, AREA_ABS_TOL / pixels
            ):
                problems.append(f"{rel}: {label} area_fraction is {a_frac}, expected {e_frac}")
        e_npi, a_npi = e_case.get("non_perfusion_index"), a_case.get("non_perfusion_index")
        pixels = math.prod(e_case["shape"])
        if (e_npi is None) != (a_npi is None) or (
            e_npi is not None and not _within(e_npi, a_npi, AREA_REL_TOL, AREA_ABS_TOL / pixels)
        ):
            problems.append(f"{rel}: case {name} non_perfusion_index is {a_npi}, expected {e_npi}")
    return problems


def check_overlays(expected_results: Path, actual: Path) -> list[str]:
    """Every case of a batch run has ``overlays/<case>.png``: RGB, of the case's shape."""
    try:
        results = json.loads(expected_results.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # reported by compare_results
    if results.get("mode") != "batch":
        return []
    problems = []
    for case in results.get("cases") or []:
        rel = Path(OVERLAYS_DIR) / f"{case['case']}.png"
        if not (actual / rel).is_file():
            problems.append(f"{rel}: missing (every case of a batch run gets an overlay)")
            continue
        image, err = _read(actual / rel)
        if err:
            problems.append(f"{rel}: {err}")
            continue
        height, width = case["shape"]
        if image.GetSize() != (width, height) or image.GetNumberOfComponentsPerPixel() != 3:
            problems.append(
                f"{rel}: size {image.GetSize()} with {image.GetNumberOfComponentsPerPixel()} "
                f"channel(s), expected ({width}, {height}) RGB"
            )
    return problems


def check_report(expected_results: Path, actual: Path) -> list[str]:
    """A batch run has ``report.html``, and every image it shows is in ``report/``."""
    try:
        results = json.loads(expected_results.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # reported by compare_results
    if results.get("mode") != "batch":
        return []
    page = actual / REPORT_FILE
    if not page.is_file():
        return [f"{REPORT_FILE}: missing (a batch run writes its report page)"]
    text = page.read_text(encoding="utf-8")
    shown = re.findall(r'<img src="([^"]+)"', text)
    problems = [
        f"{REPORT_FILE}: shows {src}, which is not in the output"
        for src in shown
        if not (actual / unquote(src)).is_file()
    ]
    cases = len(results.get("cases") or [])
    if text.count("<tr data-case=") != cases:
        problems.append(f"{REPORT_FILE}: expected one row per case ({cases})")
    return problems


def compare_outputs(expected: Path, actual: Path) -> list[str]:
    """Every difference between the expected output folder and an actual one, one line each
    (empty when they match). Paths in the messages are relative to the folders."""
    expected, actual = Path(expected), Path(actual)
    if not (expected / RESULTS_FILE).is_file():
        raise FileNotFoundError(
            f"{expected} holds no {RESULTS_FILE}: not an expected-output folder"
        )
    if not actual.is_dir():
        return [f"{actual}: the output folder does not exist"]
    problems = []
    expected_files = set(_files(expected))
    for rel in sorted(expected_files):
        if not (actual / rel).is_file():
            problems.append(f"{rel}: missing from the output")
        elif rel.name == RESULTS_FILE:
            problems += compare_results(rel, expected / rel, actual / rel)
        elif _suffix(rel) in MASK_SUFFIXES:
            problems += compare_mask_image(rel, expected / rel, actual / rel)
        else:
            raise ValueError(f"{expected / rel}: no comparison rule for this kind of file")
    problems += check_overlays(expected / RESULTS_FILE, actual)
    problems += check_report(expected / RESULTS_FILE, actual)
    log_file = actual / PROCESS_LOG
    if not log_file.is_file() or log_file.stat().st_size == 0:
        problems.append(f"{PROCESS_LOG}: missing or empty in the output")
    for rel in _files(actual):
        if rel == Path(PROCESS_LOG):
            continue
        derived = rel.parts[0] in (OVERLAYS_DIR, REPORT_DIR) or rel == Path(REPORT_FILE)
        if rel not in expected_files and not derived:
            problems.append(f"{rel}: unexpected file in the output")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("expected", type=Path, help="folder of expected outputs")
    parser.add_argument("actual", type=Path, help="output folder of the run to check")
    args = parser.parse_args(argv)
    try:
        problems = compare_outputs(args.expected, args.actual)
    except (FileNotFoundError, ValueError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    if problems:
        print(f"compare: {args.actual} differs from {args.expected}:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    count = sum(1 for _ in _files(args.expected))
    print(f"compare: {args.actual} matches {args.expected} ({count} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What makes a case of a ``process.py --continue`` run complete, and how it is read back.

A ``--continue`` run writes each case's files straight into the output folders (each file
atomically) and then, last, ``cases/<case>.json``: the case's ``results.json`` entry, the
fingerprint of the settings that produced it, and the sha256 of each of its files. A later
``--continue`` run skips a case only when that record reads, its fingerprint equals the new
run's, and every file it lists is there with the same sha256; anything else (no record, a
truncated one, other settings or bundle, a file missing or changed) is recomputed, never
trusted, and the log says why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drac_algo.common.fsutil import atomic_write_text
from drac_algo.serve.outputs import mask_png_path

CASES_DIR = "cases"
RECORD_FORMAT = "drac-algo-case"


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the settings (JSON, sorted keys) that decide a case's outputs."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_path(output_dir: Path, name: str) -> Path:
    return output_dir / CASES_DIR / f"{name}.json"


def write_case_record(
    output_dir: Path, name: str, record: dict[str, Any], run_fingerprint: str, files: list[Path]
) -> Path:
    """Write ``cases/<name>.json`` after the case's ``files`` (paths under ``output_dir``)."""
    data = {
        "format": RECORD_FORMAT,
        "fingerprint": run_fingerprint,
        "files": {p.relative_to(output_dir).as_posix(): _sha256(p) for p in files},
        "record": record,
    }
    path = record_path(output_dir, name)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def read_complete_case(
    output_dir: Path, name: str, run_fingerprint: str
) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` when case ``name`` is complete for ``run_fingerprint``, else
    ``(None, why)``; ``why`` is ``None`` when there is no record at all (never written)."""
    path = record_path(output_dir, name)
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files, record = data["files"], data["record"]
        assert data["format"] == RECORD_FORMAT and isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None, f"its record {path.name} is unreadable"
    if data.get("fingerprint") != run_fingerprint:
        return None, "it was made with other settings or another model bundle"
    for rel, digest in files.items():
        file = output_dir / rel
        if not file.is_file():
            return None, f"{rel} is missing"
        if _sha256(file) != digest:
            return None, f"{rel} changed since it was written"
    return record, None


def read_case_masks(masks_dir: Path, name: str, classes: tuple[int, ...]) -> dict[int, np.ndarray]:
    """The masks a complete case wrote: class index -> (H, W) uint8 {0, 1}."""
    masks = {}
    for index in classes:
        pixels = cv2.imread(str(mask_png_path(masks_dir, index, name)), cv2.IMREAD_UNCHANGED)
        masks[index] = (pixels != 0).astype(np.uint8)
    return masks


def remove_other_cases(output_dir: Path, names: set[str]) -> list[str]:
    """Remove the records, and the files they list, of cases that are not in ``names`` (an
    earlier run's inputs that this run does not have); returns their names."""
    removed = []
    folder = output_dir / CASES_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        name = path.name.removesuffix(".json")
        if name in names:
            continue
        try:
            files = json.loads(path.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            files = {}
        root = output_dir.resolve()
        for rel in files:
            target = (output_dir / rel).resolve()
            if root in target.parents and target.is_file():  # never outside the output folder
                target.unlink()
        path.unlink(missing_ok=True)
        removed.append(name)
    return removed

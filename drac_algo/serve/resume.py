"""What makes a case of a ``process.py --continue`` run complete, and how it is read back.

A ``--continue`` run writes each case's files straight into the output folders (each file
atomically) and then, last, ``cases/<case>.json``: the case's ``results.json`` entry, the
fingerprint of the settings that produced it, its input (file name, size in bytes, sha256 of
the file, decoded shape) and the sha256 of each of its files. A later ``--continue`` run skips
a case only when that record reads, its fingerprint equals the new run's, its input file is
byte for byte the one recorded, and every file it lists is there with the same sha256; anything
else (no record, a truncated one, other settings or bundle, another image under the same name,
a file missing or changed) is recomputed, never trusted, and the log says why.

The input is identified by its bytes, not its modification time: the sha256 of a file is exact
and costs milliseconds beside a case's inference, while a modification time survives neither
``cp`` nor a download (it moves when nothing changed) and stays put under some tools that do
change the file. The decoded shape is recorded for the reader of the record (what size the
kept masks are); the digest already decides whether the case is kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drac_algo.common.datafiles import read_json
from drac_algo.common.errors import DracInputError
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


def input_identity(path: Path) -> dict[str, Any]:
    """What a record keeps of a case's input file: its name, size in bytes and sha256 (the
    writer adds ``shape``, the decoded image's ``[H, W]``)."""
    data = path.read_bytes()
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_case_record(
    output_dir: Path,
    name: str,
    record: dict[str, Any],
    run_fingerprint: str,
    files: list[Path],
    source: dict[str, Any],
) -> Path:
    """Write ``cases/<name>.json`` after the case's ``files`` (paths under ``output_dir``);
    ``source`` is its input's :func:`input_identity` with ``shape``."""
    data = {
        "format": RECORD_FORMAT,
        "fingerprint": run_fingerprint,
        "input": source,
        "files": {p.relative_to(output_dir).as_posix(): _sha256(p) for p in files},
        "record": record,
    }
    path = record_path(output_dir, name)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def read_complete_case(
    output_dir: Path, name: str, run_fingerprint: str, image: Path
) -> tuple[dict[str, Any] | None, str]:
    """``(record, "")`` when case ``name`` (input file ``image``) is complete for
    ``run_fingerprint``, else ``(None, why)``, ``why`` ready for the log."""
    path = record_path(output_dir, name)
    rel = path.relative_to(output_dir).as_posix()
    if not path.is_file():
        return None, f"no record {rel} (never finished, or removed)"
    # A record is this program's own bookkeeping: one that cannot be read (half-written,
    # edited, nested absurdly deep) means the case is recomputed, not that the run stops.
    try:
        data = read_json(path, "case record")
    except DracInputError:
        return None, f"its record {path.name} is unreadable"
    files, record, source = data.get("files"), data.get("record"), data.get("input")
    if data.get("format") != RECORD_FORMAT or not (
        isinstance(files, dict) and isinstance(record, dict)
    ):
        return None, f"its record {path.name} is unreadable"
    if data.get("fingerprint") != run_fingerprint:
        return None, "it was made with other settings or another model bundle"
    if not isinstance(source, dict):
        return None, f"its record {path.name} does not identify its input (an older version's)"
    now = input_identity(image)
    if {key: source.get(key) for key in now} != now:
        return None, f"its input {image.name} changed since the case was written"
    for rel, digest in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return None, f"its record {path.name} names a file outside the output folder"
        file = output_dir / rel
        if not file.is_file():
            return None, f"{rel} is missing"
        if _sha256(file) != digest:
            return None, f"{rel} changed since it was written"
    # What a fresh run would record: the input as found now (the folder may have moved).
    return {**record, "file": str(image)}, ""


def read_case_masks(masks_dir: Path, name: str, classes: tuple[int, ...]) -> dict[int, np.ndarray]:
    """The masks a complete case wrote: class index -> (H, W) uint8 {0, 1}."""
    masks = {}
    for index in classes:
        pixels = cv2.imread(str(mask_png_path(masks_dir, index, name)), cv2.IMREAD_UNCHANGED)
        masks[index] = (pixels != 0).astype(np.uint8)
    return masks

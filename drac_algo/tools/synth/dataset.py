"""Writing a phantom dataset in the exact DRAC2022 Task 1 release layout.

Every case has its own random stream, ``np.random.default_rng([seed, split, index])`` with
split 0 = training and 1 = testing, and the test names come from the end of one seeded
permutation of the ids: the test set depends on ``seed``, ``n_test`` and ``size`` only, not on
``n_train``.
"""

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

import drac_algo
from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_dir
from drac_algo.serve.overlay import CLASS_COLOURS, overlay
from drac_algo.tools.synth.case import PhantomParams, generate_case

log = logging.getLogger(__name__)

TASK_FOLDER = "A. Segmentation"
IMAGES_FOLDER = "1. Original Images"
GROUNDTRUTH_FOLDER = "2. Groundtruths"
SPLIT_FOLDERS = {"train": "a. Training Set", "test": "b. Testing Set"}
_SPLIT_CODES = {"train": 0, "test": 1}
_NAMES_STREAM = 2
MIN_ID_SPACE = 1400
PREVIEW_CASES = 4


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of case ``index`` (0-based) of ``split`` ("train" or "test")."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def case_ids(n_train: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    """Distinct integer case ids for the two splits, drawn without replacement from
    1..max(1400, 2 * (n_train + n_test)).

    Each split with at least 3 cases gets at least one id >= 1000 and one < 100, so its
    zero-padded names (``086.png``, ``1299.png``) sort differently as text and as integers.
    """
    pool = max(MIN_ID_SPACE, 2 * (n_train + n_test))
    perm = [int(v) for v in np.random.default_rng([seed, _NAMES_STREAM]).permutation(pool) + 1]
    test = perm[len(perm) - n_test :] if n_test else []
    test = _spread(test, perm[: len(perm) - n_test][::-1], set(test))
    train = _spread(perm[:n_train], perm[n_train:], set(test) | set(perm[:n_train]))
    return train, test


def _spread(ids: list[int], spare: Sequence[int], used: set[int]) -> list[int]:
    """Swap ids from ``spare`` into ``ids`` until it holds one id >= 1000 and one < 100."""
    ids = list(ids)
    if len(ids) < 3:
        return ids
    if not any(v >= 1000 for v in ids):
        new = next((v for v in spare if v >= 1000 and v not in used), None)
        if new is not None:
            j = next((j for j, v in enumerate(ids) if v >= 100), 0)
            used.add(new)
            ids[j] = new
    if not any(v < 100 for v in ids):
        new = next((v for v in spare if v < 100 and v not in used), None)
        if new is not None:
            j = next((j for j, v in enumerate(ids) if v < 1000), 0)
            used.add(new)
            ids[j] = new
    return ids


def case_name(case_id: int) -> str:
    """The file name of a case: zero-padded to 3 digits, 4 digits above 999."""
    return f"{case_id:03d}.png"


def write_dataset(
    out: str | Path,
    n_train: int = 24,
    n_test: int = 8,
    size: int = 1024,
    seed: int = 0,
    *,
    overwrite: bool = False,
    preview: bool = True,
    params: PhantomParams | None = None,
) -> Path:
    """Generate a phantom dataset under ``out`` and return ``out``.

    Writes ``out/A. Segmentation/1. Original Images/{a. Training Set,b. Testing Set}/<id>.png``
    (8-bit grey, size x size), ``out/A. Segmentation/2. Groundtruths/<split>/<class folder>/
    <id>.png`` (0/255) only where the case has that lesion (ground truth for the test split
    too, which the real release lacks), ``out/phantom.json`` (arguments, names, lesions per
    case) and, with ``preview``, ``out/preview.png``. Everything is built in a temporary folder
    beside ``out`` and renamed into place at the end, so an interrupted run leaves no partial
    dataset. ``out`` must be absent or empty unless ``overwrite`` (which replaces it).
    """
    out = Path(out)
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise DracInputError(
            f"need n_train >= 0, n_test >= 0 and at least one case; got {n_train}, {n_test}"
        )
    if size < 16:
        raise DracInputError(f"image size must be at least 16 px, got {size}")
    if seed < 0:
        raise DracInputError(f"seed must be a non-negative integer, got {seed}")
    if out.exists() and not out.is_dir():
        raise DracInputError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DracInputError(f"output folder {out} is not empty; pass --overwrite to replace it")

    ids = dict(zip(("train", "test"), case_ids(n_train, n_test, seed), strict=True))
    manifest: dict = {
        "generator": "drac_algo.tools.synth",
        "drac_algo_version": drac_algo.__version__,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_test": n_test,
        "cases": {},
    }
    shown: list[tuple[str, np.ndarray, dict[int, np.ndarray]]] = []
    started = time.perf_counter()
    with atomic_dir(out) as tmp:
        task = tmp / TASK_FOLDER
        for split, split_folder in SPLIT_FOLDERS.items():
            image_dir = task / IMAGES_FOLDER / split_folder
            image_dir.mkdir(parents=True)
            for cls in LESION_CLASSES:
                (task / GROUNDTRUTH_FOLDER / split_folder / cls.folder).mkdir(parents=True)
            cases = {}
            for index, case_id in enumerate(ids[split]):
                name = case_name(case_id)
                image, masks = generate_case(case_rng(seed, split, index), size, params)
                _write_png(image_dir / name, image)
                present = []
                for cls in LESION_CLASSES:
                    mask = masks[cls.index]
                    if mask.any():
                        path = task / GROUNDTRUTH_FOLDER / split_folder / cls.folder / name
                        _write_png(path, (mask * 255).astype(np.uint8))
                        present.append(cls.key)
                cases[name] = present
                if preview and len(shown) < PREVIEW_CASES:
                    shown.append((f"{split} {name}", image, masks))
            manifest["cases"][split] = {
                case_name(i): cases[case_name(i)] for i in sorted(ids[split])
            }
        if preview:
            _write_png(tmp / "preview.png", preview_grid(shown))
        (tmp / "phantom.json").write_text(json.dumps(manifest, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    n = n_train + n_test
    log.info(
        "wrote %d cases of %d px to %s in %.1f s (%.2f s per case)",
        n,
        size,
        out,
        elapsed,
        elapsed / n,
    )
    return out


def preview_grid(
    cases: Sequence[tuple[str, np.ndarray, dict[int, np.ndarray]]], panel: int = 512
) -> np.ndarray:
    """A picture of a few cases: for each, the image and its overlay side by side, two cases
    per row, captioned, with a colour legend. Returns (H, W, 3) uint8 RGB."""
    if not cases:
        raise DracInputError("preview needs at least one case")
    panel = min(panel, cases[0][1].shape[0])
    tiles = []
    for title, image, masks in cases:
        small = cv2.resize(image, (panel, panel), interpolation=cv2.INTER_AREA)
        small_masks = {
            k: cv2.resize(m, (panel, panel), interpolation=cv2.INTER_NEAREST)
            for k, m in masks.items()
        }
        pair = np.hstack([np.repeat(small[:, :, None], 3, axis=2), overlay(small, small_masks)])
        _caption(pair, title, (8, 22), (255, 255, 255))
        tiles.append(pair)
    if len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + 2]) for i in range(0, len(tiles), 2)]
    legend = np.zeros((32, rows[0].shape[1], 3), np.uint8)
    x = 8
    for cls in LESION_CLASSES:
        _caption(legend, f"{cls.index} {cls.key.upper()}", (x, 22), CLASS_COLOURS[cls.index])
        x += 110
    return np.vstack([*rows, legend])


def _caption(canvas: np.ndarray, text: str, at: tuple[int, int], colour) -> None:
    cv2.putText(canvas, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 1, cv2.LINE_AA)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a (H, W) grey or (H, W, 3) RGB uint8 array as PNG (inside the temporary dataset
    folder, so no per-file atomic rename is needed)."""
    if array.ndim == 3:
        array = np.ascontiguousarray(array[:, :, ::-1])  # OpenCV writes BGR
    ok, data = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    path.write_bytes(data.tobytes())

"""What a run writes besides the Grand Challenge sockets: lesion measurements, viewable PNG
masks and overlays, the challenge submission stacks and the probability maps
(``results.json`` is :mod:`drac_algo.serve.results`'s).

Batch-mode layout under the output folder::

    1.nii.gz 2.nii.gz 3.nii.gz                  challenge submission (integer-sorted cases)
    masks/1. Intraretinal Microvascular Abnormalities/<case>.png   0/255, one per image
    masks/2. Nonperfusion Areas/<case>.png
    masks/3. Neovascularization/<case>.png
    overlays/<case>.png                         the image with coloured lesion outlines
    results.json

``masks/`` mirrors the DRAC ground-truth layout (class folders named as in the release, files
named after the images), so ``python -m drac_algo.evaluate --pred OUT/masks --images IMAGES``
scores it. Unlike the release, every image gets a file in every class folder, all-zero where
nothing was found: viewers want one file per image, and the evaluator reads an all-zero file
exactly like a missing one.

Measurements use 8-connectivity for lesion components, as :mod:`drac_algo.engine.postprocess` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_path
from drac_algo.data.images import write_png
from drac_algo.serve.overlay import overlay

PROCESS_LOG = "process.log"  # the console's log lines of every run into this folder, appended
# Held by the run writing into the folder (drac_algo.serve.pipeline.one_writer); gone after it.
LOCK_FILE = ".drac-process.lock"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
PROBABILITIES_DIR = "probabilities"  # --save-probabilities: <case>.npz
NA_INDEX = 2  # nonperfusion areas: their image fraction is the non-perfusion index
# Marks the output folders as written by this program, so that a later run may replace them.
OWNED_MARKER = ".drac-algo-output"


def check_replaceable(folder: Path) -> None:
    """Raise :class:`DracInputError` unless ``folder`` is absent, empty, or this program's (it
    holds :data:`OWNED_MARKER`): a writer replaces only its own folders."""
    if folder.exists() and (
        not folder.is_dir() or (any(folder.iterdir()) and not (folder / OWNED_MARKER).is_file())
    ):
        raise DracInputError(
            f"refusing to replace {folder}: it exists and was not written by this program "
            f"(no {OWNED_MARKER} inside); move it away or choose another --output"
        )


def lesion_stats(mask: np.ndarray) -> dict[str, Any]:
    """Area and component count of one (H, W) {0, 1} mask.

    Returns ``{"area_px": int, "area_fraction": float in [0, 1], "components": int}``;
    components are 8-connected.
    """
    if mask.ndim != 2 or mask.size == 0:
        raise DracInputError(f"lesion_stats: expected a non-empty (H, W) mask, got {mask.shape}")
    binary = (mask != 0).astype(np.uint8)
    area = int(binary.sum())
    components = 0
    if area:
        count, _ = cv2.connectedComponents(binary, connectivity=8)
        components = int(count) - 1  # label 0 is the background
    return {
        "area_px": area,
        "area_fraction": area / binary.size,
        "components": components,
    }


def case_record(
    name: str,
    file: Path,
    shape: tuple[int, int],
    masks: dict[int, np.ndarray],
    *,
    case_id: int | None = None,
    converted: str | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """One case's entry in ``results.json``: per class (keyed "1", "2", "3") its key, area in
    pixels and as a fraction of the image, and component count; plus the non-perfusion index
    (the fraction of the image covered by nonperfusion areas; null when the model has no NA
    class)."""
    classes = {
        str(index): {"key": BY_INDEX[index].key, **lesion_stats(mask)}
        for index, mask in sorted(masks.items())
    }
    npi = classes[str(NA_INDEX)]["area_fraction"] if NA_INDEX in masks else None
    return {
        "case": name,
        "case_id": case_id,
        "file": str(file),
        "shape": [int(shape[0]), int(shape[1])],
        "converted": converted,
        "seconds": seconds,
        "classes": classes,
        "non_perfusion_index": npi,
    }


def mask_png_path(masks_dir: str | os.PathLike, index: int, name: str) -> Path:
    """``<masks_dir>/<class folder>/<name>.png``, the class folder as in the DRAC release."""
    return Path(masks_dir) / BY_INDEX[index].folder / f"{name}.png"


def write_mask_pngs(
    masks_dir: str | os.PathLike, name: str, masks: dict[int, np.ndarray]
) -> list[Path]:
    """Write each class's (H, W) {0, 1} mask as a 0/255 PNG (atomically); returns the paths."""
    written = []
    for index, mask in sorted(masks.items()):
        path = mask_png_path(masks_dir, index, name)
        write_png(path, (mask != 0).astype(np.uint8) * np.uint8(255))
        written.append(path)
    return written


def write_overlay_png(
    overlays_dir: str | os.PathLike, name: str, image: np.ndarray, masks: dict[int, np.ndarray]
) -> Path:
    """The (H, W) uint8 image with each class's lesions tinted and outlined, as
    ``<overlays_dir>/<name>.png``."""
    path = Path(overlays_dir) / f"{name}.png"
    write_png(path, overlay(image, masks, outline=True))
    return path


@dataclass
class StackCollector:
    """Masks of every case, kept bit-packed (1 bit per pixel) until the run ends, to build the
    (N, H, W) submission stacks. Cases are added in integer-sorted order."""

    classes: tuple[int, ...]
    shapes: list[tuple[int, int]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    _packed: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def add(self, name: str, masks: dict[int, np.ndarray]) -> None:
        shapes = {m.shape for m in masks.values()}
        if set(masks) != set(self.classes) or len(shapes) != 1:
            raise DracInputError(
                f"{name}: expected one (H, W) mask for each of classes {list(self.classes)}, got "
                f"{ {i: m.shape for i, m in masks.items()} }"
            )
        self.names.append(name)
        self.shapes.append(next(iter(shapes)))
        for index in self.classes:
            self._packed.setdefault(index, []).append(np.packbits(masks[index] != 0))

    def size_problem(self) -> str | None:
        """Why the cases cannot form one stack (images of different sizes), or None."""
        if not self.shapes:
            return "no cases"
        first = self.shapes[0]
        for name, shape in zip(self.names, self.shapes, strict=True):
            if shape != first:
                return (
                    f"the images differ in size ({self.names[0]} is {first[0]} x {first[1]}, "
                    f"{name} is {shape[0]} x {shape[1]} (H x W)); the submission stacks need "
                    "one size"
                )
        return None

    def stacks(self) -> dict[int, np.ndarray]:
        """Class index -> (N, H, W) uint8 {0, 1}. Raises when :meth:`size_problem` is not None."""
        problem = self.size_problem()
        if problem:
            raise DracInputError(f"cannot build submission stacks: {problem}")
        h, w = self.shapes[0]
        return {
            index: np.stack(
                [np.unpackbits(p, count=h * w).reshape(h, w) for p in self._packed[index]]
            )
            for index in self.classes
        }


def write_probabilities(folder: Path, name: str, probabilities: dict[int, np.ndarray]) -> Path:
    """``folder/<name>.npz`` (``numpy.savez_compressed``): per class its key (``irma``, ``na``,
    ``nv``) -> the ensemble's mean probability, (H, W) float16 in [0, 1] at the image's size.
    float16 keeps about 3 significant digits (steps of 2^-11 = 0.0005 below 1): a mask made
    from it with the class's decision (:func:`drac_algo.engine.postprocess.class_mask` with the
    bundle's settings) differs from the written one only where the probability lies within that
    step of the threshold. Read with ``numpy.load(path)["irma"]``."""
    path = folder / f"{name}.npz"
    arrays = {BY_INDEX[i].key: np.asarray(p, dtype=np.float16) for i, p in probabilities.items()}
    # A file object, not the temporary name: savez would append ".npz" to a name.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path

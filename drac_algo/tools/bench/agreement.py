"""How far a method's answer is from the naive float32 one: masks and probabilities compared
over all images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from drac_algo.tools.bench.plan import Plan
from drac_algo.tools.bench.runners import class_masks


def agreement(
    plan: Plan,
    reference: Sequence[dict[int, np.ndarray]],
    other: Sequence[dict[int, np.ndarray]],
) -> dict[str, Any]:
    """Masks (class thresholds and clean-up) and probabilities of ``other`` against
    ``reference``, pooled over the images: pixel agreement in percent, Dice per class, the
    largest and the mean absolute probability difference."""
    equal = pixels = 0
    overlap = {c.index: 0 for c in plan}
    sizes = {c.index: 0 for c in plan}
    foreground = {c.index: 0 for c in plan}
    max_diff, diff_sum = 0.0, 0.0
    for ref, oth in zip(reference, other, strict=True):
        ref_masks, oth_masks = class_masks(plan, ref), class_masks(plan, oth)
        for c in ref_masks:
            a, b = ref_masks[c].astype(bool), oth_masks[c].astype(bool)
            equal += int((a == b).sum())
            pixels += a.size
            overlap[c] += int((a & b).sum())
            sizes[c] += int(a.sum()) + int(b.sum())
            foreground[c] += int(a.sum())
            diff = np.abs(ref[c] - oth[c])
            max_diff = max(max_diff, float(diff.max()))
            diff_sum += float(diff.sum(dtype=np.float64))
    per_class = pixels // max(len(plan), 1)
    return {
        "images": len(reference),
        "pixel_agreement_percent": 100.0 * equal / pixels,
        # Dice over the pooled pixels; 1.0 when both are empty everywhere (they agree).
        "dice": {str(c): 1.0 if sizes[c] == 0 else 2.0 * overlap[c] / sizes[c] for c in sizes},
        "foreground_percent": {str(c): 100.0 * foreground[c] / per_class for c in foreground},
        "max_abs_probability_difference": max_diff,
        "mean_abs_probability_difference": diff_sum / pixels,
    }


def read_maps(npz: Path, n_images: int) -> list[dict[int, np.ndarray]]:
    """The ``"<image>/<class>"`` arrays of a worker's ``.npz`` as one dict per image."""
    maps: list[dict[int, np.ndarray]] = [{} for _ in range(n_images)]
    with np.load(npz) as data:
        for key in data.files:
            image, cls = key.split("/")
            maps[int(image)][int(cls)] = data[key]
    return maps

"""Turning one class's probability map into its mask: threshold, then optional clean-up.

Pure numpy/OpenCV/SciPy functions on 2D arrays. Masks are (H, W) uint8 in {0, 1}. Connectivity
is 8 for foreground components (diagonal neighbours belong to the same lesion) and therefore 4
for the background when filling holes, so that the two definitions are complementary: a
diagonal gap in a lesion's outline does not enclose a hole.
"""

import cv2
import numpy as np
from scipy import ndimage

from drac_algo.common.errors import DracInputError


def _check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        found = getattr(mask, "shape", type(mask).__name__)
        raise DracInputError(f"{name}: expected a 2D (H, W) array, found {found}")
    return mask


def threshold_probability(probability: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) float probabilities in [0, 1] -> (H, W) uint8 mask in {0, 1}, foreground where
    ``probability >= threshold`` (the same comparison as threshold tuning in
    :mod:`drac_algo.training.validation`)."""
    _check_mask(probability, "probability")
    if not 0.0 <= threshold <= 1.0:
        raise DracInputError(f"threshold must lie in [0, 1], found {threshold}")
    return (probability >= threshold).astype(np.uint8)


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop 8-connected foreground components of fewer than ``min_pixels`` pixels.

    mask: (H, W) {0, 1} (any integer or bool dtype). Returns a new (H, W) uint8 {0, 1} array;
    ``min_pixels <= 1`` keeps everything.
    """
    _check_mask(mask)
    binary = (mask != 0).astype(np.uint8)
    if min_pixels <= 1 or not binary.any():
        return binary
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # label 0 is the background
    if keep[1:count].all():
        return binary
    return keep[labels].astype(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set to 1 every background region not 4-connected to the image border (a hole inside a
    lesion). mask: (H, W) {0, 1}; returns a new (H, W) uint8 {0, 1} array."""
    _check_mask(mask)
    return ndimage.binary_fill_holes(mask != 0).astype(np.uint8)


def postprocess_mask(
    mask: np.ndarray, min_component_px: int = 0, holes: bool = False
) -> np.ndarray:
    """A class's clean-up: fill holes (if ``holes``), then drop components smaller than
    ``min_component_px``. Filling first means a ring-shaped lesion counts with its filled area.
    mask: (H, W) {0, 1}; returns (H, W) uint8 {0, 1}."""
    out = (_check_mask(mask) != 0).astype(np.uint8)
    if holes:
        out = fill_holes(out)
    if min_component_px > 1:
        out = remove_small_components(out, min_component_px)
    return out

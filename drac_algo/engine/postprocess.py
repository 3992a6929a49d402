"""Turning one class's probability map into its mask (:func:`class_mask`): threshold, then the
optional clean-up (fill holes, drop small components), then optionally only the ``k``
components with the highest peak probability kept (:func:`keep_most_confident`).

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


def component_peaks(mask: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, peak) of ``mask``'s 8-connected components: labels (H, W) int32 with 0 the
    background, and peak[i] the highest ``probability`` (H, W) in component i (peak[0] = -inf)."""
    _check_mask(mask)
    count, labels = cv2.connectedComponents((mask != 0).astype(np.uint8), connectivity=8)
    peak = np.full(count, -np.inf)
    flat = labels.ravel()
    inside = flat > 0  # the foreground only: np.maximum.at is slow, lesions are few pixels
    np.maximum.at(peak, flat[inside], probability.ravel()[inside])
    return labels, peak


def keep_most_confident(mask: np.ndarray, probability: np.ndarray, k: int) -> np.ndarray:
    """``mask`` (H, W) {0, 1} with only its ``k`` 8-connected components of highest peak
    ``probability`` (H, W) kept (ties by label order, i.e. raster order of their first pixel);
    ``k = 0`` keeps all. Returns (H, W) uint8 {0, 1}.

    Why: a lesion the model is sure of somewhere is kept whole, while faint look-alikes elsewhere
    go. Under the challenge's metric an image is scored only for the lesions it has, so on those
    images every false component costs Dice, and on the others nothing is lost. Training chooses
    ``k`` on validation images, keeping all unless fewer scores higher (nnU-Net decides its
    keep-the-largest-component rule per class the same way)."""
    if k < 0:
        raise DracInputError(f"keep_most_confident: k must be >= 0 (0 keeps all), found {k}")
    binary = (_check_mask(mask) != 0).astype(np.uint8)
    if k == 0:
        return binary
    labels, peak = component_peaks(binary, probability)
    if len(peak) - 1 <= k:
        return binary
    keep = np.zeros(len(peak), dtype=bool)
    keep[np.argsort(-peak, kind="stable")[:k]] = True
    return keep[labels].astype(np.uint8)


def class_mask(
    probability: np.ndarray,
    threshold: float,
    min_component_px: int = 0,
    holes: bool = False,
    keep_components: int = 0,
) -> np.ndarray:
    """One class's whole decision, as the bundle states it: (H, W) probabilities -> (H, W)
    uint8 {0, 1} mask thresholded, cleaned up (:func:`postprocess_mask`), then cut to its
    ``keep_components`` most confident components (0: all)."""
    mask = postprocess_mask(threshold_probability(probability, threshold), min_component_px, holes)
    return keep_most_confident(mask, probability, keep_components)

"""The one preprocessing contract between an image and a network: validation, inference, the
benchmark and the ablation all call these functions, so the checkpoint and threshold chosen on
validation are chosen on exactly what the submission will compute.

- :func:`to_network_input`: (H, W) uint8 image -> (S, S) float32 network input and its
  :class:`Geometry`: scaled bilinearly so that the longer side equals the member's
  ``input_size`` (aspect ratio kept), normalised ``(x / 255 - mean) / std``, reflect-padded,
  centred, to a square whose side is a multiple of 32 (encoders halve the size up to 5 times;
  the D4 transforms that swap H and W need a square).
- :func:`from_network_output`: (S, S) probabilities in that frame -> (H, W) float32 in [0, 1]
  at the original size (crop the padding, bilinear when enlarging, area when shrinking).

For a square DRAC image at its own size (1024 at 1024) both are the identity on geometry.
Training crops are cut from images resized to ``input_size`` (:mod:`drac_algo.training.augment`),
the
same scale this contract gives a square image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from drac_algo.common.errors import DracInputError
from drac_algo.data.images import MAX_IMAGE_SIDE

PAD_MULTIPLE = 32


@dataclass(frozen=True)
class Geometry:
    """Where an (H, W) image sits inside the network input: scaled to ``resized`` (h, w) and
    placed at (``top``, ``left``) in a ``side`` x ``side`` square."""

    original: tuple[int, int]
    resized: tuple[int, int]
    side: int
    top: int
    left: int


def plan_geometry(
    shape: tuple[int, int], input_size: int, multiple: int = PAD_MULTIPLE
) -> Geometry:
    """Scale (H, W) so that max(H, W) == ``input_size`` (aspect ratio kept, each side at least 1),
    then pad to a centred square with a side that is a multiple of ``multiple``."""
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise DracInputError(f"image must have a positive size, found {h} x {w}")
    if not 1 <= input_size <= MAX_IMAGE_SIDE:
        # A manifest's input_size beyond the largest image read would fail inside OpenCV.
        raise DracInputError(
            f"input_size must be within 1..{MAX_IMAGE_SIDE} (the largest image side read), "
            f"found {input_size}"
        )
    if max(h, w) == input_size:
        rh, rw = h, w
    else:
        scale = input_size / max(h, w)
        rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    side = math.ceil(max(rh, rw) / multiple) * multiple
    return Geometry((h, w), (rh, rw), side, (side - rh) // 2, (side - rw) // 2)


def resize(array: np.ndarray, shape: tuple[int, int], area_when_shrinking: bool) -> np.ndarray:
    """(h, w) array -> ``shape``; bilinear, or area averaging when shrinking if asked."""
    if array.shape == shape:
        return array
    shrinking = shape[0] * shape[1] < array.shape[0] * array.shape[1]
    area = area_when_shrinking and shrinking
    interpolation = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    return cv2.resize(array, (shape[1], shape[0]), interpolation=interpolation)


def normalize(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(H, W) uint8 -> (H, W) float32 ``(pixels / 255 - mean) / std``."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    return (x - np.float32(mean)) / np.float32(std)


def to_network_input(
    image: np.ndarray, input_size: int, mean: float, std: float, multiple: int = PAD_MULTIPLE
) -> tuple[np.ndarray, Geometry]:
    """(H, W) uint8 -> ((S, S) float32 normalised, reflect-padded network input, its Geometry).

    The uint8 image is resized bilinearly before normalising, as the training pipeline's resize
    does (:func:`drac_algo.training.augment.train_transform`).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        found = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", "")
        raise DracInputError(f"expected an (H, W) uint8 image, found {found[0]} {found[1]}")
    geometry = plan_geometry(image.shape, input_size, multiple)
    x = normalize(resize(image, geometry.resized, area_when_shrinking=False), mean, std)
    (rh, rw), side = geometry.resized, geometry.side
    padding = ((geometry.top, side - rh - geometry.top), (geometry.left, side - rw - geometry.left))
    # Reflection keeps image statistics in the border (zeros would look like a dark vessel-free
    # region, which is what nonperfusion looks like); the border is cropped off afterwards.
    return np.ascontiguousarray(np.pad(x, padding, mode="reflect")), geometry


def from_network_output(probability: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(S, S) probabilities in the padded frame -> (H, W) float32 in [0, 1] at the original size."""
    (rh, rw), top, left = geometry.resized, geometry.top, geometry.left
    crop = np.ascontiguousarray(probability[top : top + rh, left : left + rw], dtype=np.float32)
    return np.clip(resize(crop, geometry.original, area_when_shrinking=True), 0.0, 1.0)

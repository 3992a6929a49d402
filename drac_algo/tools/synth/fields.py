"""Random fields and small geometric helpers shared by the phantom's anatomy, lesion and
acquisition stages. All functions are pure: randomness comes only from the ``rng`` argument."""

import math

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, size: int, corr: float) -> np.ndarray:
    """Gaussian random field with correlation length about ``corr`` pixels.

    Returns a (size, size) float32 array with zero mean and unit standard deviation. Large
    correlation lengths are made on a coarse grid and upsampled, so the cost stays near one
    full-size resize whatever ``corr`` is.
    """
    factor = corr / 4.0
    if factor <= 1.0:
        white = rng.standard_normal((size, size), dtype=np.float32)
        field = cv2.GaussianBlur(white, (0, 0), max(corr, 0.5), borderType=cv2.BORDER_REFLECT)
    else:
        coarse = max(8, math.ceil(size / factor))
        white = rng.standard_normal((coarse, coarse), dtype=np.float32)
        small = cv2.GaussianBlur(white, (0, 0), 4.0, borderType=cv2.BORDER_REFLECT)
        field = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return standardise(field)


def bandpass_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Difference-of-Gaussians filtered white noise with a dominant period of about
    ``4 * sigma`` pixels; (size, size) float32, zero mean, unit standard deviation."""
    white = rng.standard_normal((size, size), dtype=np.float32)
    fine = cv2.GaussianBlur(white, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    coarse = cv2.GaussianBlur(white, (0, 0), 2.0 * sigma, borderType=cv2.BORDER_REFLECT)
    return standardise(fine - coarse)


def standardise(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32, copy=False)


def ridges(field: np.ndarray, width: float) -> np.ndarray:
    """Thin bright lines along the zero level set of a standardised field: float32 in [0, 1].

    Zero crossings of band-pass noise form a mesh of curved lines, a cheap stand-in for the
    capillary bed; ``width`` (in field standard deviations) sets how thick they look."""
    return np.exp(-np.square(field / width)).astype(np.float32)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) as two broadcastable float32 arrays, (1, S) and (S, 1)."""
    axis = np.arange(size, dtype=np.float32)
    return axis[None, :], axis[:, None]


def wrap_angle(angle: float) -> float:
    """The same angle in [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def lognormal_area(
    rng: np.random.Generator, p10: float, p50: float, p90: float, size: int
) -> float:
    """A lesion component area in pixels at image size ``size``, drawn from a split log-normal
    whose 10th/50th/90th percentiles at 1024 x 1024 are ``p10``/``p50``/``p90`` (areas scale
    with the square of the image size). Draws beyond 2.2 standard deviations are clipped, so
    no lesion is absurdly large or small."""
    z = float(np.clip(rng.standard_normal(), -2.2, 2.2))
    tail = math.log(p90 / p50) if z > 0 else math.log(p50 / p10)
    area_1024 = p50 * math.exp(z * tail / 1.2816)
    return area_1024 * (size / 1024.0) ** 2

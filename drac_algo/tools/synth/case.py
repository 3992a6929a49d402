"""One phantom UW-OCTA case: anatomy + lesions + acquisition, and its ground-truth masks.

The image is built as a flow-signal map in [0, 1] (capillary mesh, vessel trees, lesions),
then "acquired": blurred, unevenly illuminated (vignetting, a gradient, floater shadows),
corrupted by speckle and additive noise, occasionally streaked by motion lines, and mapped to
8 bits with a random gain and gamma. Distractors are added on purpose so that a model has to
learn the lesions rather than "dark" or "bright": normal dark gaps (foveal avascular zone,
capillary-free zones beside arteries, small partial dropouts, shadows), bright capillary
patches and vessel crossings that are not NV, and thin tortuous normal vessels that are not
IRMA.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from drac_algo.common.errors import DracInputError
from drac_algo.tools.synth.anatomy import draw_segments, grow_vessels, sample_layout
from drac_algo.tools.synth.fields import bandpass_noise, grid, lognormal_area, ridges, smooth_noise
from drac_algo.tools.synth.lesions import (
    draw_irma,
    draw_neovascular_tangle,
    draw_path,
    nonperfusion_regions,
    pick_point,
    signed_distance,
    tortuous_path,
)

IRMA, NA, NV = 1, 2, 3


@dataclass(frozen=True)
class PhantomParams:
    """How often and how large the lesions are. Defaults follow the DRAC2022 training set
    (presence rates) and the organisers' masks (area statistics at 1024 x 1024)."""

    p_irma: float = 0.79
    p_na: float = 0.97
    p_nv: float = 0.32
    na_fraction_mean: float = 0.19
    na_fraction_concentration: float = 7.0  # a + b of the Beta distribution of NA fractions
    irma_area_1024: tuple[float, float, float] = (470.0, 1070.0, 2260.0)  # p10, p50, p90
    nv_area_1024: tuple[float, float, float] = (770.0, 2190.0, 16300.0)
    irma_extra_mean: float = 0.2  # Poisson mean of IRMA components beyond the first
    nv_extra_mean: float = 1.8


def generate_case(
    rng: np.random.Generator, size: int, params: PhantomParams | None = None
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Draw one synthetic UW-OCTA angiogram and its lesion masks.

    Returns ``(image, masks)``: image (size, size) uint8; masks maps every class index
    (1 IRMA, 2 NA, 3 NV) to a (size, size) uint8 mask in {0, 1}, all zero where the case has
    no lesion of that class. The result depends only on ``rng``'s state and the arguments.
    """
    p = params or PhantomParams()
    if size < 16:
        raise DracInputError(f"phantom image size must be at least 16 px, got {size}")
    # Small images are rendered at twice the size and averaged down, as a lower-resolution
    # scanner would: capillaries blur into texture and noise averages out instead of staying
    # one-pixel salt and pepper.
    s = 2 * size if size <= 512 else size
    eye = sample_layout(rng, s)
    segments = grow_vessels(rng, eye)

    na = np.zeros((s, s), np.uint8)
    dropout = na
    if rng.random() < p.p_na:
        a = p.na_fraction_mean * p.na_fraction_concentration
        fraction = float(np.clip(rng.beta(a, p.na_fraction_concentration - a), 0.015, 0.6))
        na, dropout = nonperfusion_regions(rng, eye, fraction)
    sd = signed_distance(na)
    na_soft = cv2.GaussianBlur(dropout.astype(np.float32), (0, 0), max(0.5, 0.003 * s))

    # Large vessels cross nonperfused retina; medium ones fade there, small ones are gone.
    width = segments[:, 4]
    big = draw_segments(segments[width >= 0.0045 * s], s)
    medium = draw_segments(segments[(width >= 0.003 * s) & (width < 0.0045 * s)], s)
    small = draw_segments(segments[width < 0.003 * s], s)
    small *= 1.0 - (1.0 - rng.uniform(0.0, 0.3)) * na_soft
    medium *= 1.0 - 0.5 * na_soft
    np.maximum(small, medium, out=small)

    capillaries = _capillaries(rng, eye, big, na_soft)

    inner = np.zeros((s, s), bool)  # lesions start away from the image border
    inner[int(0.04 * s) : int(0.96 * s), int(0.04 * s) : int(0.96 * s)] = True
    irma_signal = np.zeros((s, s), np.float32)
    irma = np.zeros((s, s), np.uint8)
    if rng.random() < p.p_irma:
        border = (sd > -0.01 * s) & (sd < 0.03 * s) if na.any() else big > 0.5
        border &= inner
        for _ in range(1 + int(rng.poisson(p.irma_extra_mean))):
            if not _add_lesion(rng, border, p.irma_area_1024, draw_irma, irma_signal, irma):
                break

    nv_signal = np.zeros((s, s), np.float32)
    nv = np.zeros((s, s), np.uint8)
    if rng.random() < p.p_nv:
        for _ in range(1 + int(rng.poisson(p.nv_extra_mean))):
            roll = rng.random()
            if roll < 0.55 and na.any():
                where = (np.abs(sd) < 0.02 * s) & inner
            elif roll < 0.9:
                where = (big > 0.6) & inner
            else:
                ring = _disc_ring(eye)
                where = ring & inner if (ring & inner).any() else (big > 0.6) & inner
            _add_lesion(rng, where, p.nv_area_1024, draw_neovascular_tangle, nv_signal, nv)

    vessel_gain = rng.uniform(0.75, 1.0)
    signal = np.maximum(capillaries, vessel_gain * np.maximum(big, small))
    signal = np.maximum(signal, _tortuous_normal_vessels(rng, s, sd))
    signal = np.maximum(signal, irma_signal * vessel_gain)
    signal = np.maximum(signal, nv_signal * vessel_gain)
    image = _acquire(rng, signal)
    masks = {IRMA: irma, NA: na, NV: nv}
    if s != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        for index, mask in masks.items():
            small_mask = cv2.resize(
                mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA
            )
            masks[index] = (small_mask >= 0.5).astype(np.uint8)
    gain = rng.uniform(200, 255)
    return np.rint(np.clip(image, 0.0, 1.0) * gain).astype(np.uint8), masks


def _add_lesion(
    rng: np.random.Generator,
    where: np.ndarray,
    area_1024: tuple[float, float, float],
    draw: Callable[..., tuple[np.ndarray, np.ndarray]],
    signal: np.ndarray,
    mask: np.ndarray,
) -> bool:
    """Draw one lesion with ``draw`` (``draw(rng, side, point, area) -> (signal, mask)``) at a
    random pixel of ``where``, its area from ``area_1024`` (:func:`lognormal_area`), into
    ``signal`` (maximum) and ``mask`` (union); False, drawing nothing, when ``where`` is empty."""
    point = pick_point(rng, where)
    if point is None:
        return False
    side = where.shape[0]
    lesion_signal, lesion_mask = draw(rng, side, point, lognormal_area(rng, *area_1024, side))
    np.maximum(signal, lesion_signal, out=signal)
    mask |= lesion_mask
    return True


def _disc_ring(eye) -> np.ndarray:
    x, y = grid(eye.size)
    r = np.sqrt((x - eye.disc[0]) ** 2 + (y - eye.disc[1]) ** 2) / eye.disc_radius
    return (r > 1.0) & (r < 1.5)


def _capillaries(rng: np.random.Generator, eye, big: np.ndarray, na_soft: np.ndarray):
    """The capillary bed's flow signal, (S, S) float32 in [0, 1]: a mesh with uneven density,
    gone in the foveal avascular zone and in nonperfusion, thinned beside large arteries and
    in a few small partial dropouts that are not nonperfusion."""
    s = eye.size
    sigma = max(0.6, 0.0016 * s) * rng.uniform(0.9, 1.2)
    width = rng.uniform(0.3, 0.45)
    mesh = np.maximum(
        ridges(bandpass_noise(rng, s, sigma), width), ridges(bandpass_noise(rng, s, sigma), width)
    )
    density = 1.0 + 0.2 * smooth_noise(rng, s, 0.05 * s)
    x, y = grid(s)
    for _ in range(int(rng.poisson(2.0))):  # small partial dropouts (distractors)
        cx, cy = rng.uniform(0, s, 2)
        r = math.sqrt(rng.uniform(0.0008, 0.003) / math.pi) * s
        blob = np.exp(-((((x - cx) ** 2 + (y - cy) ** 2) / r**2) ** 2))
        density *= 1.0 - rng.uniform(0.3, 0.6) * blob
    for _ in range(int(rng.poisson(0.8))):  # denser, brighter capillary patches (distractors)
        cx, cy = rng.uniform(0, s, 2)
        r = math.sqrt(rng.uniform(0.001, 0.006) / math.pi) * s
        density *= 1.0 + rng.uniform(0.4, 0.9) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r**2)
    # Capillary-free zone along the large vessels (periarterial), a few px wide.
    gap = cv2.distanceTransform((big < 0.3).astype(np.uint8), cv2.DIST_L2, 3)
    density *= 1.0 - rng.uniform(0.3, 0.8) * np.exp(-gap / max(1.0, 0.005 * s))
    fx, fy = eye.fovea
    angle = np.arctan2(y - fy, x - fx)
    wobble = 1.0 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.1 * np.sin(5 * angle)
    r_faz = np.sqrt((x - fx) ** 2 + (y - fy) ** 2) / (eye.faz_radius * wobble)
    density *= np.clip((r_faz - 1.0) * 3.0, 0.0, 1.0)
    r_disc = np.sqrt((x - eye.disc[0]) ** 2 + (y - eye.disc[1]) ** 2) / eye.disc_radius
    density *= 1.0 - 0.6 * (r_disc < 1.0)
    residual = rng.uniform(0.03, 0.3)
    density *= 1.0 - (1.0 - residual) * na_soft
    level = rng.uniform(0.22, 0.45)
    return np.clip(level * mesh * density, 0.0, 1.0).astype(np.float32)


def _tortuous_normal_vessels(rng: np.random.Generator, s: int, sd: np.ndarray) -> np.ndarray:
    """A few thin, dim, winding normal vessels in perfused retina: IRMA look-alikes that are
    not IRMA (thinner, fainter, away from nonperfusion). (S, S) float32 in [0, 1]."""
    canvas = np.zeros((s, s), np.uint8)
    perfused = sd < -0.04 * s
    for _ in range(int(rng.poisson(1.5))):
        start = pick_point(rng, perfused)
        if start is None:
            break
        path = tortuous_path(rng, start, s * rng.uniform(0.05, 0.12), max(1.0, 0.003 * s), 0.8)
        widths = np.full(len(path), max(1.0, s * rng.uniform(0.0015, 0.0025)))
        draw_path(canvas, path, widths, int(255 * rng.uniform(0.3, 0.5)))
    return canvas.astype(np.float32) / 255.0


def _acquire(rng: np.random.Generator, signal: np.ndarray) -> np.ndarray:
    """Turn a flow-signal map into the scanner's normalised output; both (S, S) float32 in
    [0, 1], the output with noise, uneven light and a random gamma."""
    s = signal.shape[0]
    blur = rng.uniform(0.4, 0.9) * s / 1024
    if blur > 0.25:
        signal = cv2.GaussianBlur(signal, (0, 0), blur)
    x, y = grid(s)
    cx, cy = s * rng.uniform(0.35, 0.65, 2)
    vignette = 1.0 - rng.uniform(0.05, 0.45) * ((x - cx) ** 2 + (y - cy) ** 2) / (0.5 * s) ** 2
    tilt = rng.uniform(0, 2 * math.pi)
    gradient = (
        1.0
        + rng.uniform(-0.35, 0.35)
        * ((x - s / 2) * math.cos(tilt) + (y - s / 2) * math.sin(tilt))
        / s
    )
    light = np.clip(vignette * gradient, 0.15, 1.5) * np.exp(0.1 * smooth_noise(rng, s, 0.25 * s))
    for _ in range(int(rng.poisson(0.6))):  # vitreous floater shadows
        fx, fy = rng.uniform(0, s, 2)
        r = s * rng.uniform(0.04, 0.12)
        light *= 1.0 - rng.uniform(0.3, 0.65) * np.exp(-((x - fx) ** 2 + (y - fy) ** 2) / r**2)
    background = rng.uniform(0.02, 0.08) * (1.0 + 0.3 * smooth_noise(rng, s, 0.1 * s))
    shape = rng.uniform(4.0, 12.0)
    speckle = rng.gamma(shape, 1.0 / shape, size=(s, s)).astype(np.float32)
    if s >= 768:  # speckle grains span about a pixel at 1024
        speckle = cv2.GaussianBlur(speckle, (0, 0), 0.5)
        speckle = 1.0 + (speckle - 1.0) * 1.6  # restore the contrast the blur took
    noisy = (signal + background) * light * speckle
    noisy += rng.normal(0.0, rng.uniform(0.01, 0.035), size=(s, s)).astype(np.float32)
    for _ in range(int(rng.poisson(0.5))):  # horizontal motion lines
        row = int(rng.integers(s))
        rows = slice(row, min(s, row + max(1, round(s * rng.uniform(0.001, 0.003)))))
        noisy[rows] += rng.uniform(0.1, 0.3)
    top = float(np.quantile(noisy[::4, ::4], 0.997))
    scaled = np.clip(noisy / max(top, 1e-6), 0.0, 1.0) ** rng.uniform(0.75, 1.25)
    return scaled.astype(np.float32)

"""Diabetic-retinopathy lesions of the phantom: their regions (the ground truth) and their signal.

Each function returns the mask it drew together with the signal, so the ground truth is by
construction what the image shows:

- nonperfusion areas (NA): large smooth polygons where capillaries drop out;
- IRMA: short, tortuous, dilated vessel segments at or just inside NA borders; the mask is the
  drawn segment widened by about 1.5 px (at 1024) for its blurred edge;
- neovascularisation (NV): compact tangles of small loops at NA borders, on large vessels or at
  the disc; the mask is the region the tangle fills.

Sizes follow the component statistics of the organisers' masks (shared/reference/README.md).
"""

import math

import cv2
import numpy as np

from drac_algo.tools.synth.anatomy import EyeLayout
from drac_algo.tools.synth.fields import grid, smooth_noise


def nonperfusion_regions(
    rng: np.random.Generator, eye: EyeLayout, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nonperfusion covering about ``fraction`` of the image.

    A smooth random field, tilted towards the periphery (where diabetic capillary dropout
    starts) and away from the disc, is thresholded; regions under ~2,000 px at 1024 are
    dropped and holes are filled. Returns ``(mask, dropout)``, both (S, S) uint8 {0, 1}:
    ``dropout`` is the smooth region where capillaries are missing, ``mask`` the same regions
    outlined as polygons, as a grader draws them (within ~4 px at 1024 of ``dropout``).
    """
    s = eye.size
    field = smooth_noise(rng, s, 0.10 * s) + 0.45 * smooth_noise(rng, s, 0.04 * s)
    x, y = grid(s)
    fx, fy = eye.fovea
    r_fovea = np.sqrt((x - fx) ** 2 + (y - fy) ** 2) / (0.5 * s)
    r_disc = np.sqrt((x - eye.disc[0]) ** 2 + (y - eye.disc[1]) ** 2) / (1.6 * eye.disc_radius)
    field += float(rng.uniform(0.5, 1.6)) * r_fovea - 4.0 * np.exp(-(r_disc**2))
    threshold = np.quantile(field[::4, ::4], 1.0 - fraction)
    raw = (field > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(raw, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    kept = [c for c in contours if cv2.contourArea(c) >= 0.002 * s * s]
    mask = np.zeros((s, s), np.uint8)
    dropout = np.zeros((s, s), np.uint8)
    if kept:
        cv2.fillPoly(dropout, kept, 1)
        cv2.fillPoly(mask, [cv2.approxPolyDP(c, 0.004 * s, True) for c in kept], 1)
    return mask, dropout


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the region border in px, positive inside ``mask`` and negative outside;
    (S, S) float32. A mask with no region gives -inf everywhere."""
    if not mask.any():
        return np.full(mask.shape, -np.inf, np.float32)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 3)
    return inside - outside


def pick_point(
    rng: np.random.Generator, candidates: np.ndarray, stride: int = 2
) -> tuple[float, float] | None:
    """A random (x, y) among the True pixels of ``candidates`` (sampled every ``stride`` px)."""
    ys, xs = np.nonzero(candidates[::stride, ::stride])
    if len(xs) == 0:
        return None
    i = int(rng.integers(len(xs)))
    jitter = rng.uniform(0, stride, 2)
    return float(xs[i] * stride + jitter[0]), float(ys[i] * stride + jitter[1])


def tortuous_path(
    rng: np.random.Generator,
    start: tuple[float, float],
    length: float,
    step: float,
    amplitude: float,
) -> np.ndarray:
    """A winding path: a slowly turning course with a sinusoidal wiggle of ``amplitude`` rad.

    Returns (N, 2) float32 points (x, y), N >= 2, about ``step`` px apart."""
    n = max(2, math.ceil(length / step) + 1)
    course = rng.uniform(-math.pi, math.pi) + np.cumsum(rng.normal(0.0, 0.15, n - 1))
    # An irregular wiggle: the period and the amplitude drift along the path.
    period = rng.uniform(8.0, 16.0) * np.exp(rng.normal(0.0, 0.25, n - 1))
    phase = rng.uniform(0, 2 * math.pi) + np.cumsum(2 * math.pi / period)
    envelope = np.clip(1.0 + np.cumsum(rng.normal(0.0, 0.08, n - 1)), 0.4, 1.5)
    heading = course + amplitude * envelope * np.sin(phase)
    steps = step * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    points = np.vstack([[0.0, 0.0], np.cumsum(steps, axis=0)]) + np.asarray(start)
    return points.astype(np.float32)


def draw_path(canvas: np.ndarray, points: np.ndarray, widths: np.ndarray, value: int = 255) -> None:
    """Draw consecutive ``points`` as anti-aliased segments of the given widths (px) into a
    uint8 ``canvas`` in place."""
    fixed = np.rint(points * 16).astype(np.int32)
    for k in range(len(points) - 1):
        t = max(1, round(float(widths[k])))
        p0 = (int(fixed[k, 0]), int(fixed[k, 1]))
        p1 = (int(fixed[k + 1, 0]), int(fixed[k + 1, 1]))
        cv2.line(canvas, p0, p1, value, t, cv2.LINE_AA, shift=4)


def draw_irma(
    rng: np.random.Generator,
    size: int,
    start: tuple[float, float],
    area: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One IRMA segment of about ``area`` mask pixels starting near ``start``.

    Returns (signal (S, S) float32 in [0, 1], mask (S, S) uint8 {0, 1})."""
    s = float(size)
    width = s * rng.uniform(0.0035, 0.006)
    margin = max(0.5, 0.0015 * s)
    step = max(1.0, 0.003 * s)
    path = tortuous_path(rng, start, 2.0 * area / (width + 2 * margin), step, rng.uniform(0.9, 1.4))
    beads = 1.0 + 0.35 * np.sin(np.arange(len(path)) * rng.uniform(0.5, 1.2))
    widths = np.maximum(width * beads, 1.0)
    mask = np.zeros((size, size), np.uint8)
    draw_path(mask, path, widths + 2 * margin, 1)
    # Mask area grows about linearly with path length: cut the path to hit the target area.
    keep = int(np.clip(len(path) * area / max(1, int(mask.sum())), 2, len(path)))
    path, widths = path[:keep], widths[:keep]
    mask[:] = 0
    draw_path(mask, path, widths + 2 * margin, 1)
    canvas = np.zeros((size, size), np.uint8)
    draw_path(canvas, path, widths, int(255 * rng.uniform(0.65, 1.0)))
    return canvas.astype(np.float32) / 255.0, mask


def draw_neovascular_tangle(
    rng: np.random.Generator, size: int, centre: tuple[float, float], area: float
) -> tuple[np.ndarray, np.ndarray]:
    """One NV tangle: an irregular compact region of about ``area`` px densely filled with
    small bright loops and a faint haze.

    Returns (signal (S, S) float32 in [0, 1], mask (S, S) uint8 {0, 1})."""
    s = float(size)
    angles = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    shape = np.ones_like(angles)
    for k in range(2, 6):
        shape += rng.uniform(0, 0.35 / k) * np.cos(k * angles + rng.uniform(0, 2 * math.pi))
    radius = math.sqrt(area / math.pi)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(2):  # second pass rescales the outline to the target area
        pts = np.stack(
            [
                centre[0] + radius * shape * np.cos(angles),
                centre[1] + radius * shape * np.sin(angles),
            ],
            axis=1,
        )
        mask[:] = 0
        cv2.fillPoly(mask, [np.rint(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        drawn = int(mask.sum())
        if drawn == 0:
            break
        radius *= math.sqrt(area / drawn)

    canvas = np.zeros((size, size), np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return canvas.astype(np.float32), mask
    # Larger tangles are made of somewhat larger loops, and fewer per area, so that they
    # stay a tangle of loops rather than a bright blob.
    relative = len(xs) / (2200.0 * (s / 1024) ** 2)
    loop_r = max(1.2, s * rng.uniform(0.004, 0.008) * relative**0.15)
    cover = 1.3 / (1.0 + 0.15 * math.log1p(relative))
    n_loops = int(np.clip(cover * len(xs) / (math.pi * loop_r**2), 3, 2000))
    thickness = max(1, round(s * rng.uniform(0.0012, 0.0022)))
    picks = rng.integers(len(xs), size=n_loops)
    axes = loop_r * rng.uniform(0.6, 1.3, size=(n_loops, 2))
    tilts = rng.uniform(0, 180, n_loops)
    values = (255 * rng.uniform(0.55, 1.0, n_loops)).astype(int)
    for i in range(n_loops):
        cv2.ellipse(
            canvas,
            (int(xs[picks[i]] * 16), int(ys[picks[i]] * 16)),
            (int(axes[i, 0] * 16), int(axes[i, 1] * 16)),
            float(tilts[i]),
            0,
            360,
            int(values[i]),
            thickness,
            cv2.LINE_AA,
            shift=4,
        )
    inside = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    signal = canvas.astype(np.float32) * inside / 255.0
    haze = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), loop_r) * rng.uniform(0.1, 0.3)
    return np.maximum(signal, haze), mask

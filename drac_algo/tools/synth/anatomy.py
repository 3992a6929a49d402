"""Normal retinal anatomy of the phantom: where the fovea and optic disc sit, the large vessel
trees that leave the disc, and their rendering.

Sizes are fractions of the image side ``S`` so that one case looks the same at 256 and at 1024
pixels, only coarser. A 12 x 12 mm UW-OCTA scan at 1024 px has about 12 um per pixel: the disc
is about 150 px wide and 4.5 mm (~380 px) from the fovea, the main arcade vessels are about
10 px wide and capillaries 1 to 2 px.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from drac_algo.tools.synth.fields import wrap_angle


@dataclass(frozen=True)
class EyeLayout:
    """Landmarks of one synthetic eye, in pixels of an S x S image (x to the right, y down)."""

    size: int
    fovea: tuple[float, float]
    disc: tuple[float, float]
    disc_radius: float
    faz_radius: float


def sample_layout(rng: np.random.Generator, size: int) -> EyeLayout:
    """A macula-centred scan with the disc on the left or right (left or right eye)."""
    s = float(size)
    fx = s * (0.5 + rng.uniform(-0.05, 0.05))
    fy = s * (0.5 + rng.uniform(-0.05, 0.05))
    side = 1.0 if rng.random() < 0.5 else -1.0
    dist = s * rng.uniform(0.33, 0.40)
    # The fovea lies a little below the disc centre.
    tilt = rng.uniform(0.02, 0.14)
    dx, dy = side * dist * math.cos(tilt), -dist * math.sin(tilt)
    return EyeLayout(
        size=size,
        fovea=(fx, fy),
        disc=(fx + dx, fy + dy),
        disc_radius=s * rng.uniform(0.065, 0.08),
        faz_radius=s * rng.uniform(0.02, 0.035),
    )


# Growth modes: how a vessel chooses its preferred heading.
_ARCADE, _OUTWARD, _TOWARD = 0, 1, 2
_NO_ARCADE = (0.0, 0.0, 0.0)


@dataclass
class _Tip:
    x: float
    y: float
    theta: float
    width: float
    mode: int
    centre: tuple[float, float]  # for _OUTWARD: grow away from it; for _TOWARD: towards it
    arcade: tuple[float, float, float]  # (+1 superior / -1 inferior, height A, exponent beta)
    budget: float  # length left, px
    bright: float


def grow_vessels(rng: np.random.Generator, eye: EyeLayout, max_segments: int = 40000) -> np.ndarray:
    """Grow the large and medium vessel trees from the disc.

    Returns (K, 6) float32 rows ``x0, y0, x1, y1, width_px, brightness`` (brightness in
    (0, 1]); segments may lie partly outside the image, drawing clips them.
    """
    s = float(eye.size)
    fx, fy = eye.fovea
    dx, dy = eye.disc
    d_fd = math.hypot(fx - dx, fy - dy)
    eu = ((fx - dx) / d_fd, (fy - dy) / d_fd)  # disc -> fovea
    ev = (eu[1], -eu[0]) if eu[0] > 0 else (-eu[1], eu[0])  # perpendicular, pointing up
    w_min = 0.0013 * s
    w_trunk = 0.0105 * s
    margin = 0.08 * s
    faz_stop = eye.faz_radius * 1.15

    tips: list[_Tip] = []
    for sup in (1.0, -1.0):
        height = s * rng.uniform(0.17, 0.27)
        for _ in range(2):  # an artery and a vein in each arcade
            up = (sup * ev[0], sup * ev[1])
            start = eye.disc_radius * rng.uniform(0.0, 0.3)
            tips.append(
                _Tip(
                    x=dx + up[0] * start,
                    y=dy + up[1] * start,
                    theta=math.atan2(up[1] + 0.3 * eu[1], up[0] + 0.3 * eu[0])
                    + rng.uniform(-0.25, 0.25),
                    width=w_trunk * rng.uniform(0.85, 1.1),
                    mode=_ARCADE,
                    centre=(dx, dy),
                    arcade=(sup, height + s * rng.uniform(-0.04, 0.04), rng.uniform(0.45, 0.7)),
                    budget=2.0 * s,
                    bright=rng.uniform(0.9, 1.0),
                )
            )
    nasal = math.atan2(-eu[1], -eu[0])
    for _ in range(int(rng.integers(3, 6))):
        tips.append(
            _Tip(
                x=dx,
                y=dy,
                theta=nasal + rng.uniform(-1.3, 1.3),
                width=s * rng.uniform(0.004, 0.008),
                mode=_OUTWARD,
                centre=(dx, dy),
                arcade=_NO_ARCADE,
                budget=0.8 * s,
                bright=rng.uniform(0.85, 1.0),
            )
        )
    for _ in range(int(rng.integers(1, 4))):  # papillomacular bundle vessels
        tips.append(
            _Tip(
                x=dx,
                y=dy,
                theta=math.atan2(eu[1], eu[0]) + rng.uniform(-0.4, 0.4),
                width=s * rng.uniform(0.0025, 0.004),
                mode=_TOWARD,
                centre=(fx, fy),
                arcade=_NO_ARCADE,
                budget=0.5 * s,
                bright=rng.uniform(0.8, 1.0),
            )
        )

    segs: list[tuple[float, float, float, float, float, float]] = []
    while tips and len(segs) < max_segments:
        tip = tips.pop()
        x, y, theta, w = tip.x, tip.y, tip.theta, tip.width
        small = max(0.0, 1.0 - w / w_trunk)
        steer = {_ARCADE: 0.25, _OUTWARD: 0.05, _TOWARD: 0.08}[tip.mode]
        wobble = 0.008 + 0.03 * small
        n_max = 2000
        noise = rng.standard_normal(n_max)
        draws = rng.random(n_max)
        travelled = 0.0
        curl = 0.0  # heading drift with memory: smooth meanders rather than jitter
        for k in range(n_max):
            h = max(0.004 * s, 1.3 * w)
            if tip.mode == _ARCADE:
                # Follow v = A (u / d)^beta in the disc frame (u towards the fovea, v up for
                # the superior arcade): the arcade leaves the disc steeply, passes about A
                # above (below) the fovea and fans out slowly towards the temporal edge.
                sup, height, beta = tip.arcade
                px, py = x - dx, y - dy
                u = px * eu[0] + py * eu[1]
                v = sup * (px * ev[0] + py * ev[1])
                uu = max(u, 0.0) + 0.02 * s
                v_t = height * (uu / d_fd) ** beta
                slope = beta * v_t / uu + 3.0 * (v_t - v) / s
                gx = eu[0] + sup * ev[0] * slope
                gy = eu[1] + sup * ev[1] * slope
                goal = math.atan2(gy, gx)
            elif tip.mode == _OUTWARD:
                goal = math.atan2(y - tip.centre[1], x - tip.centre[0])
            else:
                goal = math.atan2(tip.centre[1] - y, tip.centre[0] - x)
            curl = 0.85 * curl + wobble * noise[k]
            theta += steer * wrap_angle(goal - theta) + curl
            x1, y1 = x + h * math.cos(theta), y + h * math.sin(theta)
            segs.append((x, y, x1, y1, w, tip.bright))
            x, y = x1, y1
            travelled += h
            w *= 1.0 - h / (6.0 * s)
            # Branching: larger vessels give off more, roughly evenly spaced, side branches.
            spacing = 0.03 * s + 5.0 * w
            if draws[k] < h / spacing:
                child = _branch(rng, tip, x, y, theta, w, eye, eu, ev)
                if child.width >= w_min:
                    w = (w**3 - child.width**3) ** (1.0 / 3.0)  # Murray's law
                    tips.append(child)
            if (
                w < w_min
                or travelled > tip.budget
                or not (-margin < x < s + margin and -margin < y < s + margin)
                or math.hypot(x - fx, y - fy) < faz_stop
                or (
                    tip.mode == _TOWARD
                    and math.hypot(x - tip.centre[0], y - tip.centre[1]) < 0.04 * s
                )
            ):
                break
    return np.asarray(segs, dtype=np.float32).reshape(-1, 6)


def _branch(
    rng: np.random.Generator,
    parent: _Tip,
    x: float,
    y: float,
    theta: float,
    w: float,
    eye: EyeLayout,
    eu: tuple[float, float],
    ev: tuple[float, float],
) -> _Tip:
    """A side branch leaving ``parent`` at (x, y): its width, heading and where it steers.

    Branches of the arcades that face the horizontal raphe run towards it (towards the fovea
    when close to it, thin); those facing away run out to the periphery."""
    s = float(eye.size)
    fx, fy = eye.fovea
    side = 1.0 if rng.random() < 0.5 else -1.0
    ct = theta + side * rng.uniform(0.5, 1.3)
    cw = w * rng.uniform(0.35, 0.75)
    mode, centre = parent.mode, parent.centre
    if parent.mode == _ARCADE:
        sup = parent.arcade[0]
        inward = -(math.cos(ct) * ev[0] + math.sin(ct) * ev[1]) * sup > 0
        u = (x - eye.disc[0]) * eu[0] + (y - eye.disc[1]) * eu[1]
        d_fd = math.hypot(fx - eye.disc[0], fy - eye.disc[1])
        if inward and (u < d_fd or math.hypot(x - fx, y - fy) < 0.3 * s):
            mode, centre = _TOWARD, (fx, fy)
            cw = w * rng.uniform(0.2, 0.45)
        elif inward:
            # Aim at the disc-fovea axis a little further temporally (the raphe).
            u += 0.05 * s
            mode, centre = _TOWARD, (eye.disc[0] + u * eu[0], eye.disc[1] + u * eu[1])
        elif math.hypot(x - eye.disc[0], y - eye.disc[1]) < 0.2 * s:
            mode, centre = _OUTWARD, eye.disc
        else:
            mode, centre = _OUTWARD, eye.fovea
    to_f = (fx - x, fy - y)
    r_f = math.hypot(*to_f)
    facing = (math.cos(ct) * to_f[0] + math.sin(ct) * to_f[1]) / max(r_f, 1.0)
    if mode == _OUTWARD and r_f < 0.35 * s and facing > 0.5:
        # Only thin vessels cross the macula, and they end at the avascular zone.
        mode, centre = _TOWARD, eye.fovea
        cw *= 0.6
    return _Tip(
        x=x,
        y=y,
        theta=ct,
        width=cw,
        mode=mode,
        centre=centre,
        arcade=_NO_ARCADE,
        budget=cw * rng.uniform(45.0, 90.0),
        bright=parent.bright * rng.uniform(0.85, 1.05),
    )


def vessel_brightness(widths: np.ndarray, size: int) -> np.ndarray:
    """Flow signal of a vessel of the given widths (px): small vessels are dimmer because they
    fill only part of the voxel; float32 in (0, 1]."""
    rel = np.asarray(widths, dtype=np.float32) / (0.006 * size)
    return np.clip(0.35 + 0.65 * rel**0.7, 0.2, 1.0).astype(np.float32)


def draw_segments(segments: np.ndarray, size: int) -> np.ndarray:
    """Rasterise (K, 6) segments (see :func:`grow_vessels`) as anti-aliased lines.

    Returns (size, size) float32 in [0, 1]. Lines thinner than a pixel are drawn one pixel
    wide with proportionally less intensity; thicker lines are drawn last so they cover thin
    ones at crossings, as a large vessel's signal does.
    """
    canvas = np.zeros((size, size), np.uint8)
    if len(segments) == 0:
        return canvas.astype(np.float32)
    widths = segments[:, 4]
    value = segments[:, 5] * vessel_brightness(widths, size) * np.minimum(widths, 1.0)
    thickness = np.maximum(1, np.rint(widths)).astype(np.int32)
    level = np.clip(np.rint(value * 255 / 8), 1, 32).astype(np.int32)  # 32 grey levels
    pts = np.rint(segments[:, :4] * 16).astype(np.int32).reshape(-1, 2, 1, 2)
    order = np.lexsort((level, thickness))
    keys = thickness[order] * 64 + level[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    for group in np.split(order, bounds):
        t, lv = int(thickness[group[0]]), int(level[group[0]])
        cv2.polylines(canvas, list(pts[group]), False, min(255, lv * 8), t, cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0

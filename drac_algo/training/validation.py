"""Validation scoring for model selection and threshold tuning, with the challenge's semantics.

Each validation image is reduced to overlap counts at every candidate threshold and component
count (the most confident components kept), so the counts of all images (from every process of a
distributed run) are enough to compute the challenge Dice of any of them: per image Dice on
{0, 1} masks, images without the lesion skipped (NaN), mean over the rest.
"""

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from drac_algo.engine.postprocess import component_peaks, postprocess_mask

# Probabilities are clipped this far from 0 and 1 before turning them back into logits.
_LOGIT_EPS = 1e-6


def overlap_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    min_component_px: int = 0,
    fill_holes: bool = False,
    keep: Sequence[int] = (0,),
) -> np.ndarray:
    """Counts for one image.

    prob: (H, W) float probabilities in [0, 1]; gt: (H, W) {0, 1}; thresholds: (T,) floats;
    keep: (K,) component counts, 0 for all. Returns (T, K, 3) int64: |GT ∩ P|, |P|, |GT| with
    P = prob >= threshold, cleaned up by :func:`drac_algo.engine.postprocess.postprocess_mask`
    and cut to its ``keep[k]`` most confident components, exactly as
    :func:`drac_algo.engine.postprocess.class_mask` makes inference's masks.
    """
    if prob.shape != gt.shape:
        raise ValueError(f"prob shape {prob.shape} != ground truth shape {gt.shape}")
    keep = tuple(keep)
    gt_bool = gt.astype(bool)
    gt_sum = int(gt_bool.sum())
    counts = np.empty((len(thresholds), len(keep), 3), dtype=np.int64)
    if min_component_px <= 1 and not fill_holes and keep == (0,):
        p = prob.ravel()
        p_in = p[gt_bool.ravel()]
        for i, t in enumerate(thresholds):
            counts[i, 0] = (int((p_in >= t).sum()), int((p >= t).sum()), gt_sum)
        return counts
    for i, t in enumerate(thresholds):
        mask = postprocess_mask((prob >= t).astype(np.uint8), min_component_px, fill_holes)
        labels, peak = component_peaks(mask, prob)
        # Per component (label 0 the background): its pixels and its pixels on the lesion,
        # counted over the foreground only.
        flat = labels.ravel()
        fg = flat > 0
        area = np.bincount(flat[fg], minlength=len(peak))
        inside = np.bincount(flat[fg], weights=gt_bool.ravel()[fg], minlength=len(peak))
        order = np.argsort(-peak[1:], kind="stable") + 1  # most confident first, as inference
        area_cum = np.concatenate([[0], np.cumsum(area[order])])
        inside_cum = np.concatenate([[0], np.cumsum(inside[order])])
        for j, k in enumerate(keep):
            n = len(order) if k == 0 else min(k, len(order))
            counts[i, j] = (int(round(inside_cum[n])), int(area_cum[n]), gt_sum)
    return counts


def challenge_dice(counts: np.ndarray) -> np.ndarray:
    """Challenge Dice per setting from stacked counts (N, ..., 3), e.g. (N, T, 3) per threshold
    or (N, T, K, 3) per threshold and component count: NaN-ignoring mean over images of
    2|GT ∩ P| / (|GT| + |P|), images with empty GT skipped. Returns (...) floats (NaN when no
    image has the lesion)."""
    counts = np.asarray(counts, dtype=np.float64)
    inter, pred, gt = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(gt > 0, 2 * inter / (gt + pred), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(dice, axis=0)


def best_keep(dice: np.ndarray, keep: Sequence[int]) -> tuple[int, float]:
    """(k, Dice) of the highest challenge Dice among ``dice`` (K,), the scores of the component
    counts ``keep`` (K,) at one threshold; the first (0, keep all) wins ties, so cutting masks to
    their most confident components is chosen only where validation scores it higher."""
    if np.all(np.isnan(dice)):
        return int(keep[0]), float("nan")
    pick = int(np.flatnonzero(dice >= np.nanmax(dice) - 1e-12)[0])
    return int(keep[pick]), float(dice[pick])


def best_threshold(counts: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(threshold, Dice) maximising the challenge Dice; ties go to the threshold nearest 0.5."""
    dice = challenge_dice(counts)
    if np.all(np.isnan(dice)):
        return 0.5, float("nan")
    best = np.nanmax(dice)
    candidates = np.flatnonzero(dice >= best - 1e-12)
    pick = candidates[np.argmin(np.abs(thresholds[candidates] - 0.5))]
    return float(thresholds[pick]), float(dice[pick])


def best_threshold_and_keep(
    dice: np.ndarray, thresholds: np.ndarray, keep: Sequence[int]
) -> tuple[float, int, float]:
    """(threshold, k, Dice) of the highest challenge Dice among ``dice`` (T, K), the scores of
    every threshold of ``thresholds`` (T,) with every component count of ``keep`` (K,), chosen
    together. Ties go to the first count (0, keep all), then to the threshold nearest 0.5."""
    if np.all(np.isnan(dice)):
        return 0.5, int(keep[0]), float("nan")
    ties = np.argwhere(dice >= np.nanmax(dice) - 1e-12)  # (t, k) pairs
    t, k = min(ties, key=lambda tk: (tk[1], abs(thresholds[tk[0]] - 0.5), tk[0]))
    return float(thresholds[t]), int(keep[k]), float(dice[t, k])


def probability_loss(loss_fn: nn.Module, prob: np.ndarray, gt: np.ndarray) -> float:
    """A training loss evaluated on one full-resolution probability map: (H, W) float in [0, 1]
    and (H, W) {0, 1} ground truth; the probabilities, clipped to [1e-6, 1 - 1e-6], are turned
    back into logits for ``loss_fn`` (which takes (N, 1, H, W) logits)."""
    p = torch.from_numpy(np.clip(prob, _LOGIT_EPS, 1 - _LOGIT_EPS).astype(np.float32))
    target = torch.from_numpy(gt.astype(np.float32))
    return float(loss_fn(torch.logit(p)[None, None], target[None, None]))

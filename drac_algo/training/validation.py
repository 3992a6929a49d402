"""Validation scoring for model selection and threshold tuning, with the challenge's semantics.

Each validation image is reduced to overlap counts at every candidate threshold, so the counts of
all images (from every process of a distributed run) are enough to compute the challenge Dice at
any threshold: per image Dice on {0, 1} masks, images without the lesion skipped (NaN), mean over
the rest.
"""

import warnings

import numpy as np
import torch
from torch import nn

from drac_algo.engine.postprocess import postprocess_mask

# Probabilities are clipped this far from 0 and 1 before turning them back into logits.
_LOGIT_EPS = 1e-6


def overlap_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    min_component_px: int = 0,
    fill_holes: bool = False,
) -> np.ndarray:
    """Counts for one image.

    prob: (H, W) float probabilities in [0, 1]; gt: (H, W) {0, 1}; thresholds: (T,) floats.
    Returns (T, 3) int64: |GT ∩ P|, |P|, |GT| with P = prob >= threshold, cleaned up by
    :func:`drac_algo.engine.postprocess.postprocess_mask` as inference does when either clean-up is
    on.
    """
    if prob.shape != gt.shape:
        raise ValueError(f"prob shape {prob.shape} != ground truth shape {gt.shape}")
    if min_component_px > 1 or fill_holes:
        gt_bool = gt.astype(bool)
        counts = np.empty((len(thresholds), 3), dtype=np.int64)
        for i, t in enumerate(thresholds):
            mask = postprocess_mask((prob >= t).astype(np.uint8), min_component_px, fill_holes)
            pred = mask.astype(bool)
            counts[i] = (int((pred & gt_bool).sum()), int(pred.sum()), int(gt_bool.sum()))
        return counts
    gt_bool = gt.astype(bool).ravel()
    p = prob.ravel()
    counts = np.empty((len(thresholds), 3), dtype=np.int64)
    gt_sum = int(gt_bool.sum())
    p_in = p[gt_bool]
    for i, t in enumerate(thresholds):
        counts[i] = (int((p_in >= t).sum()), int((p >= t).sum()), gt_sum)
    return counts


def challenge_dice(counts: np.ndarray) -> np.ndarray:
    """Challenge Dice per threshold from stacked counts (N, T, 3): NaN-ignoring mean over images
    of 2|GT ∩ P| / (|GT| + |P|), images with empty GT skipped. Returns (T,) floats (NaN when no
    image has the lesion)."""
    counts = np.asarray(counts, dtype=np.float64)
    inter, pred, gt = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(gt > 0, 2 * inter / (gt + pred), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(dice, axis=0)


def best_threshold(counts: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(threshold, Dice) maximising the challenge Dice; ties go to the threshold nearest 0.5."""
    dice = challenge_dice(counts)
    if np.all(np.isnan(dice)):
        return 0.5, float("nan")
    best = np.nanmax(dice)
    candidates = np.flatnonzero(dice >= best - 1e-12)
    pick = candidates[np.argmin(np.abs(thresholds[candidates] - 0.5))]
    return float(thresholds[pick]), float(dice[pick])


def probability_loss(loss_fn: nn.Module, prob: np.ndarray, gt: np.ndarray) -> float:
    """A training loss evaluated on one full-resolution probability map: (H, W) float in [0, 1]
    and (H, W) {0, 1} ground truth; the probabilities, clipped to [1e-6, 1 - 1e-6], are turned
    back into logits for ``loss_fn`` (which takes (N, 1, H, W) logits)."""
    p = torch.from_numpy(np.clip(prob, _LOGIT_EPS, 1 - _LOGIT_EPS).astype(np.float32))
    target = torch.from_numpy(gt.astype(np.float32))
    return float(loss_fn(torch.logit(p)[None, None], target[None, None]))

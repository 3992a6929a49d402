"""Deterministic train/validation splits over case ids."""

import numpy as np

from drac_algo.common.errors import DracInputError


def kfold_split(
    case_ids: list[int], folds: int, fold: int, seed: int
) -> tuple[list[int], list[int]]:
    """Split ``case_ids`` into (train, validation) for fold ``fold`` of ``folds``.

    The permutation depends only on the sorted ids and ``seed``, so the same data and seed give
    the same folds on every machine and in every process of a distributed run. Both lists come
    back sorted by id.
    """
    if folds < 2:
        raise DracInputError(f"folds must be at least 2 for a K-fold split, got {folds}")
    if not 0 <= fold < folds:
        raise DracInputError(f"fold must be in 0..{folds - 1}, got {fold}")
    ids = sorted(case_ids)
    if len(ids) < folds:
        raise DracInputError(f"{len(ids)} cases cannot be split into {folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    val_pos = set(order[fold::folds].tolist())
    train = [c for i, c in enumerate(ids) if i not in val_pos]
    val = [c for i, c in enumerate(ids) if i in val_pos]
    return train, val


def stratified_kfold_split(
    case_ids: list[int], positive: set[int], folds: int, fold: int, seed: int
) -> tuple[list[int], list[int]]:
    """K-fold split that spreads cases with the lesion (``positive``) evenly over the folds, so
    every validation fold has lesions to score (the metric skips images without one)."""
    pos = [c for c in case_ids if c in positive]
    neg = [c for c in case_ids if c not in positive]
    if len(pos) < folds:
        raise DracInputError(
            f"only {len(pos)} cases have this lesion; at least {folds} are needed for "
            f"{folds} folds (lower --folds)"
        )
    pos_train, pos_val = kfold_split(pos, folds, fold, seed)
    if len(neg) >= folds:
        neg_train, neg_val = kfold_split(neg, folds, fold, seed)
    else:
        neg_train, neg_val = neg, []
    return sorted(pos_train + neg_train), sorted(pos_val + neg_val)

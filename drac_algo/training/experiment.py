"""A whole training run: every member (task x fold x seed) of every requested task, then the
model bundle.

``RUN_DIR/<task>/<fold>-seed<seed>/`` holds each member's files (see
:mod:`drac_algo.training.loop`);
``RUN_DIR/model/`` the bundle that inference loads (see :mod:`drac_algo.training.bundle_export`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drac_algo.common.cli import run_log
from drac_algo.common.errors import DracInputError
from drac_algo.common.progress import RunProgress
from drac_algo.data.release import Case, find_layout, list_cases
from drac_algo.training.bundle_export import export_bundle
from drac_algo.training.config import TrainConfig
from drac_algo.training.dataset import Sample, load_samples
from drac_algo.training.distributed import DistContext, barrier
from drac_algo.training.loop import train_member
from drac_algo.training.members import MemberPlan, MemberResult
from drac_algo.training.run_layout import TRAIN_LOG, member_dir
from drac_algo.training.splits import stratified_kfold_split

log = logging.getLogger(__name__)


def plan_members(cfg: TrainConfig, samples: Sequence[Sample], run_dir: Path) -> list[MemberPlan]:
    """The members of one task: each requested fold (or the holdout split) times each seed.

    Folds are stratified by lesion presence and seeded by the first seed, so every seed of a
    fold sees the same split and the seeds ensemble over initialisation and augmentation.
    """
    ids = [s.case_id for s in samples]
    positive = {s.case_id for s in samples if s.positive}
    split_seed = cfg.seeds[0]
    if cfg.val.holdout_fraction is not None:
        splits = [(None, _holdout_split(ids, positive, cfg.val.holdout_fraction, split_seed))]
    else:
        folds = range(cfg.val.folds) if cfg.val.fold is None else [cfg.val.fold]
        splits = [
            (f, stratified_kfold_split(ids, positive, cfg.val.folds, f, split_seed)) for f in folds
        ]
    return [
        MemberPlan(
            cfg.task,
            fold,
            seed,
            tuple(train_ids),
            tuple(val_ids),
            member_dir(run_dir, cfg.task, fold, seed),
        )
        for fold, (train_ids, val_ids) in splits
        for seed in cfg.seeds
    ]


def _holdout_split(
    ids: list[int], positive: set[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """One random split holding out ``fraction`` of the positives and of the negatives."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for group in ([c for c in ids if c in positive], [c for c in ids if c not in positive]):
        order = rng.permutation(len(group))
        n_val = int(round(fraction * len(group)))
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    if not any(c in positive for c in val):
        raise DracInputError(
            f"the holdout of {fraction:.0%} has no image with the lesion; raise holdout_fraction"
        )
    return sorted(train), sorted(val)


@dataclass(frozen=True)
class RunSummary:
    results: dict[str, list[MemberResult]]
    bundle: Path | None
    seconds: float


def run_training(
    data_root: Path,
    run_dir: Path,
    configs: Sequence[TrainConfig],
    ctx: DistContext,
    resume: bool = False,
) -> RunSummary:
    """Train every member of every config in ``configs`` on the DRAC training set at
    ``data_root``, then export the bundle of everything trained in ``run_dir``; the main process
    mirrors the log into ``run_dir/train.log``."""
    log_file = run_log(run_dir / TRAIN_LOG, "drac-train") if ctx.is_main else nullcontext()
    with log_file:
        return _run_training(data_root, run_dir, configs, ctx, resume)


def _run_training(
    data_root: Path,
    run_dir: Path,
    configs: Sequence[TrainConfig],
    ctx: DistContext,
    resume: bool,
) -> RunSummary:
    t0 = time.perf_counter()
    layout = find_layout(data_root)
    cases = list_cases(layout, "train")
    if not cases:
        raise DracInputError(f"no training images found under {layout.train_images}")
    if ctx.is_main:
        log.info("%d training images in %s", len(cases), layout.train_images)
    results: dict[str, list[MemberResult]] = {}
    # One bar over the whole run (members x epochs) above each epoch's own bar.
    epochs_total = sum(cfg.n_members * cfg.epochs for cfg in configs)
    with RunProgress(epochs_total, "epoch", "training", enabled=ctx.is_main) as progress:
        for cfg in configs:
            results[cfg.task] = _train_task(cfg, cases, run_dir, ctx, resume, progress)
    barrier(ctx)
    bundle = export_bundle(run_dir) if ctx.is_main else None
    barrier(ctx)
    return RunSummary(results, bundle, time.perf_counter() - t0)


def _train_task(
    cfg: TrainConfig,
    cases: Sequence[Case],
    run_dir: Path,
    ctx: DistContext,
    resume: bool,
    progress: RunProgress,
) -> list[MemberResult]:
    """Train every member of one task; ``progress`` advances once per epoch."""
    samples = load_samples(cases, cfg.lesion.index)
    n_pos = sum(s.positive for s in samples)
    if ctx.is_main:
        log.info(
            "%s (class %d): %d of %d images have the lesion",
            cfg.task,
            cfg.lesion.index,
            n_pos,
            len(samples),
        )
    if n_pos == 0:
        raise DracInputError(f"no training image has {cfg.lesion.name}: cannot train {cfg.task}")
    results = []
    for plan in plan_members(cfg, samples, run_dir):
        counted = 0  # epochs of this member on the bar: resumed ones count when training resumes

        def epoch_done(epoch: int) -> None:
            nonlocal counted
            progress.advance(epoch + 1 - counted)
            counted = epoch + 1

        results.append(
            train_member(cfg, samples, plan, ctx, resume=resume, on_epoch_end=epoch_done)
        )
        progress.advance(cfg.epochs - counted)  # a member resumed after its last epoch
    return results


def summary_table(summary: RunSummary) -> str:
    lines = [
        f"{'task':<6}{'member':<18}{'best epoch':>11}{'val Dice@0.5':>14}{'threshold':>11}"
        f"{'components':>12}{'val Dice@thr':>14}"
    ]
    for task, members in summary.results.items():
        for r in members:
            lines.append(
                f"{task:<6}{r.plan.name:<18}{r.best_epoch:>11}{r.val_dice:>14.4f}"
                f"{r.threshold:>11.2f}{r.keep_components or 'all':>12}{r.tuned_dice:>14.4f}"
            )
    return "\n".join(lines)

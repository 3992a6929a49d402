"""The layout of a training run folder, spelled here and nowhere else::

    RUN_DIR/
        train.log                   the console's log lines of every run into it, versions first
        <task>/<member>/            one ensemble member: task irma, na or nv; member fold2-seed0
            last.pt                 full resumable state
            best.pt                 best weights by validation Dice, with the tuned threshold
            metrics.csv             one row per epoch
            curves.png              losses and validation Dice per epoch
            member.json             what the bundle export reads besides best.pt
            config.json             the member's resolved training config
        model/                      the bundle (drac_algo.bundle.store), written by the export

Training (:mod:`drac_algo.training.loop`, :mod:`drac_algo.training.experiment`) writes it, the
export
(:mod:`drac_algo.training.bundle_export`) and the ablation read it.
"""

from __future__ import annotations

from pathlib import Path

TRAIN_LOG = "train.log"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
MEMBER_SUMMARY = "member.json"
MEMBER_CONFIG = "config.json"
BUNDLE_DIR = "model"


def member_name(fold: int | None, seed: int) -> str:
    """``fold2-seed0``, or ``holdout-seed0`` for a single holdout split."""
    return f"{'holdout' if fold is None else f'fold{fold}'}-seed{seed}"


def task_dir(run_dir: str | Path, task: str) -> Path:
    """Where the members of one task (lesion class key) live."""
    return Path(run_dir) / task


def member_dir(run_dir: str | Path, task: str, fold: int | None, seed: int) -> Path:
    return task_dir(run_dir, task) / member_name(fold, seed)


def bundle_dir(run_dir: str | Path) -> Path:
    """Where the export writes the run's bundle by default."""
    return Path(run_dir) / BUNDLE_DIR

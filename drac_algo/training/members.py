"""One ensemble member of a training run (one lesion class, one fold, one seed): its plan,
its result, and the ``member.json`` summary that :func:`drac_algo.training.loop.train_member` writes
and the bundle export (:mod:`drac_algo.training.bundle_export`) reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drac_algo.common.fsutil import atomic_write_text
from drac_algo.common.provenance import environment
from drac_algo.training.config import TrainConfig
from drac_algo.training.run_layout import MEMBER_SUMMARY, member_name


@dataclass(frozen=True)
class MemberPlan:
    """Which data one member trains and validates on, and where it writes."""

    task: str
    fold: int | None
    seed: int
    train_ids: tuple[int, ...]
    val_ids: tuple[int, ...]
    folder: Path

    @property
    def name(self) -> str:
        return member_name(self.fold, self.seed)


@dataclass(frozen=True)
class MemberResult:
    plan: MemberPlan
    best_epoch: int
    val_dice: float
    threshold: float
    tuned_dice: float  # validation Dice at the threshold, with keep_components
    keep_components: int = 0  # the most confident components each mask keeps; 0 all


def write_member_summary(cfg: TrainConfig, result: MemberResult) -> None:
    """``member.json``: what the bundle export needs besides the weights in ``best.pt``."""
    summary: dict[str, Any] = {
        "task": cfg.task,
        "fold": result.plan.fold,
        "seed": result.plan.seed,
        "best_epoch": result.best_epoch,
        "val_dice": result.val_dice,
        "threshold": result.threshold,
        "keep_components": result.keep_components,
        "val_dice_at_threshold": result.tuned_dice,
        "train_cases": list(result.plan.train_ids),
        "val_cases": list(result.plan.val_ids),
        "config": cfg.to_dict(),
        "environment": environment(),
    }
    atomic_write_text(result.plan.folder / MEMBER_SUMMARY, json.dumps(summary, indent=2) + "\n")

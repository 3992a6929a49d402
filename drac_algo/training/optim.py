"""The optimiser and the learning-rate schedule of a training run, by their recipe names.

:data:`OPTIMIZERS` and :data:`SCHEDULES` are the registries of the names a recipe's
``optimizer`` and ``scheduler`` accept (:class:`drac_algo.training.config.TrainConfig` validates
against
them); :func:`make_optimizer` and :func:`make_scheduler` build what
:func:`drac_algo.training.loop.train_member` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import torch

from drac_algo.common.errors import DracInputError

if TYPE_CHECKING:  # config.py validates against these registries: a runtime import would cycle
    from drac_algo.training.config import TrainConfig

T = TypeVar("T")


def _cosine(cfg: TrainConfig, epoch: int) -> float:
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(epoch, cfg.epochs) / cfg.epochs))


def _steps(cfg: TrainConfig, epoch: int) -> float:
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestone_epochs())


# Learning-rate factor (x lr) before each epoch (0-based), by scheduler name.
SCHEDULES: dict[str, Callable[[TrainConfig, int], float]] = {
    "multistep": _steps,
    "cosine": _cosine,
    "cosine_steps": lambda cfg, epoch: _cosine(cfg, epoch) * _steps(cfg, epoch),
    "constant": lambda cfg, epoch: 1.0,
}
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def registered(registry: Mapping[str, T], what: str, name: str) -> T:
    """``registry[name]``; an unknown name raises :class:`DracInputError` listing the valid
    ones (``unknown scheduler 'step'; valid: multistep, ...``)."""
    if name not in registry:
        raise DracInputError(f"unknown {what} {name!r}; valid: {', '.join(registry)}")
    return registry[name]


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) as a multiple of ``cfg.lr``, never below
    ``cfg.min_lr / cfg.lr``."""
    return max(registered(SCHEDULES, "scheduler", cfg.scheduler)(cfg, epoch), cfg.min_lr / cfg.lr)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch: the learning rate follows :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg, epoch))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    optimizer = registered(OPTIMIZERS, "optimizer", cfg.optimizer)
    return optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

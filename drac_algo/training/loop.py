"""Training one ensemble member: one lesion class, one fold, one seed.

:func:`train_member` reads top to bottom, over a :class:`MemberRun` that holds the member's
state: build the network, optimiser and data; restore the last checkpoint when resuming; then
per epoch train, validate with the challenge's Dice, checkpoint and report; finally the result.
The epoch's own work (mixed precision, gradient accumulation, DDP, validation through the
inference code) is in :mod:`drac_algo.training.epoch`.

Files of a member, in ``RUN_DIR/<task>/<member>/`` (:mod:`drac_algo.training.run_layout`):
``last.pt`` (full resumable state), ``best.pt`` (the weights the member keeps, plus the
threshold tuned on that epoch's validation predictions, and at that threshold the number of most
confident components each mask keeps when the recipe offers any: by default the best epoch by
validation Dice at threshold 0.5, the method's selection rule; with ``checkpoint = "last"`` the
final epoch), ``metrics.csv``, ``curves.png``, ``config.json`` and ``member.json`` (the summary
that the bundle export reads; written by :func:`drac_algo.training.members.write_member_summary`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_write_text
from drac_algo.engine.precision import grad_scaler, training_dtype
from drac_algo.networks.models import build_model, load_initial_weights
from drac_algo.training.augment import train_transform
from drac_algo.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from drac_algo.training.config import TrainConfig
from drac_algo.training.curves import plot_curves, write_history_csv
from drac_algo.training.dataset import LesionDataset, Sample
from drac_algo.training.deep_supervision import DeepSupervisionNet
from drac_algo.training.distributed import (
    DistContext,
    all_gather_objects,
    barrier,
    broadcast_object,
)
from drac_algo.training.epoch import (
    aux_heads_state,
    keep_grid,
    make_loader,
    network_of,
    threshold_grid,
    train_one_epoch,
    train_samples,
    unwrap,
    validate,
    validation_views,
)
from drac_algo.training.fingerprint import check_resume, member_fingerprint
from drac_algo.training.losses import build_loss
from drac_algo.training.members import MemberPlan, MemberResult, write_member_summary
from drac_algo.training.optim import make_optimizer, make_scheduler
from drac_algo.training.run_layout import (
    BEST_CHECKPOINT,
    CURVES_PNG,
    LAST_CHECKPOINT,
    MEMBER_CONFIG,
    METRICS_CSV,
)
from drac_algo.training.validation import best_keep, best_threshold, challenge_dice

log = logging.getLogger(__name__)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the recipe's ``amp`` on ``device``
    (:func:`drac_algo.engine.precision.training_dtype`: ``"auto"`` is bf16 where native, else
    fp16 on CUDA and float32 on the CPU; ``true`` forces bf16 on the CPU; ``false`` is float32)."""
    return training_dtype(cfg.amp, device)


def train_member(
    cfg: TrainConfig,
    samples: Sequence[Sample],
    plan: MemberPlan,
    ctx: DistContext,
    resume: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
) -> MemberResult:
    """Train one member and write its files under ``plan.folder`` (main process only).

    ``on_epoch_end(epoch)`` runs after each epoch's checkpoint is on disk (a hook for progress
    reporting; tests use it to interrupt a run).
    """
    run = MemberRun(cfg, samples, plan, ctx, resume)
    for epoch in range(run.start_epoch, cfg.epochs):
        row, improved = run.epoch(epoch)
        if ctx.is_main:
            run.checkpoint(improved)
            run.report(row, improved)
        barrier(ctx)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return run.result()


class MemberRun:
    """The state of one member's training: network (wrapped for deep supervision and DDP),
    optimiser, schedule, gradient scaler, loss, data, and the history and best epoch so far.

    Construction does, in this order (the order fixes the random draws, so a run is
    reproducible for a seed): seed, build the network (and its initial weights), the optimiser
    and schedule, restore ``last.pt`` when resuming, wrap for DDP, build the data, and write
    ``config.json``. Then :meth:`epoch` per epoch, :meth:`checkpoint` and :meth:`report` on the
    main process, and :meth:`result` at the end.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        samples: Sequence[Sample],
        plan: MemberPlan,
        ctx: DistContext,
        resume: bool = False,
    ) -> None:
        self.cfg, self.plan, self.ctx = cfg, plan, ctx
        self.folder = plan.folder
        if ctx.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
        train_ids, val_ids = set(plan.train_ids), set(plan.val_ids)
        self.train_samples = train_samples(cfg, samples, train_ids)
        self.val_samples = [s for s in samples if s.case_id in val_ids]
        self.fingerprint = member_fingerprint(cfg, self.train_samples, self.val_samples)
        self.thresholds = threshold_grid(cfg)
        self.half = int(np.flatnonzero(np.isclose(self.thresholds, 0.5))[0])

        self._build(resume)
        self.start_epoch, self.history = 0, []
        self.best: dict = {"dice": -math.inf, "epoch": -1}
        if resume and (self.folder / LAST_CHECKPOINT).is_file():
            self._restore()
        if ctx.distributed:
            self.model = DistributedDataParallel(
                self.model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
            )
        self._data()

    def _build(self, resume: bool) -> None:
        cfg, ctx, plan = self.cfg, self.ctx, self.plan
        seed_everything(plan.seed)
        model = build_model(cfg.model, cfg.encoder_weights)
        if cfg.init_from is not None and not (resume and (self.folder / LAST_CHECKPOINT).is_file()):
            load_initial_weights(model, cfg.init_from)
            if ctx.is_main:
                log.info(
                    "%s/%s: starting from the weights in %s", plan.task, plan.name, cfg.init_from
                )
        if cfg.deep_supervision:
            model = DeepSupervisionNet(model)
        model = model.to(ctx.device)
        if cfg.channels_last and ctx.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = make_optimizer(cfg, model.parameters())
        self.scheduler = make_scheduler(cfg, self.optimizer)
        self.dtype = amp_dtype(cfg, ctx.device)
        self.scaler = grad_scaler(self.dtype)
        self.loss_fn = build_loss(cfg.loss.name, **cfg.loss.params)

    def _restore(self) -> None:
        state = load_checkpoint(self.folder / LAST_CHECKPOINT)
        where = f"{self.plan.task}/{self.plan.name} ({self.folder / LAST_CHECKPOINT})"
        if not check_resume(state.get("fingerprint"), self.fingerprint, where):
            log.warning(
                "%s: written before runs recorded their config and images; resuming without "
                "checking that they are unchanged",
                where,
            )
        network_of(self.model).load_state_dict(state["model"])
        if state.get("aux_heads") is not None:
            unwrap(self.model).heads.load_state_dict(state["aux_heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.history = state["epoch"] + 1, state["history"]
        self.best = state["best"]
        set_rng_state(state["rng"])
        log.info(
            "%s/%s: resuming after epoch %d", self.plan.task, self.plan.name, state["epoch"] + 1
        )

    def _data(self) -> None:
        cfg, ctx, plan = self.cfg, self.ctx, self.plan
        self.dataset = LesionDataset(
            self.train_samples,
            train_transform(
                cfg.input_size,
                cfg.normalization,
                cfg.augment,
                crop_size=cfg.crop_size,
                foreground_fraction=cfg.foreground_fraction,
            ),
            seed=plan.seed,
            length=cfg.samples_per_epoch,
        )
        self.loader, self.sampler = make_loader(self.dataset, cfg, ctx, plan.seed)
        if ctx.is_main:
            atomic_write_text(
                self.folder / MEMBER_CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n"
            )
            log.info(
                "%s/%s: %d training images (%s), %d validation images (%d with the lesion; "
                "views %s), %d epochs on %s%s",
                plan.task,
                plan.name,
                len(self.train_samples),
                "positives only" if cfg.positives_only else "all",
                len(self.val_samples),
                sum(s.positive for s in self.val_samples),
                " + ".join(validation_views(cfg)),
                cfg.epochs,
                ctx.device,
                f", autocast {self.dtype}" if self.dtype is not None else "",
            )

    def epoch(self, epoch: int) -> tuple[dict, bool]:
        """Train and validate one epoch (every process); returns its history row and whether
        its weights replace the kept ones (then :attr:`best` is it): under ``checkpoint = "best"``
        when its validation Dice at threshold 0.5 is the best so far, under ``"last"`` always."""
        cfg, ctx = self.cfg, self.ctx
        t0 = time.perf_counter()
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        last_dice = self.history[-1]["val_dice"] if self.history else float("nan")
        progress = (
            tqdm(
                total=len(self.loader),
                desc=f"{self.plan.task} {self.plan.name} epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                dynamic_ncols=True,
                disable=None,  # no bar in a pipe or a log: the epoch's log line says it all
                postfix={"last val dice": f"{last_dice:.4f}"},
            )
            if ctx.is_main
            else None
        )
        train_loss = train_one_epoch(
            self.model,
            self.loader,
            self.loss_fn,
            self.optimizer,
            self.scaler,
            cfg,
            ctx,
            self.dtype,
            progress,
        )
        if progress is not None:
            progress.close()
        train_loss = float(np.mean(all_gather_objects(ctx, train_loss)))
        self.scheduler.step()
        val_loss, counts = validate(
            network_of(self.model),
            self.val_samples,
            self.loss_fn,
            cfg,
            ctx,
            self.dtype,
            self.thresholds,
        )
        dice = challenge_dice(counts)  # (T thresholds, K component counts); k = 0 keeps all
        val_dice = float(dice[self.half, 0])
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_dice": val_dice,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        self.history.append(row)
        # Every scored epoch replaces the kept one under "last", so the final one is kept.
        improved = not math.isnan(val_dice) and (
            cfg.checkpoint == "last" or val_dice > self.best["dice"]
        )
        if improved:
            threshold, _ = best_threshold(counts[:, :, 0], self.thresholds)
            at = int(np.flatnonzero(self.thresholds == threshold)[0])
            keep, tuned = best_keep(dice[at], keep_grid(cfg))
            self.best = {
                "dice": val_dice,
                "epoch": epoch + 1,
                "threshold": threshold,
                "keep_components": keep,
                "tuned": tuned,
            }
        self.last_epoch = epoch
        return row, improved

    def checkpoint(self, improved: bool) -> None:
        """Write ``best.pt`` (when the epoch improved), ``last.pt`` (resumable), the history
        and the curves (main process)."""
        model = self.model
        if improved:
            save_checkpoint(
                self.folder / BEST_CHECKPOINT,
                {"model": network_of(model).state_dict(), "epoch": self.best["epoch"], **self.best},
            )
        save_checkpoint(
            self.folder / LAST_CHECKPOINT,
            {
                "model": network_of(model).state_dict(),
                "aux_heads": aux_heads_state(model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": self.last_epoch,
                "history": self.history,
                "best": self.best,
                "rng": rng_state(),
                "fingerprint": self.fingerprint,
            },
        )
        write_history_csv(self.folder / METRICS_CSV, self.history)
        title = f"{self.plan.task.upper()} {self.plan.name}"
        label = "kept: best" if self.cfg.checkpoint == "best" else "kept: final epoch"
        plot_curves(self.folder / CURVES_PNG, self.history, title, self.best["epoch"], label)

    def report(self, row: dict, improved: bool) -> None:
        """The epoch's log line (main process)."""
        log.info(
            "%s/%s epoch %d/%d: lr %.2e, train loss %.4f, val loss %.4f, val Dice %.4f%s (%.1f s)",
            self.plan.task,
            self.plan.name,
            row["epoch"],
            self.cfg.epochs,
            row["lr"],
            row["train_loss"],
            row["val_loss"],
            row["val_dice"],
            " (best)" if improved and self.cfg.checkpoint == "best" else "",
            row["seconds"],
        )

    def result(self) -> MemberResult:
        """The member's best epoch, Dice and tuned threshold (every process); the main process
        writes ``member.json``. Refused when no epoch could be scored."""
        plan, best = self.plan, self.best
        if best["epoch"] < 0:
            raise DracInputError(
                f"{plan.task}/{plan.name}: expected validation images with this lesion to select "
                "a checkpoint by, found none; use more data or fewer folds"
            )
        result = MemberResult(
            plan,
            best["epoch"],
            best["dice"],
            best["threshold"],
            best["tuned"],
            best.get("keep_components", 0),  # a run resumed from before the rule keeps all
        )
        if self.ctx.is_main:
            write_member_summary(self.cfg, result)
        return broadcast_object(self.ctx, result)

"""Training one ensemble member: one lesion class, one fold, one seed.

The loop reads top to bottom: build the model and optimiser, restore the last checkpoint when
resuming, then per epoch train (mixed precision and channels-last on CUDA, gradient
accumulation, DistributedDataParallel under ``torchrun``), validate with the challenge's Dice,
keep the best checkpoint, write the history and curves, and save a resumable checkpoint.

Files of a member, in ``RUN_DIR/<task>/<member>/`` (:mod:`drac_algo.training.run_layout`):
``last.pt``
(full resumable state), ``best.pt`` (best weights by validation Dice at threshold 0.5, the
method's selection rule, plus the threshold tuned on that epoch's validation predictions),
``metrics.csv``, ``curves.png``, ``config.json`` and ``member.json`` (the summary that the
bundle export reads; written by :func:`drac_algo.training.members.write_member_summary`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_write_text
from drac_algo.engine.core import predict_probability
from drac_algo.engine.ensemble import Member
from drac_algo.engine.precision import autocast, grad_scaler, precision_name, training_dtype
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
from drac_algo.training.deep_supervision import DeepSupervisionNet, supervised_loss
from drac_algo.training.distributed import (
    DistContext,
    all_gather_objects,
    barrier,
    broadcast_object,
)
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
from drac_algo.training.validation import (
    best_threshold,
    challenge_dice,
    overlap_counts,
    probability_loss,
)

log = logging.getLogger(__name__)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the recipe's ``amp`` on ``device``
    (:func:`drac_algo.engine.precision.training_dtype`: ``"auto"`` is bf16 where native, else fp16
    on
    CUDA and float32 on the CPU; ``true`` forces bf16 on the CPU; ``false`` is float32)."""
    return training_dtype(cfg.amp, device)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _network(model: nn.Module) -> nn.Module:
    """The plain network inside the DDP and deep-supervision wrappers (what bundles hold)."""
    model = _unwrap(model)
    return model.net if isinstance(model, DeepSupervisionNet) else model


def _aux_heads_state(model: nn.Module) -> dict | None:
    model = _unwrap(model)
    return model.heads.state_dict() if isinstance(model, DeepSupervisionNet) else None


def _train_samples(cfg: TrainConfig, samples: Sequence[Sample], ids: set[int]) -> list[Sample]:
    chosen = [s for s in samples if s.case_id in ids and (s.positive or not cfg.positives_only)]
    if not chosen:
        what = "with this lesion " if cfg.positives_only else ""
        raise DracInputError(
            f"{cfg.task}: expected training images {what}in this split, found none among "
            f"{len(samples)} images; use more data or fewer folds"
            + (", or positives_only = false" if cfg.positives_only else "")
        )
    return chosen


def _loader(
    dataset: LesionDataset, cfg: TrainConfig, ctx: DistContext, seed: int
) -> tuple[DataLoader, DistributedSampler]:
    # DistributedSampler in every run (one replica outside torchrun): one shuffling rule,
    # seeded by (seed, epoch), so a resumed run sees the same order.
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=False,
        persistent_workers=False,
    )
    return loader, sampler


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg: TrainConfig,
    ctx: DistContext,
    dtype: torch.dtype | None,
    progress: tqdm | None,
) -> float:
    """One pass over ``loader``; returns the mean training loss over this process's batches."""
    model.train()
    channels_last = cfg.channels_last and ctx.device.type == "cuda"
    total, count = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    for step, (image, mask) in enumerate(loader):
        image = _to_device(image, ctx.device, channels_last)
        mask = _to_device(mask, ctx.device, channels_last)
        boundary = (step + 1) % cfg.grad_accum_steps == 0 or step + 1 == n_batches
        # Under DDP, skip the gradient all-reduce on accumulation steps that do not update.
        sync = (
            contextlib.nullcontext()
            if boundary or not isinstance(model, DistributedDataParallel)
            else model.no_sync()
        )
        with sync:
            with autocast(ctx.device, dtype):
                logits = model(image)
                loss = supervised_loss(loss_fn, logits, getattr(_unwrap(model), "aux", []), mask)
            scaled = loss / cfg.grad_accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if boundary:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach())
        count += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


@torch.inference_mode()
def validate(
    model: nn.Module,
    samples: Sequence[Sample],
    loss_fn: nn.Module,
    cfg: TrainConfig,
    ctx: DistContext,
    dtype: torch.dtype | None,
    thresholds: np.ndarray,
) -> tuple[float, np.ndarray]:
    """Score ``samples`` exactly as inference would (every process takes every
    ``world_size``-th one).

    Each full-resolution image goes through :func:`drac_algo.engine.core.predict_probability`
    (the preprocessing, network call and inverse geometry of ``process.py``, without TTA), and
    each threshold's mask through the bundle's post-processing before it is counted against the
    full-resolution ground truth. Returns (mean validation loss of the full-resolution
    probabilities, overlap counts (N, T, 3) in sample order) on every process.
    """
    model.eval()
    member = Member(
        network=model,
        input_size=cfg.input_size,
        mean=cfg.normalization.mean,
        std=cfg.normalization.std,
        name=f"{cfg.task} validation",
    )
    precision = precision_name(dtype)
    post = cfg.postprocess
    mine = list(range(ctx.rank, len(samples), ctx.world_size))
    local: dict[int, tuple[float, np.ndarray]] = {}
    for i in mine:
        sample = samples[i]
        prob = predict_probability(
            [member], sample.image, tta="none", device=ctx.device, precision=precision
        )
        loss = probability_loss(loss_fn, prob, sample.mask)
        counts = overlap_counts(
            prob, sample.mask, thresholds, post.min_component_px, post.fill_holes
        )
        local[i] = (loss, counts)
    merged: dict[int, tuple[float, np.ndarray]] = {}
    for part in all_gather_objects(ctx, local):
        merged.update(part)
    losses = [merged[i][0] for i in range(len(samples))]
    counts = np.stack([merged[i][1] for i in range(len(samples))])
    return float(np.mean(losses)), counts


def _threshold_grid(cfg: TrainConfig) -> np.ndarray:
    # 0.5 is always on the grid: model selection uses the method's fixed threshold.
    return np.array(sorted(set(cfg.postprocess.threshold_grid) | {0.5}), dtype=np.float64)


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
    folder = plan.folder
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids = set(plan.train_ids), set(plan.val_ids)
    train_samples = _train_samples(cfg, samples, train_ids)
    val_samples = [s for s in samples if s.case_id in val_ids]
    thresholds = _threshold_grid(cfg)
    half = int(np.flatnonzero(np.isclose(thresholds, 0.5))[0])

    seed_everything(plan.seed)
    model = build_model(cfg.model, cfg.encoder_weights)
    if cfg.init_from is not None and not (resume and (folder / LAST_CHECKPOINT).is_file()):
        load_initial_weights(model, cfg.init_from)
        if ctx.is_main:
            log.info("%s/%s: starting from the weights in %s", plan.task, plan.name, cfg.init_from)
    if cfg.deep_supervision:
        model = DeepSupervisionNet(model)
    model = model.to(ctx.device)
    if cfg.channels_last and ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    dtype = amp_dtype(cfg, ctx.device)
    scaler = grad_scaler(dtype)
    loss_fn = build_loss(cfg.loss.name, **cfg.loss.params)

    start_epoch, history, best = 0, [], {"dice": -math.inf, "epoch": -1}
    last_path = folder / LAST_CHECKPOINT
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        _network(model).load_state_dict(state["model"])
        if state.get("aux_heads") is not None:
            _unwrap(model).heads.load_state_dict(state["aux_heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        set_rng_state(state["rng"])
        log.info("%s/%s: resuming after epoch %d", plan.task, plan.name, state["epoch"] + 1)
    if ctx.distributed:
        model = DistributedDataParallel(
            model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
        )

    dataset = LesionDataset(
        train_samples,
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
    loader, sampler = _loader(dataset, cfg, ctx, plan.seed)
    if ctx.is_main:
        atomic_write_text(folder / MEMBER_CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n")
        log.info(
            "%s/%s: %d training images (%s), %d validation images (%d with the lesion), "
            "%d epochs on %s%s",
            plan.task,
            plan.name,
            len(train_samples),
            "positives only" if cfg.positives_only else "all",
            len(val_samples),
            sum(s.positive for s in val_samples),
            cfg.epochs,
            ctx.device,
            f", autocast {dtype}" if dtype is not None else "",
        )

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        last_dice = history[-1]["val_dice"] if history else float("nan")
        progress = (
            tqdm(
                total=len(loader),
                desc=f"{plan.task} {plan.name} epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                dynamic_ncols=True,
                disable=None,  # no bar in a pipe or a log: the epoch's log line says it all
                postfix={"last val dice": f"{last_dice:.4f}"},
            )
            if ctx.is_main
            else None
        )
        train_loss = train_one_epoch(
            model, loader, loss_fn, optimizer, scaler, cfg, ctx, dtype, progress
        )
        if progress is not None:
            progress.close()
        train_loss = float(np.mean(all_gather_objects(ctx, train_loss)))
        scheduler.step()
        val_loss, counts = validate(
            _network(model), val_samples, loss_fn, cfg, ctx, dtype, thresholds
        )
        val_dice = float(challenge_dice(counts)[half])
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_dice": val_dice,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        improved = not math.isnan(val_dice) and val_dice > best["dice"]
        if improved:
            threshold, tuned = best_threshold(counts, thresholds)
            best = {"dice": val_dice, "epoch": epoch + 1, "threshold": threshold, "tuned": tuned}
        if ctx.is_main:
            if improved:
                save_checkpoint(
                    folder / BEST_CHECKPOINT,
                    {"model": _network(model).state_dict(), "epoch": epoch + 1, **best},
                )
            save_checkpoint(
                last_path,
                {
                    "model": _network(model).state_dict(),
                    "aux_heads": _aux_heads_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                    "rng": rng_state(),
                },
            )
            write_history_csv(folder / METRICS_CSV, history)
            plot_curves(folder / CURVES_PNG, history, f"{plan.task.upper()} {plan.name}")
            log.info(
                "%s/%s epoch %d/%d: lr %.2e, train loss %.4f, val loss %.4f, val Dice %.4f%s "
                "(%.1f s)",
                plan.task,
                plan.name,
                epoch + 1,
                cfg.epochs,
                lr,
                train_loss,
                val_loss,
                val_dice,
                " (best)" if improved else "",
                row["seconds"],
            )
        barrier(ctx)
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    if best["epoch"] < 0:
        raise DracInputError(
            f"{plan.task}/{plan.name}: expected validation images with this lesion to select "
            "a checkpoint by, found none; use more data or fewer folds"
        )
    result = MemberResult(plan, best["epoch"], best["dice"], best["threshold"], best["tuned"])
    if ctx.is_main:
        write_member_summary(cfg, result)
    return broadcast_object(ctx, result)

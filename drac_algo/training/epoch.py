"""One epoch of a member's training and its validation, as functions over explicit state.

:func:`train_one_epoch` steps the optimiser over a loader (autocast, channels-last on CUDA,
gradient accumulation, DDP's ``no_sync`` on accumulation steps); :func:`validate` scores images
exactly as inference does; the helpers pick the training samples, build the loader and unwrap the
DDP and deep-supervision wrappers. :class:`drac_algo.training.loop.MemberRun` strings them together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from drac_algo.common.errors import DracInputError
from drac_algo.engine.core import predict_probability
from drac_algo.engine.ensemble import Member
from drac_algo.engine.precision import autocast, precision_name
from drac_algo.engine.tta import TTA_SETS
from drac_algo.training.augment import invariant_views
from drac_algo.training.config import TrainConfig
from drac_algo.training.dataset import LesionDataset, Sample
from drac_algo.training.deep_supervision import DeepSupervisionNet, supervised_loss
from drac_algo.training.distributed import DistContext, all_gather_objects
from drac_algo.training.validation import overlap_counts, probability_loss


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def network_of(model: nn.Module) -> nn.Module:
    """The plain network inside the DDP and deep-supervision wrappers (what bundles hold)."""
    model = unwrap(model)
    return model.net if isinstance(model, DeepSupervisionNet) else model


def aux_heads_state(model: nn.Module) -> dict | None:
    model = unwrap(model)
    return model.heads.state_dict() if isinstance(model, DeepSupervisionNet) else None


def train_samples(cfg: TrainConfig, samples: Sequence[Sample], ids: set[int]) -> list[Sample]:
    chosen = [s for s in samples if s.case_id in ids and (s.positive or not cfg.positives_only)]
    if not chosen:
        what = "with this lesion " if cfg.positives_only else ""
        raise DracInputError(
            f"{cfg.task}: expected training images {what}in this split, found none among "
            f"{len(samples)} images; use more data or fewer folds"
            + (", or positives_only = false" if cfg.positives_only else "")
        )
    return chosen


def make_loader(
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
                loss = supervised_loss(loss_fn, logits, getattr(unwrap(model), "aux", []), mask)
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
    (the preprocessing, network call and inverse geometry of ``process.py``, with the TTA views
    of ``cfg.val.tta`` that the member's augmentation covers; none by default), and
    each threshold's mask through the bundle's post-processing before it is counted against the
    full-resolution ground truth. Returns (mean validation loss of the full-resolution
    probabilities, overlap counts (N, T, K, 3) in sample order: T thresholds, K component
    counts (:func:`keep_grid`)) on every process.
    """
    model.eval()
    member = Member(
        network=model,
        input_size=cfg.input_size,
        mean=cfg.normalization.mean,
        std=cfg.normalization.std,
        name=f"{cfg.task} validation",
    )
    views = validation_views(cfg)
    precision = precision_name(dtype)
    post = cfg.postprocess
    mine = list(range(ctx.rank, len(samples), ctx.world_size))
    local: dict[int, tuple[float, np.ndarray]] = {}
    for i in mine:
        sample = samples[i]
        prob = predict_probability(
            [member], sample.image, tta=views, device=ctx.device, precision=precision
        )
        loss = probability_loss(loss_fn, prob, sample.mask)
        counts = overlap_counts(
            prob, sample.mask, thresholds, post.min_component_px, post.fill_holes, keep_grid(cfg)
        )
        local[i] = (loss, counts)
    merged: dict[int, tuple[float, np.ndarray]] = {}
    for part in all_gather_objects(ctx, local):
        merged.update(part)
    losses = [merged[i][0] for i in range(len(samples))]
    counts = np.stack([merged[i][1] for i in range(len(samples))])
    return float(np.mean(losses)), counts


def validation_views(cfg: TrainConfig) -> tuple[str, ...]:
    """The test-time views validation averages: those of ``cfg.val.tta``'s set that the member's
    augmentation covers (what its bundle manifest lists and ``process.py --tta`` intersects
    with), in the set's order; identity when none is."""
    seen = set(invariant_views(cfg.augment))
    return tuple(name for name in TTA_SETS[cfg.val.tta] if name in seen) or ("identity",)


def keep_grid(cfg: TrainConfig) -> tuple[int, ...]:
    """The component counts validation scores: 0 (keep all, the method's masks) first, then the
    recipe's ``keep_most_confident`` candidates."""
    return (0, *cfg.postprocess.keep_most_confident)


def threshold_grid(cfg: TrainConfig) -> np.ndarray:
    # 0.5 is always on the grid: model selection uses the method's fixed threshold.
    return np.array(sorted(set(cfg.postprocess.threshold_grid) | {0.5}), dtype=np.float64)

"""Images per second of one task's training step (forward, the recipe's loss, backward, the
recipe's optimizer step) in float32 and mixed precision, with and without channels-last, each
variant in a fresh process."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drac_algo.common.classes import lesion_class
from drac_algo.common.errors import DracInputError
from drac_algo.engine.ensemble import ClassEnsemble
from drac_algo.engine.precision import autocast, grad_scaler, precision_name, training_dtype
from drac_algo.tools.bench.config import BenchConfig
from drac_algo.tools.bench.plan import NetworkSource, Plan, describe_spec
from drac_algo.tools.bench.probes import LayoutProbe, MemoryProbe, count_flops, synchronize
from drac_algo.tools.synth import generate_case
from drac_algo.training.config import load_config
from drac_algo.training.losses import build_loss
from drac_algo.training.optim import make_optimizer


@dataclass
class TrainJob:
    """One training variant, for a worker process (picklable)."""

    cfg: BenchConfig
    plan: ClassEnsemble[NetworkSource]  # one class
    amp: bool
    channels_last: bool


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Images per second of ``train_repeats`` training steps (after one untimed step) of the
    task's first network: forward, the recipe's loss, backward, the recipe's optimizer step."""
    cfg, device = job.cfg, torch.device(job.cfg.device)
    member = job.plan.members[0]
    recipe = load_config(job.plan.key)
    model = member.network.build().to(device).train()
    side = cfg.resolved_train_size
    image, masks = generate_case(np.random.default_rng(cfg.seed), side)
    x = (torch.from_numpy(image).float() / 255 - member.mean) / member.std
    y = torch.from_numpy(masks[job.plan.index].astype(np.float32))
    batch = cfg.resolved_train_batch(recipe.batch_size)
    x = x[None, None].repeat(batch, 1, 1, 1).to(device)
    y = y[None, None].repeat(batch, 1, 1, 1).to(device)
    if job.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    dtype = training_dtype(job.amp, device)
    scaler = grad_scaler(dtype)
    loss_fn = build_loss(recipe.loss.name, **recipe.loss.params)
    optimizer = make_optimizer(recipe, model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = loss_fn(model(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    probe = LayoutProbe(model)
    memory = MemoryProbe(device)
    memory.reset()
    step()
    seconds = []
    for _ in range(cfg.train_repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    probe.remove()
    precision = precision_name(dtype)
    return {
        "task": job.plan.key,
        "model": describe_spec(member.network.model),
        "precision": precision,
        "channels_last": job.channels_last,
        "ran_dtype": probe.dtype,
        "ran_layout": probe.layout,
        "batch": batch,
        "size": side,
        "run_seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "images_per_second": batch / statistics.median(seconds),
        "memory": memory.read(),
        "threads": torch.get_num_threads(),
    }


def _train_entry(job: TrainJob, result_path: str) -> None:
    """Subprocess entry: one training variant, its result written as JSON."""
    if job.cfg.threads:
        torch.set_num_threads(job.cfg.threads)
    Path(result_path).write_text(json.dumps(run_train_job(job)), encoding="utf-8")


def run_train_variant(job: TrainJob, isolate: bool, out_dir: Path, name: str) -> dict[str, Any]:
    """One training variant here or in a fresh (spawned) process; a crashed process becomes
    an ``error`` entry (e.g. killed for memory) so the other rows still come out. Variants run
    one after the other: each holds gigabytes of activations and optimizer state at 1024."""
    if not isolate:
        return run_train_job(job)
    result_path = out_dir / f"{name}.result.json"
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_train_entry, args=(job, str(result_path)), name=name)
    process.start()
    process.join()
    if process.exitcode != 0 or not result_path.is_file():
        why = "killed (out of memory?)" if process.exitcode == -9 else "see the traceback above"
        return {"error": f"{name}: worker exited with code {process.exitcode}, {why}"}
    return json.loads(result_path.read_text(encoding="utf-8"))


def run_training(
    cfg: BenchConfig,
    plan: Plan,
    device: torch.device,
    amp_name: str,
    out_dir: Path,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The four training variants of ``cfg.train_task``'s first network (float32 and
    ``amp_name`` mixed precision, each with and without channels-last), one after the other,
    with their FLOPs per step; a variant that failed is an ``error`` row."""
    wanted = lesion_class(cfg.train_task).index
    entry = next((c for c in plan if c.index == wanted), None)
    if entry is None:
        raise DracInputError(
            f"--train-task {cfg.train_task}: not in the benchmarked classes {[c.key for c in plan]}"
        )
    spec = entry.members[0].network.model
    side = cfg.resolved_train_size
    batch = cfg.resolved_train_batch(load_config(entry.key).batch_size)
    flops = count_flops(spec, side, batch, backward=True)
    rows = []
    for amp in (False, True):
        for channels_last in (False, True):
            name = f"train-{amp_name if amp else 'fp32'}{'-cl' if channels_last else ''}"
            progress(f"training step: {name}")
            row = run_train_variant(
                TrainJob(cfg, entry, amp, channels_last), cfg.isolate, out_dir, name
            )
            if "error" not in row:
                row["gflop_per_step"] = flops / 1e9
                row["achieved_gflops"] = flops / row["median_seconds"] / 1e9
            row.setdefault("precision", amp_name if amp else "fp32")
            row.setdefault("channels_last", channels_last)
            rows.append(row)
    return rows

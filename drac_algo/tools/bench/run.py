"""The whole benchmark run: plan, FLOPs and peaks, the methods timed side by side, agreement,
training steps, targets; returns the JSON-ready report."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drac_algo.common.dataclass_io import plain
from drac_algo.engine.devices import resolve_device
from drac_algo.engine.precision import precision_name, training_dtype
from drac_algo.tools.bench.agreement import agreement, read_maps
from drac_algo.tools.bench.config import BenchConfig
from drac_algo.tools.bench.plan import load_images, member_views, plan_ensemble
from drac_algo.tools.bench.probes import (
    count_flops,
    machine_facts,
    measure_peak,
    padded_side,
    torch_threads,
)
from drac_algo.tools.bench.runners import autocast_name, engine_backend
from drac_algo.tools.bench.targets import default_ensemble, derive_method_figures, evaluate_targets
from drac_algo.tools.bench.train_step import run_training
from drac_algo.tools.bench.workers import time_methods
from drac_algo.training.config import load_config

log = logging.getLogger(__name__)


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run every requested method (and the training steps) and return the JSON-ready report
    (:func:`drac_algo.tools.bench.report.format_report` makes the table). ``cfg.threads`` applies
    here and in the workers."""
    with torch_threads(cfg.threads):
        return _run_bench(cfg, progress)


def _run_bench(cfg: BenchConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, device=str(device))
    plan = plan_ensemble(cfg)
    images = load_images(cfg)
    shapes = sorted({im.shape for im in images})
    recipe_models = {entry.key: load_config(entry.key).model for entry in plan}
    members = []
    flops_per_image = 0
    for entry in plan:
        for member in entry.members:
            side = padded_side(max(max(s) for s in shapes), member.input_size)
            views = [t.name for t in member_views(cfg, member)]
            per_view = count_flops(member.network.model, side)
            flops_per_image += per_view * len(views)
            members.append(
                {
                    "class": entry.index,
                    "key": entry.key,
                    "name": member.name,
                    "model": member.network.model.to_dict(),
                    "recipe_model": member.network.model == recipe_models[entry.key],
                    "input_size": member.input_size,
                    "network_side": side,
                    "views": views,
                    "gflop_per_view": per_view / 1e9,
                }
            )
    autocasts = {autocast_name(engine_backend(p, device)[0], device) for p in cfg.engine_precisions}
    side = cfg.matmul_side or (8192 if device.type == "cuda" else 2048)
    progress(f"compute peak (matmul {side} x {side}, 3 x 3 convolution)")
    train_amp = precision_name(training_dtype(True, device))
    wanted = {"fp32"} | autocasts | ({train_amp} if cfg.train else set())
    peaks = {p: measure_peak(device, p, side) for p in sorted(wanted)}
    report: dict[str, Any] = {
        "config": plain(cfg),
        "machine": machine_facts(device),
        "weights": "bundle" if cfg.bundle else "random (recipe architectures)",
        "images": {
            "source": str(cfg.images) if cfg.images else "phantom (drac_algo.tools.synth)",
            "count": len(images),
            "shapes": [list(s) for s in shapes],
        },
        "ensemble": members,
        "gflop_per_image": flops_per_image / 1e9,
        "default_ensemble": default_ensemble(members),
        "peak_gflops": peaks,
        "methods": {},
        "passes": [],
        "agreement": {},
        "training": [],
    }
    with tempfile.TemporaryDirectory(prefix="drac-bench-") as tmp:
        out_dir = Path(tmp)
        report["methods"], report["passes"] = time_methods(cfg, plan, out_dir, progress)
        probabilities = {}
        for name, result in report["methods"].items():
            npz = out_dir / f"{name}.npz"
            if "images_per_second" in result and npz.is_file():
                probabilities[name] = read_maps(npz, len(images))
        derive_method_figures(report, flops_per_image)
        if "naive" in probabilities:
            for method, probs in probabilities.items():
                if method != "naive":
                    report["agreement"][method] = agreement(plan, probabilities["naive"], probs)
        prints = {m: r["fingerprints"] for m, r in report["methods"].items() if "fingerprints" in r}
        if len({json.dumps(p, sort_keys=True) for p in prints.values()}) > 1:
            raise RuntimeError(f"methods ran different weights (a bench bug): {prints}")
        if cfg.train:
            report["training"] = run_training(cfg, plan, device, train_amp, out_dir, progress)
    for row in report["training"]:
        peak = peaks.get(row["precision"], {}).get("peak")
        if "achieved_gflops" in row and peak:
            row["fraction_of_peak"] = row["achieved_gflops"] / peak
    report["targets"] = evaluate_targets(report)
    return report

"""Throughput, memory and agreement of three ways to run the D4 TTA ensemble, side by side.

    python -m drac_algo.bench --json bench.json               # CPU, 1024 x 1024, recipe models
    python -m drac_algo.bench --bundle /opt/ml/model --images "DRAC/.../b. Testing Set"
    python -m drac_algo.bench --device cuda --repeats 5 --json bench.json
    python -m drac_algo.bench --precision bf16,fp32 --methods naive,engine --no-train
    python -m drac_algo.bench --quick --json /tmp/bench.json   # smoke test: seconds

Every method runs the same networks (one per lesion class: a trained bundle, or the recipes'
architectures with seeded random weights), on the same images, with the same views (the D4 group
by default) and the same averaging (the mean of the sigmoid probabilities over views, then over
a class's members), the same pre- and post-processing, on the same machine:

- ``naive``: one view at a time, float32, contiguous tensors, no autocast: the loop a user
  writes by hand (the method's own predict script, plus TTA);
- ``ttach``: ``ttach.SegmentationTTAWrapper`` with its D4 transforms and ``merge_mode="mean"``
  around ``network + sigmoid`` (so it averages probabilities like the others), float32; the row
  is skipped, saying so, when ttach is not installed;
- ``engine``: this project's :class:`drac_algo.inference.Predictor` as it is (views batched
  ``--views-per-batch`` at a time, ``--precision`` autocast, channels-last where the engine
  applies it); ``--precision bf16,fp32`` adds a row ``engine-fp32``; ``--engine-module`` times
  a patched copy of the engine instead.

Reported per row: images per second (images / the median wall time of ``--repeats`` timed
passes over the images, after ``--warmup`` untimed passes); peak memory; achieved GFLOP/s (the
FLOPs of one forward of each network, counted with ``torch.utils.flop_counter.FlopCounterMode``
on the meta device (convolutions and matrix products), times the views, times images per
second) and that as a fraction of the device's peak in the row's precision; the agreement of
its masks with the naive float32 masks over all images (pixels that agree, Dice per class, the
largest and mean probability difference), so that a faster path that changes the answer shows.

Ensembles: ``--members N`` random-weight networks per class (default 1). Members run one after
the other, so speed ratios do not depend on N, but every member stays loaded, so memory does:
``python -m train`` makes 5 per class by default (the recipes' 5 folds x 1 seed), and the memory
target is judged on a run with that many. Each row also gets the time for the 65-image DRAC test
set with that default ensemble, scaled from the row's time by FLOPs.

Peak: the faster of a large ``torch.matmul`` and a channels-last 3 x 3 convolution in that
precision. Both, because on x86 CPUs float32 ``torch.matmul`` runs in MKL, which reaches less
than half of what oneDNN's convolutions reach on AMD CPUs: with the matmul alone, float32
networks would run at "over 100 % of peak".

Timing under load: all rows are built first, then warmed up, then timed pass by pass in turn
(the order rotating each round), so a drift in background load hits every row alike; the
1-minute load average is recorded per pass and the table warns when it exceeded the cores.
A loaded machine still hurts batch-1 rows most (their many small OpenMP regions wait on
descheduled threads): compare rows from a quiet machine only.

Memory. On the GPU: ``torch.cuda.max_memory_allocated`` (and reserved) after
``reset_peak_memory_stats``. On the CPU: the process's resident-set high-water mark
(``VmHWM``), reset through ``/proc/self/clear_refs`` once the networks are built, so it covers
the warm-up and the timed passes; ``peak RSS`` is the whole process (Python, torch libraries,
weights, working memory: what a container's memory limit sees), ``working`` is the peak minus
the resident size at the reset. Each row runs in its own fresh process (``--isolate``, the
default) because a process keeps what its allocator and oneDNN cached for an earlier method:
in one process a second method would be measured on top of the first one's leftovers.
``--quick`` runs in-process (each process pays seconds of imports); its memory figures are then
only indicative.

Training (``--train``): images per second of one task's training step (forward, the recipe's
loss, backward, the recipe's optimizer step) at ``--train-size``, in float32 and with mixed
precision (bf16 autocast on the CPU; bf16, else fp16 with a gradient scaler, on CUDA), each
with and without channels-last; one fresh process per variant, one after the other.

The engine's precision: ``--precision auto`` is the Predictor's own (and ``process.py``'s)
``auto``: bf16 where the device computes it natively (Ampere+ GPUs, CPUs with AVX512-BF16 or
AMX), else fp16 on CUDA and fp32 on the CPU. Its views per batch: the Predictor's default (all
8 on CUDA, 1 on the CPU) unless ``--views-per-batch`` says otherwise. The table states what each
row actually ran: the dtype and memory layout seen by the first convolution with more than one
input channel in the first network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from drac_algo.cli import exits_on_bad_input, setup_logging
from drac_algo.errors import DracInputError
from drac_algo.hardware import CPU_FEATURES, cpu_features, native_bf16
from drac_algo.onnx_backend import BACKENDS

log = logging.getLogger(__name__)

METHODS = ("naive", "ttach", "engine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DRAC_TEST_IMAGES = 65
GIB = 1024**3
# What --quick changes: a tiny run that exercises every code path in seconds.
QUICK = {
    "size": 64,
    "repeats": 1,
    "warmup": 1,
    "train_size": 64,
    "train_batch": 1,
    "train_repeats": 1,
    "encoder": "resnet18",
    "decoder_channels": (32, 32, 16, 16, 16),
    "isolate": False,
    "matmul_side": 512,
}
# Ratios and limits the issue sets for CPU, 1024 x 1024, D4, default ensemble.
TARGETS = {
    "engine_vs_naive": 2.5,
    "engine_vs_ttach": 2.0,
    "agreement_percent": 99.9,
    "cpu_peak_gib": 4.0,
}


# --------------------------------------------------------------------------------------------
# Configuration and the ensemble plan


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. See the module docstring and ``python -m drac_algo.bench --help``.

    ``size``: side of the (square, phantom) test images and, without a bundle, the networks'
    input size. ``arch``/``encoder``/``decoder_channels``: override the recipes' models (random
    weights only). ``precision``: the engine's (naive and ttach are always float32).
    """

    size: int = 1024
    bundle: Path | None = None
    images: Path | None = None
    n_images: int = 1
    members: int = 1
    arch: str | None = None
    encoder: str | None = None
    decoder_channels: tuple[int, ...] | None = None
    tta: str = "d4"
    device: str = "cpu"
    precision: str = "auto"
    views_per_batch: int | None = None  # None: the engine's default for the device
    methods: tuple[str, ...] = METHODS
    repeats: int = 3
    warmup: int = 1
    isolate: bool = True
    threads: int | None = None
    train: bool = True
    train_task: str = "irma"
    train_size: int | None = None
    train_batch: int | None = None
    train_repeats: int = 3
    matmul_side: int | None = None
    engine_module: str = "drac_algo.inference"
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        for name in ("size", "n_images", "members", "views_per_batch", "repeats", "train_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DracInputError(
                    f"--{name.replace('_', '-')} must be >= 1, found {getattr(self, name)}"
                )
        if self.warmup < 0:
            raise DracInputError(f"--warmup must be >= 0, found {self.warmup}")
        bad = [
            p
            for p in self.engine_precisions
            if split_engine_token(p)[0] not in PRECISIONS
            or split_engine_token(p)[1] not in BACKENDS
        ]
        if bad or not self.engine_precisions:
            raise DracInputError(
                f"unknown precision(s) {', '.join(bad) or '(none given)'} in "
                f"{self.precision!r}; valid: {', '.join(PRECISIONS)}, each optionally followed "
                f"by :BACKEND ({', '.join(BACKENDS)})"
            )
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise DracInputError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                f"valid: {', '.join(METHODS)}"
            )
        if self.bundle is not None and (
            self.arch or self.encoder or self.decoder_channels or self.members != 1
        ):
            raise DracInputError(
                "--arch/--encoder/--decoder-channels/--members describe random-weight models; "
                "a --bundle brings its own"
            )

    @property
    def engine_precisions(self) -> tuple[str, ...]:
        """``precision`` may list several (``"bf16,fp32"``): one engine row each. Each may name
        the backend too (``"fp32:torch"``, ``"fp32:onnxruntime"``; default ``auto``, the
        Predictor's rule)."""
        return tuple(dict.fromkeys(p.strip() for p in self.precision.split(",") if p.strip()))

    def rows(self) -> list[tuple[str, str, str | None]]:
        """``(row name, method, engine precision)`` for every row of the table: the first
        engine precision is the row ``engine``, further ones ``engine-<precision>``."""
        out: list[tuple[str, str, str | None]] = []
        for method in self.methods:
            if method != "engine":
                out.append((method, method, None))
                continue
            for i, precision in enumerate(self.engine_precisions):
                out.append(("engine" if i == 0 else f"engine-{precision}", method, precision))
        return out

    @property
    def resolved_train_size(self) -> int:
        return self.train_size or self.size

    def resolved_train_batch(self, recipe_batch: int) -> int:
        """``train_batch``, else the recipe's batch size on CUDA and 1 on the CPU (a float32
        Unet++ step at 1024 x 1024 holds about 7 GiB of activations per image there)."""
        if self.train_batch is not None:
            return self.train_batch
        return recipe_batch if self.device.startswith("cuda") else 1


def split_engine_token(token: str) -> tuple[str, str]:
    """``"fp32:onnxruntime"`` -> ``("fp32", "onnxruntime")``; ``"bf16"`` -> ``("bf16", "auto")``."""
    precision, _, backend = token.partition(":")
    return precision, backend or "auto"


@dataclass(frozen=True)
class MemberPlan:
    """How every method rebuilds one network: from a bundle file or from a seed."""

    spec: Any  # drac_algo.models.ModelSpec (imported lazily: no work at import time)
    input_size: int
    mean: float
    std: float
    tta: tuple[str, ...] | None
    name: str
    bundle: str | None = None
    file: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class ClassPlan:
    index: int
    key: str
    threshold: float
    min_component_px: int
    fill_holes: bool
    members: tuple[MemberPlan, ...]


def plan_ensemble(cfg: BenchConfig) -> tuple[ClassPlan, ...]:
    """The networks to benchmark: every class and member of ``cfg.bundle``, or ``cfg.members``
    networks per lesion class with the architecture of its recipe (``drac_algo/recipes``),
    optionally overridden, with seeded random weights and threshold 0.5."""
    from drac_algo.classes import LESION_CLASSES
    from drac_algo.config import load_config

    if cfg.bundle is not None:
        from drac_algo.bundle import load_bundle

        bundle = load_bundle(cfg.bundle)
        return tuple(
            ClassPlan(
                index=entry.index,
                key=entry.key,
                threshold=entry.threshold,
                min_component_px=entry.min_component_px,
                fill_holes=entry.fill_holes,
                members=tuple(
                    MemberPlan(
                        spec=m.model,
                        input_size=m.input_size,
                        mean=m.normalization.mean,
                        std=m.normalization.std,
                        tta=tuple(m.tta),
                        name=f"{entry.key} {m.file}",
                        bundle=str(cfg.bundle),
                        file=m.file,
                    )
                    for m in entry.members
                ),
            )
            for _, entry in sorted(bundle.classes.items())
        )
    plans = []
    for lesion in LESION_CLASSES:
        recipe = load_config(lesion.key)
        changes: dict[str, Any] = {}
        if cfg.arch is not None:
            changes["arch"] = cfg.arch
            if cfg.arch not in ("unet", "unetplusplus"):
                changes["attention"] = None  # decoder attention needs a Unet-style decoder
        if cfg.encoder is not None:
            changes["encoder"] = cfg.encoder
        if cfg.decoder_channels is not None:
            changes["decoder_channels"] = cfg.decoder_channels
        spec = dataclasses.replace(recipe.model, **changes) if changes else recipe.model
        plans.append(
            ClassPlan(
                index=lesion.index,
                key=lesion.key,
                threshold=0.5,
                min_component_px=recipe.postprocess.min_component_px,
                fill_holes=recipe.postprocess.fill_holes,
                members=tuple(
                    MemberPlan(
                        spec=spec,
                        input_size=cfg.size,
                        mean=recipe.normalization.mean,
                        std=recipe.normalization.std,
                        tta=None,
                        name=f"{lesion.key} random {i}",
                        seed=cfg.seed * 1000 + 100 * i + lesion.index,
                    )
                    for i in range(cfg.members)
                ),
            )
        )
    return tuple(plans)


def describe_spec(spec: Any) -> str:
    attention = f"+{spec.attention}" if spec.attention else ""
    return f"{spec.arch}{attention} {spec.encoder}"


def build_networks(plan: Sequence[ClassPlan], device: torch.device) -> dict[str, nn.Module]:
    """Every member's network in eval mode on ``device``, keyed ``"<class>/<member>"``. Random
    weights come from ``torch.manual_seed(member.seed)``, so every process builds the same."""
    from drac_algo.bundle import MemberSpec, build_member
    from drac_algo.models import build_network

    networks = {}
    for entry in plan:
        for i, member in enumerate(entry.members):
            if member.file is not None:
                spec = MemberSpec(file=member.file, model=member.spec, input_size=member.input_size)
                net = build_member(member.bundle, spec)
            else:
                torch.manual_seed(member.seed)
                net = build_network(member.spec)
            networks[f"{entry.index}/{i}"] = net.to(device).eval()
    return networks


def fingerprint(network: nn.Module) -> float:
    """A number that differs between networks with different weights (a fairness check: every
    method's process must have built the same networks)."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in network.parameters()))


def load_images(cfg: BenchConfig) -> list[np.ndarray]:
    """The benchmark images, (H, W) uint8: the first ``n_images`` of ``cfg.images``, or seeded
    phantom angiograms of ``cfg.size`` (:mod:`drac_algo.synth`)."""
    if cfg.images is not None:
        from drac_algo.data import list_images
        from drac_algo.images import load_image

        paths = list_images(cfg.images)[: cfg.n_images]
        if not paths:
            raise DracInputError(f"--images {cfg.images}: no images found")
        return [load_image(p).pixels for p in paths]
    from drac_algo.synth import generate_case

    return [
        generate_case(np.random.default_rng(cfg.seed + i), cfg.size)[0] for i in range(cfg.n_images)
    ]


# --------------------------------------------------------------------------------------------
# Device facts: precision, FLOPs, matmul peak, memory


def dtype_name(dtype: torch.dtype | None) -> str:
    """``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"``."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast_name(precision: str, device: torch.device) -> str:
    """What the engine's ``precision`` means on ``device``."""
    from drac_algo.inference import resolve_precision

    return dtype_name(resolve_precision(precision, device))


def train_autocast(task: str, amp: bool, device: torch.device) -> torch.dtype | None:
    """What ``python -m train`` autocasts to on ``device`` with ``amp`` forced on or off."""
    from drac_algo.config import load_config
    from drac_algo.training import amp_dtype

    return amp_dtype(dataclasses.replace(load_config(task), amp=amp), device)


def count_flops(spec: Any, side: int, batch: int = 1, backward: bool = False) -> int:
    """FLOPs of one forward (and backward) of ``spec`` on a (batch, 1, side, side) input,
    counted by ``FlopCounterMode`` (convolutions and matrix products; 2 per multiply-add) on
    the meta device, so nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    from drac_algo.models import build_network

    with torch.device("meta"):
        net = build_network(spec)
    net = net.to("meta").train(backward)  # smp leaves a few parameters on the CPU
    x = torch.empty(batch, 1, side, side, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            net(x).float().mean().backward()
        else:
            with torch.no_grad():
                net(x)
    return int(counter.get_total_flops())


def padded_side(size: int, input_size: int) -> int:
    from drac_algo.preprocess import plan_geometry

    return plan_geometry((size, size), input_size).side


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], Any], device: torch.device, runs: int) -> float:
    """The fastest of ``runs`` calls of ``fn`` after two warm-up calls."""
    best = math.inf
    for i in range(runs + 2):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return best


def measure_peak(device: torch.device, precision: str, side: int, runs: int = 8) -> dict:
    """The device's compute peak in ``precision``, GFLOP/s: the fastest of ``runs`` products
    ``torch.matmul`` of two (side x side) matrices, and, because on x86 CPUs float32
    ``torch.matmul`` goes to MKL (which runs far below the hardware peak on AMD CPUs) while
    convolutions go to oneDNN, also a channels-last 3 x 3 convolution of 256 channels on a
    (side / 16)^2 map. ``peak`` is the larger. On CUDA, float32 follows
    ``torch.backends.cudnn.allow_tf32`` (on by default), the setting float32 convolutions run
    with, so the fraction of peak compares like with like."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(device, dtype)
    b = torch.randn(side, side, generator=generator).to(device, dtype)
    hw, channels = max(8, side // 16), 256
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, dtype)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(1, channels, hw, hw, generator=generator).to(device, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    tf32 = (
        contextlib.nullcontext()
        if device.type != "cuda"
        else _tf32_matmul(torch.backends.cudnn.allow_tf32)
    )
    with tf32, torch.inference_mode():
        matmul = 2 * side**3 / _best_seconds(lambda: torch.matmul(a, b), device, runs) / 1e9
        try:
            flops = 2 * channels * channels * 9 * hw * hw
            convolution = flops / _best_seconds(lambda: conv(x), device, runs) / 1e9
        except RuntimeError:  # e.g. no fp16 convolution kernel on this CPU
            convolution = None
    return {"matmul": matmul, "conv3x3": convolution, "peak": max(matmul, convolution or 0.0)}


@contextlib.contextmanager
def _tf32_matmul(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryProbe:
    """Peak memory of this process from :meth:`reset` on (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_kib: int | None = None
        self.resettable = False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
            self.resettable = True
        except OSError:
            self.resettable = False
        self.baseline_kib = _status_kib("VmRSS")

    def read(self) -> dict[str, Any]:
        peak_kib = _status_kib("VmHWM") if self.resettable else None
        if peak_kib is None:
            # ru_maxrss: kilobytes on Linux, bytes on macOS; never reset, so it covers start-up.
            raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak_kib = raw // 1024 if sys.platform == "darwin" else raw
        out: dict[str, Any] = {
            "rss_peak_bytes": peak_kib * 1024,
            "rss_baseline_bytes": None if self.baseline_kib is None else self.baseline_kib * 1024,
            "rss_working_bytes": (
                None
                if self.baseline_kib is None or not self.resettable
                else (peak_kib - self.baseline_kib) * 1024
            ),
            "rss_source": "VmHWM since reset" if self.resettable else "ru_maxrss (whole run)",
        }
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            out["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved(self.device))
        return out


class LayoutProbe:
    """Records the dtype and memory layout of the input of the first convolution with more than
    one input channel (a one-channel tensor is both layouts at once) in a network: what the
    convolutions really ran with."""

    def __init__(self, network: nn.Module) -> None:
        self.dtype: str | None = None
        self.layout: str | None = None
        self._handle = None
        for module in network.modules():
            if isinstance(module, nn.Conv2d) and module.in_channels > 1:
                self._handle = module.register_forward_pre_hook(self._hook)
                break

    def _hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self.dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            x.dtype, str(x.dtype)
        )
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        self.layout = "NHWC" if channels_last and not x.is_contiguous() else "NCHW"
        self.remove()

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


# --------------------------------------------------------------------------------------------
# The three methods. Each maps an (H, W) uint8 image to ({class: (H, W) float32 probability},
# {class: (H, W) uint8 mask}) with the class thresholds and clean-up.

Runner = Callable[[np.ndarray], tuple[dict[int, np.ndarray], dict[int, np.ndarray]]]


def _masks(
    plan: Sequence[ClassPlan], probabilities: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    from drac_algo.postprocess import postprocess_mask, threshold_probability

    return {
        c.index: postprocess_mask(
            threshold_probability(probabilities[c.index], c.threshold),
            c.min_component_px,
            c.fill_holes,
        )
        for c in plan
    }


def _member_views(cfg: BenchConfig, member: MemberPlan) -> tuple:
    from drac_algo.tta import select_transforms

    return select_transforms(cfg.tta, member.tta, where=member.name)


def _per_view_runner(
    cfg: BenchConfig,
    plan: Sequence[ClassPlan],
    networks: dict[str, nn.Module],
    device: torch.device,
    member_map: Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor],
) -> Runner:
    """Shared by naive and ttach: the engine's own pre- and post-processing (resize, normalise,
    reflect-pad; crop, resize back) around ``member_map(network, views, x)``, which maps the
    (1, 1, S, S) input to the (S, S) mean probability over the views."""
    from drac_algo.preprocess import from_network_output, to_network_input

    views = {f"{c.index}/{i}": _member_views(cfg, m) for c in plan for i, m in enumerate(c.members)}

    def run(image: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        probabilities = {}
        for entry in plan:
            total = np.zeros(image.shape, dtype=np.float32)
            for i, member in enumerate(entry.members):
                key = f"{entry.index}/{i}"
                padded, geometry = to_network_input(
                    image, member.input_size, member.mean, member.std
                )
                x = torch.from_numpy(padded)[None, None].to(device)
                with torch.inference_mode():
                    mean = member_map(networks[key], views[key], x)
                total += from_network_output(mean.float().cpu().numpy(), geometry)
            probabilities[entry.index] = total / np.float32(len(entry.members))
        return probabilities, _masks(plan, probabilities)

    return run


def naive_runner(
    cfg: BenchConfig,
    plan: Sequence[ClassPlan],
    networks: dict[str, nn.Module],
    device: torch.device,
    precision: str | None = None,
) -> Runner:
    """One view per forward, float32, contiguous input, probabilities averaged over views."""

    def member_map(network: nn.Module, views: tuple, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x[0, 0])
        for view in views:
            logits = network(view.forward(x).contiguous())
            total += torch.sigmoid(view.inverse(logits))[0, 0]
        return total / len(views)

    return _per_view_runner(cfg, plan, networks, device, member_map)


def ttach_transforms(names: Sequence[str]) -> Any:
    """The ``ttach.Compose`` giving exactly the views ``names`` (any order), or ``None`` when
    ttach cannot express that set (ttach builds views as products of flips and rotations)."""
    import ttach

    wanted = set(names)
    if wanted == {"identity"}:
        return ttach.Compose([])
    if wanted == {"identity", "hflip", "vflip", "rot180"}:
        return ttach.aliases.flip_transform()
    if len(wanted) == 8:
        return ttach.aliases.d4_transform()
    return None


def ttach_runner(
    cfg: BenchConfig,
    plan: Sequence[ClassPlan],
    networks: dict[str, nn.Module],
    device: torch.device,
    precision: str | None = None,
) -> Runner:
    """``ttach.SegmentationTTAWrapper(network + sigmoid, D4, merge_mode="mean")``: ttach runs
    one view per forward and averages what the model returns, here probabilities."""
    import ttach

    wrapped = {}
    for entry in plan:
        for i, member in enumerate(entry.members):
            key = f"{entry.index}/{i}"
            names = [t.name for t in _member_views(cfg, member)]
            transforms = ttach_transforms(names)
            if transforms is None:
                raise DracInputError(
                    f"{member.name}: ttach cannot build the views {names} (it composes flips and "
                    "rotations); run the bench with --tta d4, flips or none"
                )
            wrapped[key] = ttach.SegmentationTTAWrapper(
                nn.Sequential(networks[key], nn.Sigmoid()), transforms, merge_mode="mean"
            )

    def member_map(network: nn.Module, views: tuple, x: torch.Tensor) -> torch.Tensor:
        return network(x)[0, 0]

    return _per_view_runner(cfg, plan, wrapped, device, member_map)


def load_engine(module: str) -> ModuleType:
    """The inference module to benchmark: a dotted name or a ``.py`` file (a patched copy of
    :mod:`drac_algo.inference` to A/B against the original)."""
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise DracInputError(f"--engine-module {module}: no such file")
        spec = importlib.util.spec_from_file_location("drac_bench_engine", path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DracInputError(f"--engine-module {module}: {exc}") from exc


def engine_runner(
    cfg: BenchConfig,
    plan: Sequence[ClassPlan],
    networks: dict[str, nn.Module],
    device: torch.device,
    precision: str | None = None,
) -> Runner:
    """:class:`drac_algo.inference.Predictor` over the same networks and class settings, run by
    the backend that ``precision`` (``PRECISION[:BACKEND]``) resolves to: ONNX Runtime runs
    each network's ONNX export, made here (not timed)."""
    engine = load_engine(cfg.engine_module)
    precision, choice = engine_backend(precision or "auto", device)
    if choice.name == "onnxruntime":
        networks = onnx_networks(plan, networks)
    classes = [
        engine.ClassEnsemble(
            index=entry.index,
            key=entry.key,
            threshold=entry.threshold,
            min_component_px=entry.min_component_px,
            fill_holes=entry.fill_holes,
            members=tuple(
                engine.Member(
                    network=networks[f"{entry.index}/{i}"],
                    input_size=m.input_size,
                    mean=m.mean,
                    std=m.std,
                    tta=m.tta,
                    name=m.name,
                )
                for i, m in enumerate(entry.members)
            ),
        )
        for entry in plan
    ]
    predictor = engine.Predictor(
        classes,
        device=device,
        precision=precision,
        tta=cfg.tta,
        max_views_per_batch=cfg.views_per_batch,
        backend=choice,
    )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # the Predictor sets the machine's; --threads wins

    def run(image: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        prediction = predictor.predict(image)
        return prediction.probabilities, prediction.masks

    return run


def engine_backend(token: str, device: torch.device) -> tuple[str, Any]:
    """The engine's precision and :class:`drac_algo.onnx_backend.BackendChoice` for a row's
    ``PRECISION[:BACKEND]`` token, as :meth:`drac_algo.inference.Predictor.from_bundle` decides
    (the bench exports every network, so none lacks an ONNX file)."""
    from drac_algo.inference import resolve_precision
    from drac_algo.onnx_backend import backend_precision, choose_backend

    precision, backend = split_engine_token(token)
    precision = backend_precision(backend, precision)
    return precision, choose_backend(backend, device, resolve_precision(precision, device))


def onnx_networks(plan: Sequence[ClassPlan], networks: dict[str, nn.Module]) -> dict[str, Any]:
    """Each network exported to ONNX (traced at its member's input size) and loaded into an
    ONNX Runtime session with torch's thread count; the files are gone once loaded."""
    from drac_algo.onnx_backend import OnnxNetwork
    from drac_algo.onnx_export import export_network

    sides = {f"{e.index}/{i}": m.input_size for e in plan for i, m in enumerate(e.members)}
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="drac-bench-onnx-") as tmp:
        for key, network in networks.items():
            path = Path(tmp) / f"{key.replace('/', '-')}.onnx"
            export_network(network.float().eval(), path, sides[key])
            loaded[key] = OnnxNetwork(path, threads=torch.get_num_threads())
    return loaded


RUNNERS: dict[str, Callable[..., Runner]] = {
    "naive": naive_runner,
    "ttach": ttach_runner,
    "engine": engine_runner,
}


def method_settings(
    cfg: BenchConfig, method: str, precision: str | None, device: torch.device
) -> dict[str, Any]:
    """What a method is configured to run with (the table's ran-with columns come from the
    :class:`LayoutProbe`)."""
    from drac_algo.inference import resolve_views_per_batch

    if method == "engine":
        precision, choice = engine_backend(precision or "auto", device)
        return {
            "precision": precision,
            "autocast": autocast_name(precision, device),
            "backend": choice.name,
            "views_per_batch": resolve_views_per_batch(cfg.views_per_batch, device),
        }
    return {"precision": "fp32", "autocast": "fp32", "backend": "torch", "views_per_batch": 1}


# --------------------------------------------------------------------------------------------
# One method, one process


@dataclass
class Job:
    """What a worker process needs (picklable)."""

    cfg: BenchConfig
    plan: tuple[ClassPlan, ...]
    name: str  # the table row
    method: str  # a key of RUNNERS
    precision: str | None
    out_dir: str


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


_TTACH_MISSING = "ttach is not installed (pip install ttach==0.0.3); row skipped"


class MethodSession:
    """One method, ready to time: networks built, runner made, memory high-water mark reset.

    Driven by :meth:`handle` with ``"warmup"`` (``warmup`` untimed passes), ``"pass"`` (one
    timed pass over the images; returns its seconds) and ``"finish"`` (the result; saves the
    probabilities of the last pass to ``<out_dir>/<row name>.npz``). The parent interleaves the
    methods' passes, so a change in background load spreads over all of them.
    """

    def __init__(self, job: Job) -> None:
        cfg = job.cfg
        self.job, self.device = job, torch.device(cfg.device)
        self.images = load_images(cfg)
        networks = build_networks(job.plan, self.device)
        self.fingerprints = {key: fingerprint(net) for key, net in networks.items()}
        self.runner = RUNNERS[job.method](cfg, job.plan, networks, self.device, job.precision)
        self.layout = LayoutProbe(next(iter(networks.values())))
        self.seconds: list[float] = []
        self.latest: list[dict[int, np.ndarray]] = []
        self.memory = MemoryProbe(self.device)
        self.memory.reset()

    def handle(self, command: str) -> Any:
        if command == "warmup":
            for _ in range(self.job.cfg.warmup):
                for image in self.images:
                    self.runner(image)
            return None
        if command == "pass":
            _synchronize(self.device)
            start = time.perf_counter()
            latest = [self.runner(image)[0] for image in self.images]
            _synchronize(self.device)
            self.latest = latest
            self.seconds.append(time.perf_counter() - start)
            return self.seconds[-1]
        if command == "finish":
            return self.finish()
        raise ValueError(f"unknown worker command {command!r}")

    def finish(self) -> dict[str, Any]:
        job, seconds = self.job, self.seconds
        self.layout.remove()
        np.savez(
            Path(job.out_dir) / f"{job.name}.npz",
            **{f"{i}/{c}": p for i, maps in enumerate(self.latest) for c, p in maps.items()},
        )
        median = statistics.median(seconds)
        settings = method_settings(job.cfg, job.method, job.precision, self.device)
        onnx = settings["backend"] == "onnxruntime"  # no torch convolution ran to probe
        return {
            "method": job.method,
            **settings,
            "ran_dtype": "fp32" if onnx else self.layout.dtype,
            "ran_layout": "ORT" if onnx else self.layout.layout,
            "images": len(self.images),
            "warmup": job.cfg.warmup,
            "repeats": len(seconds),
            "run_seconds": seconds,
            "median_seconds": median,
            "images_per_second": len(self.images) / median,
            "memory": self.memory.read(),
            "threads": torch.get_num_threads(),
            "fingerprints": self.fingerprints,
        }


class WorkerError(RuntimeError):
    """A method's worker failed; the message says how (traceback or exit code)."""


def _serve(job: Job, conn: Any) -> None:
    """Worker process: build a :class:`MethodSession`, then answer commands until finish."""
    import traceback

    if job.cfg.threads:
        torch.set_num_threads(job.cfg.threads)
    try:
        session = MethodSession(job)
        conn.send(("ok", None))
        while True:
            command = conn.recv()
            conn.send(("ok", session.handle(command)))
            if command == "finish":
                return
    except Exception:
        conn.send(("error", traceback.format_exc()))


class _LocalWorker:
    """A method session in this process (``--no-isolate``)."""

    def __init__(self, job: Job) -> None:
        self.session = MethodSession(job)

    def call(self, command: str) -> Any:
        return self.session.handle(command)

    def close(self) -> None:
        self.session = None


class _ProcessWorker:
    """A method session in a fresh spawned process, driven over a pipe."""

    def __init__(self, job: Job) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(job, child), name=job.name)
        self.process.start()
        child.close()
        self._receive()

    def _receive(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join()
            code = self.process.exitcode
            why = " (killed: out of memory?)" if code == -9 else ""
            raise WorkerError(f"{self.process.name}: worker exited with code {code}{why}") from None
        if status == "error":
            raise WorkerError(f"{self.process.name}: {value.strip().splitlines()[-1]}\n{value}")
        return value

    def call(self, command: str) -> Any:
        self.conn.send(command)
        return self._receive()

    def close(self) -> None:
        self.conn.close()
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def time_methods(
    cfg: BenchConfig,
    plan: tuple[ClassPlan, ...],
    out_dir: Path,
    progress: Callable[[str], None],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Every method's result, and the timed passes in the order they ran.

    All methods are built first (each in its own process with ``cfg.isolate``), warmed up one
    after the other, then timed pass by pass in turn (the order rotating each round), so that
    slow drifts in the machine's load affect every method alike. A method that fails becomes
    an ``error`` entry and the others go on.
    """
    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, Any] = {}
    passes: list[dict[str, Any]] = []
    rows = cfg.rows()
    for name, method, precision in rows:
        if method == "ttach" and importlib.util.find_spec("ttach") is None:
            results[name] = {"method": method, "skipped": _TTACH_MISSING}
            progress(_TTACH_MISSING)
            continue
        progress(f"{name}: building the networks")
        job = Job(cfg, plan, name, method, precision, str(out_dir))
        try:
            workers[name] = (_ProcessWorker if cfg.isolate else _LocalWorker)(job)
        except WorkerError as exc:
            results[name] = {"method": method, "error": str(exc)}

    def call(method: str, command: str) -> Any:
        try:
            return workers[method].call(command)
        except WorkerError as exc:
            results[method] = {"method": method, "error": str(exc)}
            workers.pop(method).close()
            return None

    try:
        for method in list(workers):
            progress(f"{method}: {cfg.warmup} warm-up pass(es)")
            call(method, "warmup")
        for round_ in range(cfg.repeats):
            order = list(workers)
            order = order[round_ % len(order) :] + order[: round_ % len(order)] if order else []
            for method in order:
                if method not in workers:
                    continue
                load = _load_average()
                seconds = call(method, "pass")
                if seconds is not None:
                    progress(f"{method}: pass {round_ + 1}/{cfg.repeats}: {seconds:.2f} s")
                    passes.append(
                        {"method": method, "round": round_, "seconds": seconds, "load": load}
                    )
        for method in list(workers):
            result = call(method, "finish")
            if result is not None:
                results[method] = result
    finally:
        for worker in workers.values():
            worker.close()
    for method, result in results.items():
        loads = [p["load"] for p in passes if p["method"] == method and p["load"] is not None]
        result["load_average"] = loads
    return {name: results[name] for name, _, _ in rows if name in results}, passes


@dataclass
class TrainJob:
    cfg: BenchConfig
    plan: ClassPlan
    amp: bool
    channels_last: bool


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Images per second of ``train_repeats`` training steps (after one untimed step) of the
    task's first network: forward, the recipe's loss, backward, the recipe's optimizer step."""
    from drac_algo.config import load_config
    from drac_algo.losses import build_loss
    from drac_algo.models import build_network
    from drac_algo.synth import generate_case
    from drac_algo.training import make_optimizer

    cfg, device = job.cfg, torch.device(job.cfg.device)
    member = job.plan.members[0]
    recipe = load_config(job.plan.key)
    torch.manual_seed(member.seed)
    model = build_network(member.spec).to(device).train()
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
    dtype = train_autocast(job.plan.key, job.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    loss_fn = build_loss(recipe.loss.name, **recipe.loss.params)
    optimizer = make_optimizer(recipe, model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
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
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    probe.remove()
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return {
        "task": job.plan.key,
        "model": describe_spec(member.spec),
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


# --------------------------------------------------------------------------------------------
# Agreement


def agreement(
    plan: Sequence[ClassPlan],
    reference: Sequence[dict[int, np.ndarray]],
    other: Sequence[dict[int, np.ndarray]],
) -> dict[str, Any]:
    """Masks (class thresholds and clean-up) and probabilities of ``other`` against
    ``reference``, pooled over the images: pixel agreement in percent, Dice per class, the
    largest and the mean absolute probability difference."""
    equal = pixels = 0
    overlap = {c.index: 0 for c in plan}
    sizes = {c.index: 0 for c in plan}
    foreground = {c.index: 0 for c in plan}
    max_diff, diff_sum = 0.0, 0.0
    for ref, oth in zip(reference, other, strict=True):
        ref_masks, oth_masks = _masks(plan, ref), _masks(plan, oth)
        for c in ref_masks:
            a, b = ref_masks[c].astype(bool), oth_masks[c].astype(bool)
            equal += int((a == b).sum())
            pixels += a.size
            overlap[c] += int((a & b).sum())
            sizes[c] += int(a.sum()) + int(b.sum())
            foreground[c] += int(a.sum())
            diff = np.abs(ref[c] - oth[c])
            max_diff = max(max_diff, float(diff.max()))
            diff_sum += float(diff.sum(dtype=np.float64))
    per_class = pixels // max(len(plan), 1)
    return {
        "images": len(reference),
        "pixel_agreement_percent": 100.0 * equal / pixels,
        # Dice over the pooled pixels; 1.0 when both are empty everywhere (they agree).
        "dice": {str(c): 1.0 if sizes[c] == 0 else 2.0 * overlap[c] / sizes[c] for c in sizes},
        "foreground_percent": {str(c): 100.0 * foreground[c] / per_class for c in foreground},
        "max_abs_probability_difference": max_diff,
        "mean_abs_probability_difference": diff_sum / pixels,
    }


# --------------------------------------------------------------------------------------------
# The whole run


def machine_facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "native_bf16": native_bf16(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_features": cpu_features(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return facts


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """``torch.set_num_threads(threads)`` for the duration (``None``: unchanged)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run every requested method (and the training steps) and return the JSON-ready report
    (see :func:`format_report` for the table). ``cfg.threads`` applies here and in the
    workers."""
    with _torch_threads(cfg.threads):
        return _run_bench(cfg, progress)


def _run_bench(cfg: BenchConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    from drac_algo.inference import resolve_device

    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, device=str(device))
    plan = plan_ensemble(cfg)
    images = load_images(cfg)
    shapes = sorted({im.shape for im in images})
    from drac_algo.config import load_config

    recipe_models = {entry.key: load_config(entry.key).model for entry in plan}
    members = []
    flops_per_image = 0
    for entry in plan:
        for member in entry.members:
            side = padded_side(max(max(s) for s in shapes), member.input_size)
            views = [t.name for t in _member_views(cfg, member)]
            per_view = count_flops(member.spec, side)
            flops_per_image += per_view * len(views)
            members.append(
                {
                    "class": entry.index,
                    "key": entry.key,
                    "name": member.name,
                    "model": member.spec.to_dict(),
                    "recipe_model": member.spec == recipe_models[entry.key],
                    "input_size": member.input_size,
                    "network_side": side,
                    "views": views,
                    "gflop_per_view": per_view / 1e9,
                }
            )
    autocasts = {autocast_name(engine_backend(p, device)[0], device) for p in cfg.engine_precisions}
    side = cfg.matmul_side or (8192 if device.type == "cuda" else 2048)
    progress(f"compute peak (matmul {side} x {side}, 3 x 3 convolution)")
    train_amp = dtype_name(train_autocast(cfg.train_task, True, device))
    wanted = {"fp32"} | autocasts | ({train_amp} if cfg.train else set())
    peaks = {p: measure_peak(device, p, side) for p in sorted(wanted)}
    report: dict[str, Any] = {
        "config": _plain(cfg),
        "machine": machine_facts(device),
        "weights": "bundle" if cfg.bundle else "random (recipe architectures)",
        "images": {
            "source": str(cfg.images) if cfg.images else "phantom (drac_algo.synth)",
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
                probabilities[name] = _read_maps(npz, len(images))
        _derive_method_figures(report, flops_per_image)
        if "naive" in probabilities:
            for method, probs in probabilities.items():
                if method != "naive":
                    report["agreement"][method] = agreement(plan, probabilities["naive"], probs)
        prints = {m: r["fingerprints"] for m, r in report["methods"].items() if "fingerprints" in r}
        if len({json.dumps(p, sort_keys=True) for p in prints.values()}) > 1:
            raise RuntimeError(f"methods ran different weights (a bench bug): {prints}")
        if cfg.train:
            report["training"] = _run_training(cfg, plan, device, train_amp, out_dir, progress)
    for row in report["training"]:
        peak = peaks.get(row["precision"], {}).get("peak")
        if "achieved_gflops" in row and peak:
            row["fraction_of_peak"] = row["achieved_gflops"] / peak
    report["targets"] = evaluate_targets(report)
    return report


def _read_maps(npz: Path, n_images: int) -> list[dict[int, np.ndarray]]:
    """The ``"<image>/<class>"`` arrays of a worker's ``.npz`` as one dict per image."""
    maps: list[dict[int, np.ndarray]] = [{} for _ in range(n_images)]
    with np.load(npz) as data:
        for key in data.files:
            image, cls = key.split("/")
            maps[int(image)][int(cls)] = data[key]
    return maps


def _run_training(
    cfg: BenchConfig,
    plan: Sequence[ClassPlan],
    device: torch.device,
    amp_name: str,
    out_dir: Path,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    from drac_algo.classes import lesion_class

    wanted = lesion_class(cfg.train_task).index
    entry = next((c for c in plan if c.index == wanted), None)
    if entry is None:
        raise DracInputError(
            f"--train-task {cfg.train_task}: not in the benchmarked classes {[c.key for c in plan]}"
        )
    spec = entry.members[0].spec
    side = cfg.resolved_train_size
    from drac_algo.config import load_config

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


def default_ensemble(ensemble: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ensemble ``python -m train`` makes by default (per class: the recipe's folds x seeds
    members of the recipe's architecture), at the benchmarked network sides and views: its
    members per class and FLOPs per image, to scale this run's times to it (members run one
    after the other, so time grows with FLOPs)."""
    from drac_algo.config import load_config

    members: dict[str, int] = {}
    flops = 0
    for key in dict.fromkeys(m["key"] for m in ensemble):
        first = next(m for m in ensemble if m["key"] == key)
        recipe = load_config(key)
        members[key] = recipe.n_members
        per_view = count_flops(recipe.model, first["network_side"])
        flops += recipe.n_members * per_view * len(first["views"])
    return {"members": members, "gflop_per_image": flops / 1e9}


def _derive_method_figures(report: dict[str, Any], flops_per_image: int) -> None:
    naive = report["methods"].get("naive", {})
    scale = report["default_ensemble"]["gflop_per_image"] / report["gflop_per_image"]
    for result in report["methods"].values():
        if "images_per_second" not in result:
            continue
        ips = result["images_per_second"]
        result["achieved_gflops"] = flops_per_image * ips / 1e9
        peak = report["peak_gflops"].get(result["autocast"], {}).get("peak")
        result["fraction_of_peak"] = result["achieved_gflops"] / peak if peak else None
        if "images_per_second" in naive:
            result["speedup_vs_naive"] = ips / naive["images_per_second"]
        result["drac_test_set_seconds"] = DRAC_TEST_IMAGES / ips
        result["drac_test_set_default_ensemble_seconds"] = DRAC_TEST_IMAGES / ips * scale


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on this run, and whether this run is the setting they are
    stated for (CPU, 1024 x 1024 images, D4, the default ensemble; agreement on a trained
    bundle)."""
    cfg = report["config"]
    methods = report["methods"]
    ensemble = report["ensemble"]
    applicable = (
        report["machine"]["device"] == "cpu"
        and cfg["tta"] == "d4"
        and {m["key"] for m in ensemble} == {"irma", "na", "nv"}
        and all(m["recipe_model"] and m["network_side"] == 1024 for m in ensemble)
    )
    engine = methods.get("engine", {})
    out: dict[str, Any] = {"applicable": applicable}

    def ratio(a: str, b: str) -> float | None:
        ra, rb = methods.get(a, {}), methods.get(b, {})
        if "images_per_second" in ra and "images_per_second" in rb:
            return ra["images_per_second"] / rb["images_per_second"]
        return None

    for name, other in (("engine_vs_naive", "naive"), ("engine_vs_ttach", "ttach")):
        value = ratio("engine", other)
        out[name] = {
            "value": value,
            "target": TARGETS[name],
            "met": None if value is None else value >= TARGETS[name],
        }
    agree = report["agreement"].get("engine", {}).get("pixel_agreement_percent")
    out["agreement_percent"] = {
        "value": agree,
        "target": TARGETS["agreement_percent"],
        "met": None if agree is None else agree >= TARGETS["agreement_percent"],
        "conclusive": cfg["bundle"] is not None,
    }
    peak = engine.get("memory", {}).get("rss_peak_bytes")
    counts = {key: sum(m["key"] == key for m in ensemble) for key in {m["key"] for m in ensemble}}
    out["cpu_peak_gib"] = {
        "value": None if peak is None else peak / GIB,
        "target": TARGETS["cpu_peak_gib"],
        "met": None if peak is None else peak / GIB < TARGETS["cpu_peak_gib"],
        # Every member's weights stay loaded: memory depends on the ensemble's size.
        "default_ensemble": counts == report["default_ensemble"]["members"],
    }
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------
# The table


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def _memory_columns(memory: dict[str, Any]) -> tuple[int | None, int | None]:
    """(peak, working) bytes for the table: the GPU's max allocated and reserved on CUDA, the
    process RSS high-water mark and its rise over the baseline on the CPU."""
    if "cuda_max_allocated_bytes" in memory:
        return memory["cuda_max_reserved_bytes"], memory["cuda_max_allocated_bytes"]
    return memory["rss_peak_bytes"], memory["rss_working_bytes"]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in rows:
        out.append(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    cfg, machine = report["config"], report["machine"]
    lines = []
    where = machine.get("gpu") or machine["cpu"]
    n_views = {len(m["views"]) for m in report["ensemble"]}
    groups: dict[str, int] = {}
    for m in report["ensemble"]:
        label = (
            f"{m['key']} {describe_spec(_Spec(m['model']))} ({m['gflop_per_view']:.3g} GFLOP/view)"
        )
        groups[label] = groups.get(label, 0) + 1
    models = ", ".join(f"{n} x {label}" if n > 1 else label for label, n in groups.items())
    image_shapes = ", ".join(f"{h} x {w}" for h, w in report["images"]["shapes"])
    features = ", ".join(machine.get("cpu_features") or ["none of " + "/".join(CPU_FEATURES)])
    lines.append(
        f"device {machine['device']} ({where}, {machine['torch_threads']} threads), "
        f"torch {machine['torch']}; CPU instruction sets: {features}"
    )
    lines.append(
        f"weights: {report['weights']}"
        + (f" {cfg['bundle']}" if cfg["bundle"] else "")
        + f"; images: {report['images']['count']} x {image_shapes} "
        f"({report['images']['source']}); tta {cfg['tta']} "
        f"({'/'.join(str(n) for n in sorted(n_views))} views)"
    )
    lines.append(f"networks: {models}")
    peaks = "; ".join(
        f"{k} {v['peak']:.0f} (matmul {v['matmul']:.0f}, conv "
        + ("-" if v["conv3x3"] is None else f"{v['conv3x3']:.0f}")
        + ")"
        for k, v in report["peak_gflops"].items()
    )
    lines.append(
        f"FLOPs per image (convolutions + matmuls, all views): "
        f"{report['gflop_per_image'] / 1e3:.2f} TFLOP; peak GFLOP/s: {peaks}"
    )
    lines.append(
        f"timing: median of {cfg['repeats']} pass(es) after {cfg['warmup']} warm-up pass(es); "
        + (
            "memory: each method in a fresh process"
            if cfg["isolate"]
            else "memory: in-process (indicative)"
        )
    )
    lines.append("")
    rows = []
    busy = []
    not_timed = []
    for name, r in report["methods"].items():
        if "images_per_second" not in r:
            # Below the table, first line only: a worker's error carries its traceback (the
            # JSON keeps it whole).
            why = (r.get("skipped") or r.get("error") or "?").splitlines()[0]
            not_timed.append(f"{name}: not timed: {why}")
            continue
        peak_bytes, working = _memory_columns(r["memory"])
        frac = r.get("fraction_of_peak")
        rows.append(
            [
                name,
                f"{r['ran_dtype']}",
                f"{r['ran_layout']}",
                str(r["views_per_batch"]),
                f"{r['images_per_second']:.4g}",
                f"{1 / r['images_per_second']:.2f}",
                f"{r['speedup_vs_naive']:.2f}x" if "speedup_vs_naive" in r else "-",
                _gib(peak_bytes),
                _gib(working),
                f"{r['achieved_gflops']:.0f}",
                "-" if frac is None else f"{100 * frac:.0f} %",
                _duration(r["drac_test_set_seconds"]),
            ]
        )
        load = max((x for x in r.get("load_average", []) if x is not None), default=None)
        if load is not None and load > (machine["cpu_count"] or 1) + 0.5:
            busy.append(f"{name} (load {load:.1f})")
    on_gpu = machine["device"].startswith("cuda")
    peak_label, work_label = ("GPU reserved", "allocated") if on_gpu else ("peak RSS", "working")
    lines.extend(
        _rows(
            [
                "method",
                "dtype",
                "layout",
                "views/batch",
                "img/s",
                "s/img",
                "vs naive",
                peak_label,
                work_label,
                "GFLOP/s",
                "of peak",
                f"{DRAC_TEST_IMAGES} images",
            ],
            rows,
        )
    )
    lines.extend(not_timed)
    default = report["default_ensemble"]
    timed = {n: r for n, r in report["methods"].items() if "images_per_second" in r}
    if timed:
        lines.append(
            f"{DRAC_TEST_IMAGES} images with the default ensemble ("
            + ", ".join(f"{k} {n}" for k, n in default["members"].items())
            + f" members: the recipes' folds x seeds; {default['gflop_per_image'] / 1e3:.2f} "
            "TFLOP per image), scaled from this run by FLOPs: "
            + ", ".join(
                f"{n} {_duration(r['drac_test_set_default_ensemble_seconds'])}"
                for n, r in timed.items()
            )
        )
    if busy:
        lines.append(
            f"warning: the machine was busy (1-min load average above {machine['cpu_count']} "
            f"cores) during: {', '.join(busy)}; timings are unreliable"
        )
    if report["agreement"]:
        lines.append("")
        lines.append(
            f"agreement with naive fp32 ({next(iter(report['agreement'].values()))['images']} "
            "image(s) pooled; masks at the class thresholds, after clean-up):"
        )
        keys = {str(m["class"]): m["key"] for m in report["ensemble"]}
        rows = []
        for name, a in report["agreement"].items():
            rows.append(
                [
                    name,
                    f"{a['pixel_agreement_percent']:.4f} %",
                    *[f"{a['dice'][c]:.4f}" for c in keys],
                    f"{a['max_abs_probability_difference']:.2e}",
                    f"{a['mean_abs_probability_difference']:.2e}",
                ]
            )
        lines.extend(
            _rows(
                [
                    "method",
                    "pixels agree",
                    *[f"Dice {k}" for k in keys.values()],
                    "max |dp|",
                    "mean |dp|",
                ],
                rows,
            )
        )
        first = next(iter(report["agreement"].values()))
        fg = ", ".join(f"{keys[c]} {v:.1f} %" for c, v in first["foreground_percent"].items())
        lines.append(f"naive foreground: {fg}")
        if not cfg["bundle"]:
            lines.append(
                "note: random weights put most probabilities near 0.5, where any rounding flips "
                "a pixel; judge agreement on a trained bundle (--bundle)"
            )
    if report["training"]:
        lines.append("")
        t0 = next((t for t in report["training"] if "task" in t), None)
        if t0 is not None:
            lines.append(
                f"training step ({t0['task']}: {t0['model']}, batch {t0['batch']}, "
                f"{t0['size']} x {t0['size']}, forward + loss + backward + optimizer step, "
                f"{t0['gflop_per_step']:.0f} GFLOP per step):"
            )
        rows = []
        for t in report["training"]:
            label = f"{t['precision']}{' + channels-last' if t['channels_last'] else ''}"
            if "error" in t:
                rows.append([label, t["error"], *[""] * 6])
                continue
            peak_bytes, working = _memory_columns(t["memory"])
            frac = t.get("fraction_of_peak")
            rows.append(
                [
                    label,
                    f"{t['ran_dtype']} {t['ran_layout']}",
                    f"{t['images_per_second']:.4g}",
                    f"{t['median_seconds']:.2f}",
                    _gib(peak_bytes),
                    _gib(working),
                    f"{t['achieved_gflops']:.0f}",
                    "-" if frac is None else f"{100 * frac:.0f} %",
                ]
            )
        lines.extend(
            _rows(
                ["variant", "ran", "img/s", "s/step", peak_label, work_label, "GFLOP/s", "of peak"],
                rows,
            )
        )
    targets = report["targets"]
    lines.append("")
    lines.append(
        "targets (stated for CPU, 1024 x 1024, D4, default ensemble"
        + ("" if targets["applicable"] else "; this run is not that setting, indicative only")
        + "):"
    )
    for name, label, fmt in (
        ("engine_vs_naive", "engine / naive images per second", "{:.2f}x >= {}x"),
        ("engine_vs_ttach", "engine / ttach images per second", "{:.2f}x >= {}x"),
        ("agreement_percent", "engine pixel agreement with naive", "{:.3f} % >= {} %"),
        ("cpu_peak_gib", "engine peak memory (process RSS)", "{:.2f} GiB < {} GiB"),
    ):
        t = targets[name]
        if t["value"] is None:
            lines.append(f"  {label}: not measured")
            continue
        verdict = "met" if t["met"] else "NOT met"
        if name == "agreement_percent" and not t["conclusive"]:
            verdict += " (random weights: not conclusive)"
        if name == "cpu_peak_gib" and not t["default_ensemble"]:
            verdict += (
                " (not the default ensemble's size: every member stays loaded, rerun with "
                f"--members {max(default['members'].values())} for its memory)"
            )
        lines.append(f"  {label}: {fmt.format(t['value'], t['target'])}: {verdict}")
    return "\n".join(lines)


class _Spec:
    """Attribute view of a ModelSpec dict, for :func:`describe_spec`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)


# --------------------------------------------------------------------------------------------
# Command line


def _parse_methods(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in value.split(",") if m.strip())


def _parse_channels(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@click.command()
@click.option(
    "--size",
    type=int,
    default=None,
    help="Image side (and random-weight input size).  [default: 1024; --quick: 64]",
)
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=None,
    help="A trained model bundle (default: recipe architectures with random weights).",
)
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of real images (default: seeded phantom images).",
)
@click.option("--n-images", type=int, default=1, show_default=True, help="Images per timed pass.")
@click.option(
    "--members",
    type=int,
    default=1,
    show_default=True,
    help="Random-weight networks per class (the default training makes 5: folds x seeds; "
    "speed ratios do not depend on it, memory does).",
)
@click.option("--arch", default=None, help="Override the recipes' architecture (random weights).")
@click.option(
    "--encoder",
    default=None,
    help="Override the recipes' encoder (random weights).  [--quick: resnet18]",
)
@click.option(
    "--decoder-channels",
    callback=_parse_channels,
    default=None,
    help="Override decoder widths, e.g. 32,32,16,16,16.",
)
@click.option("--tta", default="d4", show_default=True, help="TTA set: none, flips, d4.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    help="The engine's precision: auto, fp32, bf16 or fp16 (auto: the Predictor's: bf16 where "
    "native, else fp16 on CUDA and fp32 on the CPU). A comma-separated list adds one engine "
    "row per precision (e.g. bf16,fp32). PRECISION:BACKEND picks the backend (torch, "
    "onnxruntime; default auto, the Predictor's rule), e.g. auto,fp32:onnxruntime,fp32:torch.",
)
@click.option(
    "--views-per-batch",
    type=int,
    default=None,
    help="The engine's views per forward.  [default: the engine's: 8 on CUDA, 1 on the CPU]",
)
@click.option(
    "--methods",
    callback=_parse_methods,
    default=",".join(METHODS),
    show_default=True,
    help="Comma-separated subset of naive, ttach, engine.",
)
@click.option(
    "--repeats",
    type=int,
    default=None,
    help="Timed passes (median reported).  [default: 3; --quick: 1]",
)
@click.option("--warmup", type=int, default=None, help="Untimed passes first.  [default: 1]")
@click.option(
    "--isolate/--no-isolate",
    default=None,
    help="Each method in a fresh process (clean memory figures).  [default: isolate; --quick: no]",
)
@click.option(
    "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)."
)
@click.option(
    "--train/--no-train", default=True, show_default=True, help="Also time training steps."
)
@click.option(
    "--train-task", default="irma", show_default=True, help="Whose network the training step uses."
)
@click.option(
    "--train-size", type=int, default=None, help="Training input side.  [default: --size]"
)
@click.option(
    "--train-batch",
    type=int,
    default=None,
    help="Training batch size.  [default: the recipe's on CUDA, 1 on the CPU]",
)
@click.option(
    "--train-repeats",
    type=int,
    default=None,
    help="Timed training steps.  [default: 3; --quick: 1]",
)
@click.option(
    "--matmul-side",
    type=int,
    default=None,
    help="Side of the peak matmul.  [default: 2048 CPU, 8192 CUDA]",
)
@click.option(
    "--engine-module",
    default="drac_algo.inference",
    show_default=True,
    help="Engine to benchmark: a module name or a .py file (A/B a patched copy).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weights and phantom seed.")
@click.option(
    "--quick", is_flag=True, help="Tiny smoke run (64 x 64, resnet18, one repeat, in-process)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the report as JSON.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@exits_on_bad_input
def main(json_path: Path | None, verbose: bool, **options: Any) -> None:
    """Time naive, ttach and engine inference of the D4 TTA ensemble (and training steps)."""
    setup_logging(verbose)
    cfg = config_from_options(**options)
    report = run_bench(cfg)
    click.echo(format_report(report))
    if json_path is not None:
        from drac_algo.fsutil import atomic_write_text

        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        click.echo(f"\nwrote {json_path}")


def config_from_options(**options: Any) -> BenchConfig:
    """A :class:`BenchConfig` from CLI options: ``None`` means the default, or the ``--quick``
    value when ``quick`` is set."""
    quick = options.get("quick", False)
    defaults = dict(QUICK) if quick else {}
    if options.get("bundle") is not None:
        defaults.pop("encoder", None)
        defaults.pop("decoder_channels", None)
    values = {}
    for f in dataclasses.fields(BenchConfig):
        if f.name not in options:
            continue
        value = options[f.name]
        if value is None and f.name in defaults:
            value = defaults[f.name]
        if value is not None:
            values[f.name] = value
    if quick and "matmul_side" not in values:
        values["matmul_side"] = QUICK["matmul_side"]
    return BenchConfig(**values)


if __name__ == "__main__":
    main()

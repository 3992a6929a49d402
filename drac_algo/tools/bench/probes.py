"""Facts about the device and the run: FLOPs of a network, the compute peak, the memory
high-water mark, the dtype and layout a convolution really ran with, the machine."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from drac_algo.common.hardware import cpu_features, native_bf16
from drac_algo.data.preprocess import plan_geometry
from drac_algo.engine.precision import compute_dtype, tensor_precision
from drac_algo.networks.models import build_network


def count_flops(spec: Any, side: int, batch: int = 1, backward: bool = False) -> int:
    """FLOPs of one forward (and backward) of ``spec`` on a (batch, 1, side, side) input,
    counted by ``FlopCounterMode`` (convolutions and matrix products; 2 per multiply-add) on
    the meta device, so nothing is computed."""
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
    return plan_geometry((size, size), input_size).side


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], Any], device: torch.device, runs: int) -> float:
    """The fastest of ``runs`` calls of ``fn`` after two warm-up calls."""
    best = math.inf
    for i in range(runs + 2):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
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
    dtype = compute_dtype(precision)
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
    """Peak memory of this process from :meth:`reset` on (see :mod:`drac_algo.tools.bench`)."""

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
        self.dtype = tensor_precision(x.dtype)
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        self.layout = "NHWC" if channels_last and not x.is_contiguous() else "NCHW"
        self.remove()

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


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
def torch_threads(threads: int | None):
    """``torch.set_num_threads(threads)`` for the duration (``None``: unchanged)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

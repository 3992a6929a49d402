"""What the compute device runs natively: the facts behind every ``auto`` precision and
backend choice, and how many CPU threads this process may use.

The precision policy (:mod:`drac_algo.engine.precision`: inference's and training's ``auto``), the
backend choice (:func:`drac_algo.engine.onnx_backend.choose_backend`) and the benchmark ask the same
questions here, so they cannot disagree about a machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from pathlib import Path

import torch

# The instruction-set features that decide CPU speed here, as /proc/cpuinfo spells them.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware.

    CUDA: compute capability 8.0 or newer (A100, H100, ...). ``torch.cuda.is_bf16_supported()``
    also answers True on older GPUs such as the T4 (Grand Challenge's), where bf16 runs
    emulated, without tensor cores, and far slower than fp16: emulation does not count here.
    CPU: AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``, and torch's oneDNN able to use bf16.
    torch's own check (``_is_mkldnn_bf16_supported``) asks only for AVX-512 BW/VL/DQ, so it
    answers True on Skylake-SP and Cascade Lake (the Grand Challenge T4 hosts' CPUs), where bf16
    is emulated and slower than float32: the CPU flags decide wherever they can be read.
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return True  # every ROCm GPU torch supports computes bf16
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        if not onednn_bf16():
            return False
        features = cpu_features()
        if not features:  # flags unreadable (not Linux): torch's answer is all there is
            return True
        return bool({"avx512_bf16", "amx_bf16"} & set(features))
    return False


def onednn_bf16() -> bool:
    """torch's answer: whether its oneDNN runs bf16 kernels on this CPU at all (natively or not)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """Which of :data:`CPU_FEATURES` the CPU has (empty when ``cpuinfo`` is unreadable, e.g. not
    Linux). A benchmark ratio is never read without them: bf16 is native only with AVX512-BF16
    or AMX."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return [f for f in CPU_FEATURES if f in flags]


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``docker run --cpus 4`` -> 4.0), or
    ``None`` when there is none. Reads cgroup v2 ``cpu.max`` ("max 100000" = no quota), else
    cgroup v1 ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = no quota)."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def cpu_threads(root: str | Path = "/sys/fs/cgroup") -> int:
    """Intra-op threads for this process: the CPUs it may run on (its affinity mask), capped by
    its cgroup's CPU quota rounded up, at least 1. torch and ONNX Runtime both default to every
    core of the host, which in a container limited to a few CPUs oversubscribes them (each
    thread gets a slice of the quota and waits at every barrier). ``OMP_NUM_THREADS``, when
    set to a positive integer, is the user's own choice and wins."""
    requested = os.environ.get("OMP_NUM_THREADS", "")
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def release_freed_memory() -> bool:
    """Give the heap memory that has been freed back to the OS (glibc's ``malloc_trim``);
    ``False`` where the C library has none. Loading a bundle parses every member file and frees
    the copies, which glibc keeps: 0.44 GB of the 2.0 GB that ONNX Runtime's 15 sessions of the
    default ensemble take, and peak memory is what decides whether a job fits."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError, TypeError):
        return False

"""Is there an NVIDIA GPU, can torch use it, and if not, why: the facts every job logs and
writes to ``results.json``, so that one job on Grand Challenge answers whether the GPU was used.

A GPU that is visible (``/dev/nvidia<N>`` device nodes, or ``NVIDIA_VISIBLE_DEVICES`` naming
devices) but unusable by torch (typically a driver older than the torch build's CUDA needs) is
the failure that otherwise stays silent: ``--device auto`` falls back to the CPU and the job just
takes minutes instead of seconds. :func:`check_gpu` logs it as one error-level line with torch's
reason, the driver version and what the image needs, and raises :class:`GpuUnavailableError`
instead when the run requires the GPU.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

# What the pinned torch build (requirements.txt) needs from the host: torch 2.10.0's wheel is
# built against CUDA 12.8, which runs on NVIDIA drivers >= 525 (CUDA minor-version
# compatibility; >= 570 for CUDA 12.8's own features) and ships kernels for sm_75 (T4) and newer.
IMAGE_NEEDS = "an NVIDIA driver >= 525 and a GPU of compute capability >= 7.5 (T4 or newer)"
REQUIRE_GPU_ENV = "DRAC_REQUIRE_GPU"
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
_OFF = {"", "void", "none"}  # NVIDIA_VISIBLE_DEVICES values that expose no device


class GpuUnavailableError(RuntimeError):
    """The run requires the GPU and torch cannot use one; the message says why."""


@dataclass
class GpuStatus:
    """What :func:`gpu_status` found; ``to_json`` is the ``results.json`` ``gpu`` entry."""

    visible: bool  # NVIDIA devices are exposed to this process
    evidence: list[str] = field(default_factory=list)  # what shows them (nodes, environment)
    usable: bool = False  # torch.cuda can use a device
    reason: str | None = None  # why torch cannot use a GPU, in its words (None when usable)
    driver: str | None = None
    torch_version: str = ""
    cuda_runtime: str | None = None  # the CUDA version torch was built with
    cudnn: int | None = None
    device_name: str | None = None
    capability: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def env_truthy(value: str | None) -> bool:
    """``1/true/yes/on`` (any case) -> True; unset, empty, ``0/false/no/off`` -> False; anything
    else raises ``ValueError`` naming the accepted values."""
    if value is None or value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"expected 1/true/yes/on or 0/false/no/off, got {value!r}")


def visible_devices(
    environ: dict[str, str] | None = None, nodes: list[str] | None = None
) -> list[str]:
    """The evidence that NVIDIA GPUs are exposed to this process: device nodes and the
    ``NVIDIA_VISIBLE_DEVICES`` value the NVIDIA container runtime sets; empty when none."""
    environ = os.environ if environ is None else environ
    nodes = sorted(glob.glob("/dev/nvidia[0-9]*")) if nodes is None else nodes
    evidence = list(nodes)
    value = environ.get("NVIDIA_VISIBLE_DEVICES")
    if value is not None and value.strip().lower() not in _OFF:
        evidence.append(f"NVIDIA_VISIBLE_DEVICES={value}")
    return evidence


def driver_version(path: str = DRIVER_VERSION_FILE) -> str | None:
    """The kernel driver's version from ``/proc/driver/nvidia/version`` (e.g. ``"535.183.01"``),
    or None when the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    if match is None:
        match = re.search(r"\b(\d{3}\.\d+(?:\.\d+)?)\b", text)
    return match.group(1) if match else None


def cuda_unusable_reason() -> str | None:
    """None when torch can use a CUDA device; else torch's own reason (its lazy-init error,
    e.g. "The NVIDIA driver on your system is too old ...") or what is missing."""
    if torch.version.cuda is None and not torch.version.hip:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError/AssertionError with the reason
        return " ".join(str(exc).split()) or type(exc).__name__
    return "torch.cuda.is_available() is False and torch gave no reason"


def gpu_status() -> GpuStatus:
    """Probe the GPU without changing anything (no allocation beyond CUDA's own init)."""
    evidence = visible_devices()
    status = GpuStatus(
        visible=bool(evidence),
        evidence=evidence,
        driver=driver_version(),
        torch_version=torch.__version__,
        cuda_runtime=torch.version.cuda,
    )
    reason = cuda_unusable_reason()
    status.usable = reason is None
    if status.usable:
        status.device_name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        status.capability = f"{major}.{minor}"
        status.cudnn = torch.backends.cudnn.version()
    else:
        status.reason = reason
    return status


def unusable_message(status: GpuStatus) -> str:
    """The one line that says a visible GPU cannot be used, and what would fix it."""
    driver = status.driver or f"unknown ({DRIVER_VERSION_FILE} not readable)"
    return (
        f"NVIDIA GPU visible ({', '.join(status.evidence)}) but torch {status.torch_version} (CUDA "
        f"{status.cuda_runtime}) cannot use it: {status.reason}; driver {driver}; this image "
        f"needs {IMAGE_NEEDS}"
    )


def check_gpu(
    require: bool, status: GpuStatus | None = None, source: str = REQUIRE_GPU_ENV
) -> GpuStatus:
    """Probe (or take) the GPU status; log a visible-but-unusable GPU as an error and go on on
    the CPU, or raise :class:`GpuUnavailableError` when ``require`` and no GPU can be used.
    ``source`` says where the requirement came from ("command line", "environment
    DRAC_REQUIRE_GPU", a platform.json path), for the message."""
    status = gpu_status() if status is None else status
    if status.usable:
        return status
    if status.visible:
        message = unusable_message(status)
    else:
        message = f"no NVIDIA GPU visible to this process (torch {status.torch_version})"
    if require:
        raise GpuUnavailableError(f"the GPU is required ({source}) but {message}")
    if status.visible:
        log.error("%s; running on the CPU instead", message)
    return status

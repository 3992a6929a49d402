"""``drac-doctor`` (``python -m drac_algo.doctor``): what this machine will do with a bundle,
and why, in a few seconds.

    python -m drac_algo.doctor                       # the machine: packages, CPU, GPU, memory
    python -m drac_algo.doctor --bundle runs/drac/model
    docker run --rm --gpus all --entrypoint python -v "$PWD/model:/opt/ml/model:ro" drac-algo \\
        -m drac_algo.doctor --bundle /opt/ml/model

It says: Python and the package versions; the CPU's instruction sets and what
``--precision auto`` and ``--backend auto`` pick on it; the intra-op threads (affinity capped by
the cgroup CPU quota); memory (available, and the cgroup limit); free disk; the NVIDIA driver,
CUDA, and whether torch can run a convolution on each visible GPU (with torch's exact reason when
not). With ``--bundle DIR``: the bundle check (:func:`drac_algo.bundle.store.load_bundle`), then
one image of the bundle's input size through every route this machine has (CPU float32 in torch,
CPU float32 in ONNX Runtime where the bundle has ONNX files, CPU ``auto``, CUDA ``auto``), with
each route's time and its agreement with CPU float32 torch.

Exit status 0 when everything a run needs works, 1 with the problems listed last otherwise (a
GPU that is visible but unusable, a bundle that does not load, a route that fails, a float32
route whose probabilities differ from torch's by more than 1e-4), 2 for a bad argument.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from drac_algo.common.cli import tool_command

FP32_TOLERANCE = 1e-4  # largest probability difference between float32 routes (as the export)


@dataclass
class Finding:
    """One line of the report: ``problem`` is set when it stops a run from working."""

    area: str
    name: str
    value: str
    problem: str | None = None


def _meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    values = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values


def cgroup_memory_limit(root: str | Path = "/sys/fs/cgroup") -> int | None:
    """The cgroup's memory limit in bytes (v2 ``memory.max``, v1 ``memory.limit_in_bytes``),
    or None when there is none."""
    root = Path(root)
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if value < 1 << 60 else None  # v1 spells "no limit" as a huge number
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def machine_findings() -> list[Finding]:
    """Versions, CPU, threads, memory and disk."""
    # Imported here: torch and the probes it needs; drac-doctor --help answers without them.
    import torch

    from drac_algo.common.hardware import cgroup_cpu_limit, cpu_features, cpu_threads
    from drac_algo.common.provenance import environment
    from drac_algo.engine.onnx_backend import choose_backend
    from drac_algo.engine.precision import precision_name, resolve_precision

    env = environment()
    found = [Finding("versions", "python", platform.python_version())]
    for name, version in env.items():
        if name not in ("python", "git_commit") and not isinstance(version, dict):
            found.append(Finding("versions", name, str(version)))
    cpu = torch.device("cpu")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read_lines("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    features = cpu_features()
    found.append(Finding("cpu", "model", model))
    found.append(Finding("cpu", "instruction sets", ", ".join(features) or "none of note"))
    auto = resolve_precision("auto", cpu)
    found.append(Finding("cpu", "--precision auto", precision_name(auto)))
    backend = choose_backend("auto", cpu, auto)
    found.append(
        Finding("cpu", "--backend auto", f"{backend.name} ({backend.reason}; needs ONNX files)")
    )
    quota = cgroup_cpu_limit()
    found.append(
        Finding(
            "cpu",
            "threads",
            f"{cpu_threads()} (affinity {len(os.sched_getaffinity(0))}, cgroup quota "
            f"{'none' if quota is None else f'{quota:g} CPUs'})",
        )
    )
    mem = _meminfo()
    limit = cgroup_memory_limit()
    available = mem.get("MemAvailable")
    found.append(
        Finding(
            "memory",
            "available",
            f"{_gib(available) if available else 'unknown'} of "
            f"{_gib(mem['MemTotal']) if 'MemTotal' in mem else 'unknown'}; cgroup limit "
            f"{'none' if limit is None else _gib(limit)}",
        )
    )
    for folder in ("/output", "/tmp", "."):
        if Path(folder).is_dir():
            usage = shutil.disk_usage(folder)
            found.append(Finding("disk", f"free in {folder}", _gib(usage.free)))
    return found


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def gpu_findings() -> list[Finding]:
    """The driver, CUDA, and one convolution on each GPU torch sees."""
    # Imported here: torch; drac-doctor --help answers without it.
    import torch

    from drac_algo.engine.gpu import gpu_status, unusable_message

    status = gpu_status()
    found = [
        Finding("gpu", "visible", ", ".join(status.evidence) if status.visible else "none"),
        Finding("gpu", "driver", status.driver or "none"),
        Finding("gpu", "torch CUDA build", status.cuda_runtime or "none (CPU-only torch)"),
    ]
    if not status.usable:
        problem = unusable_message(status) if status.visible else None
        found.append(Finding("gpu", "torch can use CUDA", f"no: {status.reason}", problem))
        return found
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        try:
            device = torch.device("cuda", index)
            x = torch.randn(1, 3, 64, 64, device=device)
            w = torch.randn(8, 3, 3, 3, device=device)
            torch.nn.functional.conv2d(x, w).sum().item()
            found.append(Finding("gpu", f"cuda:{index}", f"{name} (sm {major}.{minor}): conv OK"))
        except Exception as exc:  # report torch's own words for any failure
            reason = " ".join(str(exc).split()) or type(exc).__name__
            found.append(
                Finding(
                    "gpu",
                    f"cuda:{index}",
                    f"{name} (sm {major}.{minor}): conv failed",
                    f"cuda:{index} cannot run a convolution: {reason}",
                )
            )
    return found


@dataclass(frozen=True)
class Route:
    """One way of running the bundle: device, precision and backend as process.py takes them."""

    name: str
    device: str
    precision: str
    backend: str
    exact: bool  # float32: must agree with CPU float32 torch within FP32_TOLERANCE


def routes(bundle, gpu_usable: bool) -> list[Route]:
    """The routes this machine offers for ``bundle``: CPU float32 torch (the reference), ONNX
    Runtime where every member has its ONNX file, CPU auto, CUDA auto where a GPU is usable."""
    from drac_algo.engine.onnx_backend import runtime_problem

    found = [Route("cpu fp32 torch", "cpu", "fp32", "torch", True)]
    has_onnx = all(m.onnx for c in bundle.classes.values() for m in c.members)
    if has_onnx and runtime_problem() is None:
        found.append(Route("cpu fp32 onnxruntime", "cpu", "fp32", "onnxruntime", True))
    found.append(Route("cpu auto", "cpu", "auto", "auto", False))
    if gpu_usable:
        found.append(Route("cuda auto", "cuda", "auto", "auto", False))
        found.append(Route("cuda fp32", "cuda", "fp32", "torch", True))
    return found


def bundle_findings(folder: Path, gpu_usable: bool, seed: int = 0) -> list[Finding]:
    """The bundle check, then one random image of the bundle's input size through every route."""
    # Imported here: torch and the engine; drac-doctor --help answers without them.
    import numpy as np

    from drac_algo.bundle.store import load_bundle
    from drac_algo.common.errors import DracInputError
    from drac_algo.engine.predictor import Predictor

    try:
        bundle = load_bundle(folder)
    except DracInputError as exc:
        return [Finding("bundle", "check", "invalid", str(exc))]
    members = sum(len(c.members) for c in bundle.classes.values())
    size = max(m.input_size for c in bundle.classes.values() for m in c.members)
    found = [Finding("bundle", "check", f"valid: {len(bundle.classes)} classes, {members} members")]
    image = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    reference = None
    for route in routes(bundle, gpu_usable):
        try:
            t0 = time.perf_counter()
            predictor = Predictor.from_bundle(
                folder, device=route.device, precision=route.precision, tta="none",
                backend=route.backend,
            )  # fmt: skip
            loaded = time.perf_counter() - t0
            t0 = time.perf_counter()
            prediction = predictor.predict(image)
            seconds = time.perf_counter() - t0
        except Exception as exc:  # any failure of a route is the finding
            reason = " ".join(str(exc).split()) or type(exc).__name__
            found.append(Finding("routes", route.name, "failed", f"{route.name}: {reason}"))
            continue
        ran = predictor.settings()
        value = (
            f"{ran['autocast']} on {ran['backend']}: load {loaded:.1f} s, "
            f"one {size} x {size} image {seconds:.1f} s"
        )
        problem = None
        if reference is None:
            reference = prediction
        else:
            diff = max(
                float(np.abs(prediction.probabilities[k] - reference.probabilities[k]).max())
                for k in reference.probabilities
            )
            agree = np.mean(
                [np.mean(prediction.masks[k] == reference.masks[k]) for k in reference.masks]
            )
            value += f"; vs cpu fp32 torch: max |dp| {diff:.1e}, masks agree {agree:.4%}"
            if route.exact and diff > FP32_TOLERANCE:
                problem = (
                    f"{route.name} differs from cpu fp32 torch by {diff:.1e} (> {FP32_TOLERANCE:g})"
                )
        found.append(Finding("routes", route.name, value, problem))
    return found


def diagnose(bundle: Path | None) -> list[Finding]:
    """Every finding for this machine (and ``bundle``)."""
    found = machine_findings()
    gpu = gpu_findings()
    found += gpu
    if bundle is not None:
        usable = any(f.name.startswith("cuda:") and f.problem is None for f in gpu)
        found += bundle_findings(bundle, usable)
    return found


def render(found: list[Finding], echo: Callable[[str], None] = click.echo) -> None:
    width = max(len(f"{f.area} {f.name}") for f in found)
    for f in found:
        mark = "!!" if f.problem else "  "
        echo(f"{mark} {f'{f.area} {f.name}':<{width}}  {f.value}")
    problems = [f.problem for f in found if f.problem]
    if problems:
        echo(f"\n{len(problems)} problem(s):")
        for problem in problems:
            echo(f"- {problem}")
    else:
        echo("\nno problems found")


@tool_command("drac-doctor")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also check this model bundle and run one image through every route.",
)
def main(bundle: Path | None) -> None:
    """Say what this machine will do (CPU, GPU, precision, backend, memory, disk) and, with
    --bundle, whether the bundle runs on every route here. Exit 1 when something needed fails."""
    found = diagnose(bundle)
    render(found)
    if any(f.problem for f in found):
        raise SystemExit(1)

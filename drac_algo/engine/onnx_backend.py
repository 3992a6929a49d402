"""ONNX Runtime as the engine's CPU backend: the network call of a bundle member, nothing else.

The TTA views and their inverses, the sigmoid, the averaging over views and members, the
thresholds and the clean-up stay :mod:`drac_algo.engine.core`'s own code; an :class:`OnnxNetwork`
is just another callable mapping a float32 batch (n, 1, S, S) to logits (n, 1, S, S). Its
file is the member's ONNX export, written beside the weights by ``train.export`` (or later by
``python -m drac_algo.onnx_export BUNDLE``) and checked against the manifest's sha256 when the
bundle is loaded (:mod:`drac_algo.bundle.store`).

Why: ONNX Runtime folds BatchNorm into the convolutions and fuses the memory-bound tail
(concatenations, attention products, activations) that costs about 40 % of a float32 forward
pass in torch. Measured on a 2-core Intel Xeon (avx2, avx512f, avx512_bf16, amx_bf16), one
1024 x 1024 view, 2 threads, seconds per view:

============================  ==========  ========  =====================
network                       torch fp32  ORT fp32  torch bf16 (autocast)
============================  ==========  ========  =====================
Unet++ resnet34 + CAM (IRMA)  5.35        2.74      2.20
Unet resnet34 (NV)            1.58        1.19      0.61
============================  ==========  ========  =====================

(torch fp32 channels-last, as the engine runs it; torch fp32 NCHW, the naive loop: 6.26 and
1.99.) Hence :func:`choose_backend`'s ``auto`` rule: ONNX Runtime wherever the engine runs in
float32 on the CPU (``--precision auto`` on a CPU without native bf16, or ``--precision fp32``
anywhere), torch where it runs bf16 autocast on a CPU that computes bf16 natively (faster still,
within 99.9 % of float32's masks) and on CUDA.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drac_algo.bundle.manifest import REEXPORT_COMMAND
from drac_algo.bundle.verify import runtime_problem
from drac_algo.common.choices import BACKENDS
from drac_algo.common.errors import DracInputError

log = logging.getLogger(__name__)

# How to add the ONNX files to a bundle that has none (trained before this backend existed).
ADD_ONNX_COMMAND = "python -m drac_algo.onnx_export BUNDLE"


def backend_precision(backend: str, precision: str) -> str:
    """The engine's precision under ``backend``: ONNX Runtime runs float32 only, so asking for
    it with ``precision="auto"`` means ``"fp32"``; everything else is unchanged."""
    return "fp32" if backend == "onnxruntime" and precision == "auto" else precision


@dataclass(frozen=True)
class BackendChoice:
    """The backend that runs the members' networks and why (logged, and kept in results.json)."""

    name: str  # "torch" or "onnxruntime"
    reason: str


def choose_backend(
    requested: str,
    device: torch.device,
    autocast: torch.dtype | None,
    without_onnx: Sequence[str] = (),
    untied_onnx: Sequence[str] = (),
) -> BackendChoice:
    """The backend for ``requested`` (one of :data:`BACKENDS`) on ``device`` with the resolved
    autocast dtype (``None`` = float32); ``without_onnx`` names the members that have no ONNX
    file, ``untied_onnx`` those whose ONNX file is not tied to their weights (a version 1
    manifest: :mod:`drac_algo.bundle.manifest`), which never runs. ``"onnxruntime"`` asked
    for where it cannot run raises :class:`DracInputError`;
    ``"auto"`` falls back to torch and says why."""
    if requested not in BACKENDS:
        raise DracInputError(f"unknown backend {requested!r}; valid: {', '.join(BACKENDS)}")
    if requested == "torch":
        return BackendChoice("torch", "asked for")
    problems = []
    if device.type != "cpu":
        problems.append(f"ONNX Runtime runs on the CPU here, the device is {device}")
    if autocast is not None:
        name = str(autocast).removeprefix("torch.")
        problems.append(
            f"the precision resolved to {name} autocast, which torch runs (ONNX Runtime runs "
            "float32 only: --precision fp32 selects it)"
        )
    if without_onnx:
        problems.append(
            f"no ONNX file for {', '.join(without_onnx)} (add them with {ADD_ONNX_COMMAND})"
        )
    if untied_onnx:
        problems.append(
            f"the ONNX files of {', '.join(untied_onnx)} are not tied to their weights (a "
            f"version 1 manifest records no source_sha256); re-export them with "
            f"{REEXPORT_COMMAND}"
        )
    problem = runtime_problem()
    if problem:
        problems.append(problem)
    if requested == "onnxruntime":
        if problems:
            raise DracInputError("--backend onnxruntime cannot run: " + "; ".join(problems))
        return BackendChoice("onnxruntime", "asked for")
    if problems:
        return BackendChoice("torch", problems[0])
    return BackendChoice("onnxruntime", "float32 on the CPU: ONNX Runtime measured 1.3-2x torch")


_SHARED_ARENA: list[bool] = []  # registered in this process (ONNX Runtime allows it once)
_SHARED_ARENA_LOCK = threading.Lock()  # sessions may be built in several threads at once


def _register_shared_arena(ort: Any) -> None:
    with _SHARED_ARENA_LOCK:
        if _SHARED_ARENA:
            return
        memory = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        # Defaults (no limit, the default extension strategy), but process-wide.
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))
        _SHARED_ARENA.append(True)


class OnnxNetwork:
    """A member's ONNX export run by ONNX Runtime on the CPU, callable like the torch module:
    float32 (n, 1, S, S) in (any memory format, any device), logits (n, 1, S, S) float32 out
    on the CPU."""

    def __init__(self, path: str | Path, threads: int) -> None:
        import onnxruntime as ort  # optional at import time: torch alone runs every bundle

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One CPU memory arena for every session of the process, no per-shape memory pattern:
        # with a session's own arena each keeps its largest working set for good (three Unet++
        # resnet34 sessions at 1024 x 1024, one view each: 8.4 GB peak RSS, and the default
        # ensemble has 15 members); with the shared one 2.0 GB, at the same speed (2.7-3.2 s
        # per view either way, 2 threads).
        _register_shared_arena(ort)
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.enable_mem_pattern = False
        options.log_severity_level = 3  # errors only: its warnings are about unused initialisers
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DracInputError(f"cannot load the ONNX model {self.path}: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(logits)

    def __repr__(self) -> str:
        return f"OnnxNetwork({self.path.name})"

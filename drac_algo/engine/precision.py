"""The precision policy: the names ``auto``/``fp32``/``bf16``/``fp16``, their dtypes, the
autocast context, and what ``auto`` means for inference and for training on a device.

Inference (:mod:`drac_algo.engine.core`, ``process.py --precision``), training
(:func:`drac_algo.training.loop.amp_dtype`, ``amp`` in a recipe) and the benchmark
(:mod:`drac_algo.tools.bench`) all read this one table, so they cannot disagree about what a name
means or what a machine gets. The hardware facts behind ``auto`` live in
:mod:`drac_algo.common.hardware`; ONNX Runtime's float32-only rule in
:func:`drac_algo.engine.onnx_backend.backend_precision`.

An autocast dtype of ``None`` means plain float32: no autocast at all.
"""

from __future__ import annotations

import contextlib

import torch

from drac_algo.common.choices import PRECISIONS
from drac_algo.common.errors import DracInputError
from drac_algo.common.hardware import native_bf16

# Autocast dtype of each explicit name; None = float32, no autocast.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# A tensor's float32 is the same precision as "no autocast".
_NAMES: dict[torch.dtype | None, str] = {
    None: "fp32",
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}


def precision_name(dtype: torch.dtype | None) -> str:
    """The :data:`PRECISIONS` name of an autocast dtype (``None`` or float32 = ``"fp32"``)."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ValueError(
            f"no precision name for dtype {dtype}; expected one of float32, bfloat16, float16 "
            "or None"
        ) from None


def tensor_precision(dtype: torch.dtype) -> str:
    """``"fp32"``/``"bf16"``/``"fp16"`` for a tensor's dtype, else the dtype as torch prints it
    (what a probe saw a convolution run with, which may be anything)."""
    return _NAMES.get(dtype, str(dtype))


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype tensors hold when computing in ``precision`` (an explicit name, not
    ``auto``): ``fp32`` -> ``torch.float32``."""
    if precision not in AUTOCAST_DTYPES:
        raise DracInputError(
            f"expected one of {', '.join(AUTOCAST_DTYPES)} as a compute precision, "
            f"found {precision!r}"
        )
    return AUTOCAST_DTYPES[precision] or torch.float32


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; no autocast when ``dtype`` is
    ``None`` (plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The inference autocast dtype for ``precision`` on ``device``; ``None`` means float32.

    ``"auto"``: bf16 where the device computes it natively (:func:`drac_algo.common.hardware.
    native_bf16`: Ampere and newer GPUs; CPUs with AVX512-BF16 or AMX), else fp16 on CUDA (the
    T4) and fp32 on the CPU. bf16 on such a CPU runs the D4 ensemble 2.1x faster than fp32 at
    1024 x 1024 (``python -m drac_algo.bench``, 2-core AMD EPYC), its masks agreeing with
    float32's on 99.96 % of the pixels for a trained resnet34 bundle; only pixels at a class
    threshold flip. ``"bf16"`` and ``"fp16"`` are honoured everywhere (explicit opt-in;
    emulated where not native); ``"bf16"`` on a CUDA device without bf16 support raises
    :class:`DracInputError`.
    """
    if precision not in PRECISIONS:
        raise DracInputError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    is_cuda = device.type == "cuda"
    if precision == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if is_cuda else None
    if precision == "bf16" and is_cuda and not torch.cuda.is_bf16_supported():
        raise DracInputError(f"precision 'bf16' requested but {device} does not support it")
    return AUTOCAST_DTYPES[precision]


def training_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The training autocast dtype for a recipe's ``amp`` (``"auto"``, ``True`` or ``False``).

    ``"auto"``: bf16 wherever the device computes it natively (Ampere+ GPUs; CPUs with
    AVX512-BF16 or AMX, where a Unet++ training step runs about 3x faster than in float32),
    else fp16 on CUDA (with a gradient scaler, :func:`grad_scaler`; the T4 emulates bf16 far
    slower) and float32 on other CPUs. ``True`` forces mixed precision: bf16 on the CPU, the
    same choice as ``"auto"`` on CUDA. ``False`` is float32 everywhere.
    """
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if amp is True:
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else None


def grad_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A CUDA gradient scaler for fp16 training (its narrow exponent underflows small
    gradients); ``None`` for bf16 and float32, which need none."""
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

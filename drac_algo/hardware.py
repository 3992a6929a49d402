"""What the compute device runs natively: the facts behind every ``auto`` precision choice.

Training (:func:`drac_algo.training.amp_dtype`), inference
(:func:`drac_algo.inference.resolve_precision`) and the benchmark ask the same question here,
so they cannot disagree about a machine.
"""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware.

    CUDA: compute capability 8.0 or newer (A100, H100, ...). ``torch.cuda.is_bf16_supported()``
    also answers True on older GPUs such as the T4 (Grand Challenge's), where bf16 runs
    emulated, without tensor cores, and far slower than fp16: emulation does not count here.
    CPU: oneDNN's bf16 kernels (AVX512-BF16 or AMX); without them bf16 is emulated and slower
    than float32.
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return True  # every ROCm GPU torch supports computes bf16
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False

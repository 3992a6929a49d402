"""Which torch device a run uses, how many TTA views go through a network at once there, and
moving networks onto it."""

from __future__ import annotations

from typing import Any

import torch

from drac_algo.common.errors import DracInputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` = the first CUDA device when available, else the CPU. Asking for CUDA on a
    machine without it, or a GPU index it does not have, raises :class:`DracInputError`."""
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DracInputError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DracInputError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is None:
            # Parameters report "cuda:0", never "cuda": compare like with like.
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise DracInputError(
                f"--device {device}: expected a GPU index below {torch.cuda.device_count()} "
                f"(the GPUs torch sees), found {resolved.index}"
            )
    return resolved


def default_views_per_batch(device: torch.device) -> int:
    """8 on CUDA (all D4 views in one batch); 1 on the CPU, where a batch of views is slower
    per view (bigger working set than the caches) and multiplies the working memory by the
    batch size (a bf16 Unet++ at 1024 x 1024: 1.9 GiB peak RSS with 1 view, 7.3 GiB with 8)."""
    return 8 if device.type == "cuda" else 1


def resolve_views_per_batch(requested: int | None, device: torch.device) -> int:
    """``requested``, or :func:`default_views_per_batch` when ``None``; must be >= 1."""
    views = default_views_per_batch(device) if requested is None else requested
    if views < 1:
        raise DracInputError(f"max_views_per_batch must be >= 1, found {views}")
    return views


def release_cached_memory(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back (after an out-of-memory error)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _module_device(network: Any) -> torch.device | None:
    if not isinstance(network, torch.nn.Module):
        return None
    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.device
    return None


def place(network: Any, device: torch.device) -> None:
    """Move an ``nn.Module`` to ``device`` if it lives elsewhere. Other callables are assumed to
    run wherever their input is."""
    current = _module_device(network)
    if current is not None and current != device:
        network.to(device)

"""DistributedDataParallel plumbing for ``torchrun``: NCCL on GPU, gloo on CPU.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here degrades to a
single process, so the training code has one path.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from drac_algo.common.cli import parse_device
from drac_algo.common.errors import DracInputError
from drac_algo.common.torchrun import torchrun_process


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Start the process group when launched by ``torchrun`` and pick this process's device.

    ``device``: "auto" (CUDA if available), "cpu", "cuda" (under ``torchrun``, the GPU of
    ``LOCAL_RANK``) or "cuda:N" (GPU N; one process only). A device that does not exist here
    raises :class:`DracInputError`.
    """
    device = parse_device(device)
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise DracInputError(
            f"--device {device}: expected a CUDA device, found none (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); pass "
            "--device cpu or auto"
        )
    process = torchrun_process()  # a half-set torchrun environment is refused here
    world_size, rank, local_rank = (
        (process.world_size, process.rank, process.local_rank) if process else (1, 0, 0)
    )
    if use_cuda:
        index = local_rank
        if device.startswith("cuda:"):
            index = int(device.removeprefix("cuda:"))
            if world_size > 1:
                raise DracInputError(
                    f"--device {device}: under torchrun each process uses the GPU of its "
                    "LOCAL_RANK; expected --device cuda or auto, found a fixed GPU"
                )
        if index >= torch.cuda.device_count():
            raise DracInputError(
                f"--device {device}: expected a GPU index below {torch.cuda.device_count()} "
                f"(the GPUs torch sees), found {index}"
            )
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, dev)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list outside ``torchrun``)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()

"""Multi-process data parallelism: torchrun environment, process group set-up, small collectives.

Launch any fastgen training script with ``torchrun --nproc_per_node=N script.py`` (or
``torchrun --nproc_per_node=N -m fastgen train ddpm ...``): :func:`init_distributed` reads
torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables and joins the process group (gloo on
CPU, nccl on CUDA). Without those variables everything runs as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current() -> DistInfo:
    """This process's rank and world size (from the initialised process group, else single-process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def init_distributed(backend: Optional[str] = None, device: Optional[torch.device] = None) -> DistInfo:
    """Join the process group torchrun describes (no-op when already joined or run as one process).

    ``backend`` defaults to nccl when ``device`` (or, without one, the machine) is CUDA, else gloo.
    On CUDA the process is pinned to ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return current()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (``value`` itself when single-process)."""
    if not current().enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_gather_tensors(value: torch.Tensor) -> List[torch.Tensor]:
    """Every process's copy of a same-shape tensor (on ``value``'s device), ordered by rank."""
    if not current().enabled:
        return [value]
    out = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(out, value.contiguous())
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from process ``src`` on every process (for small host values such as a path)."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly: a barrier first, so no process tears down its
    communicator while another still uses it (an early exit can abort the process otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

"""Data-parallel helpers: process-group setup from the torchrun environment (gloo on CPU, NCCL on CUDA), the
:class:`~torch.nn.parallel.DistributedDataParallel` wrapper ``fit`` trains through, and small collectives
for logged scalars and objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mae.errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when this env initialised the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch (or a plain process): the one that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device=cuda requested but no CUDA GPU is available")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); gloo on CPU, NCCL on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world_size <= 1:
        return DistEnv(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device, owns_group=owns)


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def wrap(env: DistEnv, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` (rank 0's parameters and buffers are
    broadcast at construction, gradients averaged in buckets during backward); ``module`` itself when not
    distributed."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def all_reduce_mean(env: DistEnv, values: list[float]) -> list[float]:
    """Mean of a few Python floats over ranks (one small all-reduce)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return (t / env.world_size).tolist()


def all_gather_object(env: DistEnv, obj: Any) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

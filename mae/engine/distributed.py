"""Data-parallel helpers: process-group setup from the torchrun environment, gradient averaging.

``fit`` does not wrap the model in ``DistributedDataParallel``: tasks call ``self.model`` directly, and the
engine averages gradients itself (one flattened all-reduce per bucket, once per optimizer step, so gradient
accumulation needs no ``no_sync``). Parameters and buffers are broadcast from rank 0 at the start, so every
rank starts from the same weights; buffers (e.g. BatchNorm statistics) are re-broadcast before saving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

from mae.errors import UserError

BUCKET_BYTES = 32 * 1024 * 1024


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


def _buckets(tensors: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and (size + t.numel() * t.element_size() > BUCKET_BYTES or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


def _coalesced(env: DistEnv, tensors: list[torch.Tensor], op: str) -> None:
    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        if op == "mean":
            dist.all_reduce(flat)
            flat /= env.world_size
        else:
            dist.broadcast(flat, src=0)
        offset = 0
        for t in bucket:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def average_gradients(env: DistEnv, params: Iterable[torch.Tensor]) -> None:
    """Average ``.grad`` over ranks (parameters without a gradient are skipped on every rank alike)."""
    if not env.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        _coalesced(env, grads, "mean")


def broadcast_module(env: DistEnv, module: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless ``buffers_only``) and floating buffers to every rank."""
    if not env.distributed:
        return
    with torch.no_grad():
        tensors = [] if buffers_only else [p.data for p in module.parameters()]
        tensors += [b for b in module.buffers()]
        if tensors:
            _coalesced(env, tensors, "broadcast")


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

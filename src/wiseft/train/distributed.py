"""torch.distributed set-up from torchrun's environment, and model wrapping (DDP or FSDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world``; ``main`` does the I/O."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``):
    NCCL on GPUs, gloo on CPU. Without torchrun, a single process on ``device``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return current(), torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return current(), dev


def current() -> DistInfo:
    """The process group this process is in (one process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (just ``[obj]`` in one process)."""
    info = current()
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if current().enabled:
        dist.all_reduce(t)
    return t


def wrap_model(module: torch.nn.Module, parallel: str, device: torch.device) -> torch.nn.Module:
    """DDP, or FSDP2 (``fully_shard``) on each block of every ``ModuleList`` and the root.
    One process: the module unchanged."""
    if not current().enabled:
        return module
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for sub in list(module.modules()):
            if isinstance(sub, torch.nn.ModuleList):
                for block in sub:
                    if any(p.requires_grad for p in block.parameters()):
                        fully_shard(block)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids)

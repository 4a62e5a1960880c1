"""torch.distributed set-up from torchrun's environment, and model wrapping (DDP or FSDP)."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wiseft.core import WiseftError


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
        atexit.register(_leave)  # a group left standing at exit can abort the process (gloo's threads)
    return current(), dev


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistInfo:
    """The process group this process is in (one process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def processes_here() -> int:
    """How many processes of this launch share this machine (torchrun's ``LOCAL_WORLD_SIZE``;
    1 outside a process group): what a per-machine budget (memory, loader workers) divides by."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if current().enabled else 1


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


def all_gather_rows(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``t`` in rank order, on the CPU; their first dimensions may differ
    (a process with no rows may pass ``torch.empty(0)``). The shapes travel first, then one
    padded ``all_gather`` (on the GPU under NCCL). One process: ``[t]``."""
    info = current()
    if not info.enabled:
        return [t]
    shapes = all_gather_objects((tuple(t.shape), t.dtype) if t.numel() else None)
    full = [s for s in shapes if s is not None]
    if not full:
        return [t for _ in range(info.world)]
    trailing, dtype = full[0][0][1:], full[0][1]
    rows = [s[0][0] if s is not None else 0 for s in shapes]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = torch.zeros((max(rows), *trailing), dtype=dtype, device=device)
    if t.numel():
        buf[:len(t)] = t.to(device)
    out = [torch.empty_like(buf) for _ in range(info.world)]
    dist.all_gather(out, buf)
    return [part[:n].cpu() for part, n in zip(out, rows)]


class DistributedError(WiseftError):
    """The processes of a torchrun launch disagree on something they must share."""


def check_same(what: str, value) -> None:
    """Raise ``DistributedError`` naming ``what`` unless every process holds an equal
    ``value`` (a small picklable fingerprint). One process: nothing to check."""
    if not current().enabled:
        return
    values = all_gather_objects(value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise DistributedError(f"{what} differs between the processes of this torchrun launch (rank 0 and rank "
                               f"{differ[0]}); every process must load the same weights and read the same data")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if current().enabled:
        dist.all_reduce(t)
    return t

"""The training engine: DDP/FSDP under torchrun, mixed precision, accumulation,
exact resume, metrics, and the paper's alternative fine-tuning methods.

The library (heads, merge, evaluation) never imports this package; ``wiseft.finetune``
is the entry point that does. It imports nothing above itself: the launcher that
fine-tunes from a run config (``python -m wiseft.train``) is :mod:`wiseft.launch`.
Names load on first use (PEP 562), so ``import wiseft.train`` does not import torch.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_SOURCES = {
    "checkpoints": ["CheckpointDir", "ResumeError", "load_checkpoint", "load_training_state"],
    "data": ["BatchPlan", "kshot_subset", "resolve_batch"],
    "distributed": ["DistInfo", "init_distributed"],
    "engine": ["TrainRun", "enable_grad_checkpointing", "run_finetune", "sharded_features"],
    "features": ["compute_features"],
    "logs": ["MetricLog"],
    "loop": ["Stage", "Trainer"],
    "schedule": ["cosine_lr"],
}
_LAZY = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = ["BatchPlan", "CheckpointDir", "DistInfo", "MetricLog", "ResumeError", "Stage", "Trainer", "TrainRun",
           "compute_features", "cosine_lr", "enable_grad_checkpointing", "init_distributed", "kshot_subset",
           "load_checkpoint", "load_training_state", "resolve_batch", "run_finetune", "sharded_features"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

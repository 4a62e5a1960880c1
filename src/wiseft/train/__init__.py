"""The training engine: DDP/FSDP under torchrun, mixed precision, accumulation,
exact resume, metrics, and the paper's alternative fine-tuning methods.

The library (heads, merge, evaluation) never imports this package; ``wiseft.finetune``
is the entry point that does.
"""

from .checkpoints import CheckpointDir, ResumeError, load_checkpoint
from .data import BatchPlan, kshot_subset, resolve_batch
from .distributed import DistInfo, init_distributed
from .engine import enable_grad_checkpointing, run_finetune, sharded_features
from .launch import train_from_config
from .logs import MetricLog
from .loop import Stage, Trainer

__all__ = ["BatchPlan", "CheckpointDir", "DistInfo", "MetricLog", "ResumeError", "Stage", "Trainer",
           "enable_grad_checkpointing", "init_distributed", "kshot_subset", "load_checkpoint", "resolve_batch",
           "run_finetune", "sharded_features", "train_from_config"]

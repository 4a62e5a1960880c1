"""The training engine: DDP/FSDP under torchrun, mixed precision, accumulation, exact
resume, metrics, and the paper's alternative fine-tuning methods."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "checkpoints": ["check_resumable", "CheckpointDir", "load_training_state", "ResumeError"],
    "data": ["BatchPlan", "kshot_subset", "resolve_batch"],
    "engine": ["enable_grad_checkpointing", "finetune", "sharded_features", "TrainRun"],
    "features": ["compute_features"],
    "flyp": ["flyp_model"],
    "logs": ["MetricLog"],
    "loop": ["finetune_precision", "Stage", "Trainer"],
    "lora": ["finetuned_state", "LORA_A", "LORA_B"],
    "methods": ["adamw"],
    "parallel": ["freeze_unreached", "wrap_model"],
    "schedule": ["cosine_lr"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)

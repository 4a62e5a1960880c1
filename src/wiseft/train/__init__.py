"""The training engine: DDP/FSDP under torchrun, mixed precision, accumulation, exact resume, metrics, and the paper's alternative fine-tuning methods."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "parallel": ["freeze_unreached", "wrap_model"],
    "checkpoints": ["CheckpointDir", "ResumeError", "check_resumable", "load_training_state"],
    "data": ["BatchPlan", "kshot_subset", "resolve_batch"],
    "engine": ["TrainRun", "finetune", "enable_grad_checkpointing", "sharded_features"],
    "features": ["compute_features"],
    "flyp": ["flyp_model"],
    "logs": ["MetricLog"],
    "loop": ["Stage", "Trainer", "finetune_precision"],
    "lora": ["LORA_A", "LORA_B", "finetuned_state"],
    "methods": ["adamw"],
    "schedule": ["cosine_lr"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)

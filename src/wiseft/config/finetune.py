"""How to fine-tune: the finetune section of a config (and of each variant)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LoraConfig(BaseModel):
    """LoRA adapters (``finetune.mode: lora``), trained with the peft library; the defaults are
    peft's (rank 8, alpha 8, no dropout). ``target_modules`` (module-name suffixes) defaults to
    the backbone family's attention projections (docs/training.md); ``use_dora`` trains DoRA,
    whose update is not linear in its scale, so its sweep mixes the merged weights instead."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, min_length=1)
    use_dora: bool = False


class FinetuneConfig(BaseModel):
    """How to fine-tune; every field has the paper's default (or is off by default).

    ``batch_size`` is the global batch: per-device batch x devices x accumulation
    steps. ``micro_batch_size`` sets the per-device batch of one forward pass; the
    accumulation steps follow from it.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["e2e", "linear", "lp-ft", "lora"] = "e2e"
    # mode lora's adapter settings; left out of the dump at their defaults (config hashes unchanged)
    lora: LoraConfig = Field(default_factory=LoraConfig, exclude_if=lambda v: v == LoraConfig())
    # the loss: cross-entropy against the head, FLYP's contrastive loss against the class
    # prompts, or CLIP's contrastive loss on (query, caption) pairs (a pair training set);
    # the last two train both towers. Left out of the dump at its default, so configs written
    # before it keep their hash and train key.
    objective: Literal["ce", "flyp", "contrastive"] = Field("ce", exclude_if=lambda v: v == "ce")
    # mode linear's probe: "lbfgs" (the default there) is CLIP's protocol, logistic regression on
    # frozen features with C searched on held-out training data (train/probe.py); "sgd" trains
    # the head with this section's recipe (lr, batch, epochs). Other modes ignore it and drop
    # it, so their dumps, config hashes and train keys are unchanged.
    linear_probe: Literal["lbfgs", "sgd"] | None = Field(None, exclude_if=lambda v: v is None)
    lr: float = Field(3e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    batch_size: int = Field(512, ge=1)
    epochs: int = Field(10, ge=1)
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    # auto: bf16 autocast where the device runs bf16 natively, else fp32; fp16 (with a
    # gradient scaler) only when asked for (runtime.choose_precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # scale: devices, accumulation, memory, speed
    micro_batch_size: int | None = Field(None, ge=1)
    parallel: Literal["ddp", "fsdp"] = "ddp"
    grad_checkpointing: bool = False
    compile: bool = False
    channels_last: bool = False
    deterministic: bool = False
    # the paper's alternatives to compare against WiSE-FT
    ema_decay: float | None = Field(None, gt=0, lt=1)
    l2_to_zeroshot: float = Field(0.0, ge=0)
    weight_decay_exclusions: bool = False
    lp_epochs: int | None = Field(None, ge=1)
    lp_lr: float | None = Field(None, gt=0)
    # low-data regime
    shots_per_class: int | None = Field(None, ge=1)
    shots_seed: int = 0
    # checkpoints and logs
    save_every_steps: int | None = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    keep_epoch_checkpoints: bool = True
    log_every_steps: int = Field(1, ge=1)
    tensorboard: bool = False

    @model_validator(mode="after")
    def _check(self):
        if self.mode == "linear" and self.linear_probe is None:
            self.linear_probe = "lbfgs"  # written out, so a mode-linear run's train key names its probe
        elif self.mode != "linear":
            self.linear_probe = None
        if self.deterministic and self.precision not in ("fp32", "auto"):
            raise ValueError("deterministic: needs precision fp32 (auto runs fp32 when deterministic)")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} exceeds batch_size {self.batch_size}")
        if self.objective in ("flyp", "contrastive") and self.mode != "e2e":
            raise ValueError(f"objective: {self.objective} trains both towers end to end and needs mode: e2e, "
                             f"not mode: {self.mode!r}")
        if self.objective == "contrastive":
            for name, value in (("shots_per_class", self.shots_per_class), ("label_smoothing", self.label_smoothing)):
                if value:
                    raise ValueError(f"{name}: applies to class labels, and objective: contrastive trains on "
                                     "(query, caption) pairs, which have none")
        if self.lora != LoraConfig() and self.mode != "lora":
            raise ValueError(f"lora: adapter settings need mode lora, not {self.mode!r}")
        return self

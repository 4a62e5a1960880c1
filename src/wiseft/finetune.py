"""Fine-tuning: end-to-end, the linear head on a frozen encoder, or LP-FT.

Defaults are the paper's ImageNet recipe: AdamW, lr 3e-5, weight decay 0.1 on every
parameter, batch 512, 10 epochs, 500 warmup steps then per-step cosine decay,
gradient clipping at 1.0. This module is the small public front of the training
engine in :mod:`wiseft.train`: it imports from there, never the reverse.
"""

from __future__ import annotations

from typing import Any

from .backbones.base import Backbone
from .config.finetune import FinetuneConfig
from .data.base import LabeledDataset
from .heads import Classifier
from .runtime import autocast, device_of, to_device
from .train.engine import TrainRun, run_finetune
from .train.features import compute_features
from .train.schedule import cosine_lr

__all__ = ["FinetuneConfig", "TrainRun", "finetune", "cosine_lr", "compute_features", "autocast", "device_of",
           "to_device"]


def finetune(model: Classifier, train: LabeledDataset, backbone: Backbone, cfg: FinetuneConfig,
             run: TrainRun | None = None, **options: Any) -> Classifier:
    """A fine-tuned copy of ``model`` (the input is left untouched).

    ``run`` says where the run writes and how it reports (:class:`TrainRun`); its fields
    may also be given as keyword arguments (``log_path``, ``progress``,
    ``checkpoint_dir``, ``resume``, ``name``), which replace those of ``run``.

    Runs on every process of a ``torchrun`` launch (DDP or FSDP over the initialised
    process group) and returns the full fine-tuned model on each. With
    ``checkpoint_dir`` it writes resumable checkpoints there; ``resume=True``
    continues from the latest one (or a given checkpoint file).

    Example:
        >>> ft = finetune(zeroshot_model, train_set, backbone, FinetuneConfig(epochs=1))
    """
    return run_finetune(model, train, backbone, cfg, run, **options)

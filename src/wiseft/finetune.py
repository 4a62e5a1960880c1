"""Fine-tuning: end-to-end, the linear head on a frozen encoder, or LP-FT.

Defaults are the paper's ImageNet recipe: AdamW, lr 3e-5, weight decay 0.1 on every
parameter, batch 512, 10 epochs, 500 warmup steps then per-step cosine decay,
gradient clipping at 1.0. The training engine lives in :mod:`wiseft.train`; this
module holds its configuration and the ``finetune`` entry point.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .backbones.base import Backbone
from .config.finetune import FinetuneConfig
from .data.base import LabeledDataset
from .heads import Classifier
from .progress import progress_bar
from .runtime import autocast, device_of, to_device

__all__ = ["FinetuneConfig", "finetune", "cosine_lr", "compute_features", "autocast", "device_of", "to_device"]


log = logging.getLogger("wiseft")


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def finetune(model: Classifier, train: LabeledDataset, backbone: Backbone, cfg: FinetuneConfig, *,
             log_path: str | Path | None = None, progress: bool = True,
             checkpoint_dir: str | Path | None = None, resume: bool | str | Path = False,
             name: str | None = None) -> Classifier:
    """A fine-tuned copy of ``model`` (the input is left untouched). ``name`` labels the
    run in logs and progress (e.g. a variant's name).

    Runs on every process of a ``torchrun`` launch (DDP or FSDP over the initialised
    process group) and returns the full fine-tuned model on each. With
    ``checkpoint_dir`` it writes resumable checkpoints there; ``resume=True``
    continues from the latest one (or a given checkpoint file).

    Example:
        >>> ft = finetune(zeroshot_model, train_set, backbone, FinetuneConfig(epochs=1))
    """
    from .train.engine import run_finetune

    return run_finetune(model, train, backbone, cfg, log_path=log_path, progress=progress,
                        checkpoint_dir=checkpoint_dir, resume=resume, name=name)


@torch.no_grad()
def compute_features(encoder: torch.nn.Module, dataset: LabeledDataset, backbone: Backbone,
                     batch_size: int = 256, *, precision: str = "fp32", num_workers: int = 0,
                     progress: bool = True, keep_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features (N, D) in fp32 and labels (N,), with eval preprocessing.
    Unreadable inputs are skipped and counted, as in training and evaluation: their rows
    are left out (with ``keep_rows``, kept as zeros labelled -100, which the loss ignores,
    so that rows line up across processes), and more than ``dataset.max_unreadable`` of
    them is a named error."""
    from .data.folders import check_unreadable

    device = device_of(encoder)
    loader = DataLoader(_Readable(dataset.with_transform(backbone.transform_eval)), batch_size=batch_size,
                        collate_fn=_SkipNone(backbone.collate), num_workers=num_workers)
    was_training = encoder.training
    encoder.eval()
    feats, labels, kept, skipped = [], [], [], []
    for inputs, y, rows, bad in progress_bar(loader, desc=f"features {dataset.name}", disable=not progress,
                                             leave=False, unit="batch"):
        skipped += bad
        if inputs is None:
            continue
        with autocast(device, precision):
            f = encoder(to_device(inputs, device))
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        labels.append(y)
        kept += rows
    encoder.train(was_training)
    if skipped:
        log.warning("%s: skipped %d unreadable inputs, e.g. %s", dataset.name, len(skipped), skipped[0])
        check_unreadable(len(skipped), len(dataset), getattr(dataset, "max_unreadable", None),
                         f"features of {dataset.name}", skipped[0])
    if not feats:
        raise ValueError(f"{dataset.name}: no readable inputs to compute features from")
    feats, labels = torch.cat(feats), torch.cat(labels)
    if keep_rows and skipped:
        full = torch.zeros(len(dataset), feats.shape[1])
        full_labels = torch.full((len(dataset),), -100, dtype=labels.dtype)
        full[kept], full_labels[kept] = feats, labels
        return full, full_labels
    return feats, labels


class _Readable(torch.utils.data.Dataset):
    """``(index, input, label)`` per sample, or ``(index, None, reason)`` for one that cannot be loaded."""

    def __init__(self, dataset: LabeledDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, *self.dataset[i]
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input, not a crash
            return i, None, f"{self.dataset.samples[i][0]}: {type(e).__name__}: {e}"


class _SkipNone:
    """Collate the readable samples: (inputs, labels, their indices, reasons of the unreadable ones)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, batch):
        good = [(x, y) for _, x, y in batch if x is not None]
        rows = [i for i, x, _ in batch if x is not None]
        bad = [reason for _, x, reason in batch if x is None]
        return (*self.collate(good), rows, bad) if good else (None, None, rows, bad)

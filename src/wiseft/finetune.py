"""Fine-tuning: end-to-end, or the linear head on a frozen encoder.

Defaults are the paper's ImageNet recipe: AdamW, lr 3e-5, weight decay 0.1 on every
parameter, batch 512, 10 epochs, 500 warmup steps then per-step cosine decay,
gradient clipping at 1.0.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .backbones.base import Backbone
from .data.base import LabeledDataset
from .heads import Classifier


class FinetuneConfig(BaseModel):
    """How to fine-tune; every field has the paper's default."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["e2e", "linear"] = "e2e"
    lr: float = Field(3e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    batch_size: int = Field(512, ge=1)
    epochs: int = Field(10, ge=1)
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def to_device(inputs, device: torch.device):
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def finetune(model: Classifier, train: LabeledDataset, backbone: Backbone, cfg: FinetuneConfig,
             *, log_path: str | Path | None = None, progress: bool = True) -> Classifier:
    """A fine-tuned copy of ``model`` (the input is left untouched).

    Example:
        >>> ft = finetune(zeroshot_model, train_set, backbone, FinetuneConfig(epochs=1))
    """
    torch.manual_seed(cfg.seed)
    tuned = copy.deepcopy(model)
    if cfg.mode == "linear":
        feats, labels = compute_features(tuned.encoder, train, backbone, cfg.batch_size, progress=progress)
        _train_linear(tuned.head, feats, labels, cfg, log_path, progress)
    else:
        _train_e2e(tuned, train, backbone, cfg, log_path, progress)
    tuned.eval()
    return tuned


def _optimizer(params, cfg: FinetuneConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step(model_params, loss, opt, cfg: FinetuneConfig, step: int, total: int) -> float:
    lr = cosine_lr(step, cfg.lr, cfg.warmup_steps, total)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model_params, cfg.grad_clip)
    opt.step()
    return lr


def _train_e2e(model: Classifier, train: LabeledDataset, backbone: Backbone, cfg: FinetuneConfig,
               log_path, progress: bool) -> None:
    device = device_of(model)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train.with_transform(backbone.transform_train), batch_size=cfg.batch_size,
                        shuffle=True, generator=g, collate_fn=backbone.collate,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    total = cfg.epochs * len(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, cfg)
    model.train()
    step = 0
    with _Log(log_path) as log, tqdm(total=total, desc=f"fine-tune ({cfg.mode})", disable=not progress) as bar:
        for epoch in range(cfg.epochs):
            for inputs, labels in loader:
                with autocast(device, cfg.precision):
                    logits = model(to_device(inputs, device))
                loss = F.cross_entropy(logits.float(), labels.to(device), label_smoothing=cfg.label_smoothing)
                lr = _step(params, loss, opt, cfg, step, total)
                log.write(step=step, epoch=epoch, loss=loss.item(), lr=lr)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
                step += 1


def _train_linear(head: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor, cfg: FinetuneConfig,
                  log_path, progress: bool) -> None:
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = _optimizer(head.parameters(), cfg)
    device = head.weight.device
    step = 0
    with _Log(log_path) as log, tqdm(total=total, desc="fine-tune (linear)", disable=not progress) as bar:
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(labels), generator=g)
            for i in range(0, len(labels), cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                logits = head(feats[idx].to(device))
                loss = F.cross_entropy(logits, labels[idx].to(device), label_smoothing=cfg.label_smoothing)
                lr = _step(list(head.parameters()), loss, opt, cfg, step, total)
                log.write(step=step, epoch=epoch, loss=loss.item(), lr=lr)
                bar.update()
                step += 1


@torch.no_grad()
def compute_features(encoder: torch.nn.Module, dataset: LabeledDataset, backbone: Backbone,
                     batch_size: int = 256, *, precision: str = "fp32", num_workers: int = 0,
                     progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features (N, D) in fp32 and labels (N,), with eval preprocessing."""
    device = device_of(encoder)
    loader = DataLoader(dataset.with_transform(backbone.transform_eval), batch_size=batch_size,
                        collate_fn=backbone.collate, num_workers=num_workers)
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for inputs, y in tqdm(loader, desc=f"features {dataset.name}", disable=not progress, leave=False):
        with autocast(device, precision):
            f = encoder(to_device(inputs, device))
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        labels.append(y)
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


class _Log:
    """Training log as JSON lines (or nothing when no path is given)."""

    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8") if path else None

    def __enter__(self):
        return self

    def write(self, **row) -> None:
        if self.f:
            self.f.write(json.dumps(row) + "\n")

    def __exit__(self, *exc):
        if self.f:
            self.f.close()

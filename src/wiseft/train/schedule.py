"""The learning-rate schedule: per-step linear warmup, then cosine decay to zero."""

from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr

"""The numerics evaluation runs under: the precision it runs in on a device
(``resolve_precision``: fp32 or bf16, ``choose_precision`` deciding ``auto``) and the
context that precision computes in (``numerics``: bf16 autocast, or deterministic fp32)."""

from __future__ import annotations

import contextlib

import torch

from wiseft.runtime.device import choose_precision, deterministic_numerics


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision evaluation runs in on ``device`` (``runtime.choose_precision``; evaluation
    runs fp32 or bf16)."""
    return choose_precision(precision, device, allowed=("fp32", "bf16")).precision


def numerics(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast, or deterministic fp32 (no TF32, deterministic kernels where torch has
    them, a warning where it has not; the flags restored afterwards)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return deterministic_numerics()

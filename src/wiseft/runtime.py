"""Small device and precision helpers shared by the library and the training engine."""

from __future__ import annotations

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter."""
    return next(module.parameters()).device


def to_device(inputs, device: torch.device, *, channels_last: bool = False):
    """Move a tensor or a dict of tensors (a tokenised batch) to ``device``."""
    if isinstance(inputs, torch.Tensor):
        if channels_last and inputs.dim() == 4:
            return inputs.to(device, non_blocking=True, memory_format=torch.channels_last)
        return inputs.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for ``"bf16"``/``"fp16"``; a no-op context for ``"fp32"``."""
    dtype = _DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype, enabled=precision in _DTYPES)

"""Small device and precision helpers shared by the library and the training engine."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter."""
    return next(module.parameters()).device


def to_device(inputs, device: torch.device, *, channels_last: bool = False):
    """Move a tensor or a dict of them (a tokenised batch; nested for FLYP's input-prompt
    pairs) to ``device``."""
    if isinstance(inputs, torch.Tensor):
        if channels_last and inputs.dim() == 4:
            return inputs.to(device, non_blocking=True, memory_format=torch.channels_last)
        return inputs.to(device, non_blocking=True)
    return {k: to_device(v, device, channels_last=channels_last) for k, v in inputs.items()}


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for ``"bf16"``/``"fp16"``; a no-op context for ``"fp32"``."""
    dtype = _DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype, enabled=precision in _DTYPES)


_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@contextlib.contextmanager
def deterministic_numerics(*, strict: bool = False) -> Iterator[None]:
    """fp32 that repeats, for the duration: TF32 off, cuDNN benchmark off, deterministic
    algorithms on. ``strict`` (training) makes an op without a deterministic kernel an
    error rather than a warning, and also sets ``cudnn.deterministic`` and cuBLAS's fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, unless already set). Every flag is restored
    on exit, an exception included."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get(_CUBLAS))
    try:
        cuda.allow_tf32 = cudnn.allow_tf32 = cudnn.benchmark = False
        if strict:
            os.environ.setdefault(_CUBLAS, ":4096:8")
            cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=not strict)
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        if strict and saved[6] is None:
            os.environ.pop(_CUBLAS, None)

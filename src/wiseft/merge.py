"""Weight-space ensembling: theta_alpha = (1 - alpha) * theta_0 + alpha * theta_1.

Rules (../DESIGN.md): only floating tensors are mixed; integer and bool buffers are
copied from theta_0 unchanged; half precision is mixed in fp32 and cast back; keys,
shapes and dtypes are checked before any work; results never alias the inputs.
"""

from __future__ import annotations

from typing import Mapping

import torch

StateDict = Mapping[str, torch.Tensor]


class MergeError(ValueError):
    """Two state dicts cannot be merged; the message names the first mismatch."""


def check_compatible(theta_0: StateDict, theta_1: StateDict) -> None:
    """Raise MergeError naming the first key, shape or dtype that differs."""
    keys_0, keys_1 = list(theta_0), set(theta_1)
    for k in keys_0:
        if k not in keys_1:
            raise MergeError(f"key {k!r} is in the first state dict but not in the second")
    for k in theta_1:
        if k not in theta_0:
            raise MergeError(f"key {k!r} is in the second state dict but not in the first")
    for k in keys_0:
        a, b = theta_0[k], theta_1[k]
        if a.shape != b.shape:
            raise MergeError(f"tensor {k!r} has shape {tuple(a.shape)} in the first state dict "
                             f"but {tuple(b.shape)} in the second")
        if a.dtype != b.dtype:
            raise MergeError(f"tensor {k!r} has dtype {a.dtype} in the first state dict "
                             f"but {b.dtype} in the second")


def check_alpha(alpha: float, allow_extrapolation: bool = False) -> None:
    """Alphas outside [0, 1] extrapolate; they need an explicit opt-in."""
    if not allow_extrapolation and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]; pass allow_extrapolation=True "
                         "(CLI: --extrapolate) to extrapolate on purpose")


def interpolate_tensor(a: torch.Tensor, b: torch.Tensor, alpha: float,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - alpha) * a + alpha * b, exact at alpha 0 and 1, mixed in fp32 for half types."""
    if out is None:
        out = torch.empty_like(a)
    if not (a.is_floating_point() or a.is_complex()):
        return out.copy_(a)
    if alpha == 0.0:
        return out.copy_(a)
    if alpha == 1.0:
        return out.copy_(b)
    if a.dtype in (torch.float16, torch.bfloat16):
        mixed = torch.lerp(a.float(), b.float(), alpha)
        return out.copy_(mixed)
    return torch.lerp(a, b, alpha, out=out)


def interpolate(theta_0: StateDict, theta_1: StateDict, alpha: float, *,
                allow_extrapolation: bool = False) -> dict[str, torch.Tensor]:
    """A new state dict theta_alpha; the inputs are not modified or aliased.

    Example:
        >>> merged = interpolate(zeroshot.state_dict(), finetuned.state_dict(), 0.5)
    """
    check_alpha(alpha, allow_extrapolation)
    check_compatible(theta_0, theta_1)
    return {k: interpolate_tensor(theta_0[k], theta_1[k], alpha) for k in theta_0}


class Interpolator:
    """Alpha sweeps without copies: checks once, then writes theta_alpha into a
    model's own parameters in place for each alpha (no state dict per alpha)."""

    def __init__(self, theta_0: StateDict, theta_1: StateDict, *, allow_extrapolation: bool = False):
        check_compatible(theta_0, theta_1)
        self.theta_0 = {k: v.detach() for k, v in theta_0.items()}
        self.theta_1 = {k: v.detach() for k, v in theta_1.items()}
        self.allow_extrapolation = allow_extrapolation

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, alpha: float) -> torch.nn.Module:
        """Set ``model``'s weights to theta_alpha in place and return it."""
        check_alpha(alpha, self.allow_extrapolation)
        target = model.state_dict(keep_vars=True)
        missing = set(self.theta_0) ^ set(target)
        if missing:
            raise MergeError(f"model and state dicts differ at key {sorted(missing)[0]!r}")
        for k, t in target.items():
            a, b = self.theta_0[k], self.theta_1[k]
            if t.numel() and t.data_ptr() in (a.data_ptr(), b.data_ptr()):
                raise MergeError(f"model tensor {k!r} aliases an input state dict; "
                                 "pass copies (e.g. {k: v.clone()}) as theta_0/theta_1")
            interpolate_tensor(a, b, alpha, out=t.data if isinstance(t, torch.nn.Parameter) else t)
        return model

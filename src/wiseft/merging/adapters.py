"""WiSE-FT for LoRA fine-tunes: theta_alpha = theta_0 + alpha * B A, the weight-space mix
of theta_0 and the merged model, written from the low-rank factors without a merged copy.

theta_1 of a LoRA fine-tune (``train.lora.finetuned_state``) holds the head and, for
each adapted weight ``W``, ``W.lora_A`` (A) and ``W.lora_B`` (scale * B). The head is
trained fully, so it is mixed linearly as in any sweep; every other weight is theta_0's.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..merge import Interpolator, MergeError, check_alpha
from ..train.lora import LORA_A, LORA_B

StateDict = Mapping[str, torch.Tensor]


def is_adapter_state(state: StateDict) -> bool:
    """Whether ``state`` is a LoRA fine-tune's theta_1 (head and factors), not full weights."""
    return any(k.endswith(LORA_A) for k in state)


def adapter_deltas(state: StateDict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Weight key -> (scale * B, A), so the weight's update is ``B @ A``."""
    keys = [k[:-len(LORA_A)] for k in state if k.endswith(LORA_A)]
    missing = [k + LORA_B for k in keys if k + LORA_B not in state]
    if missing:
        raise MergeError(f"adapter state: {missing[0]} is missing (each lora_A needs its lora_B)")
    return {k: (state[k + LORA_B], state[k + LORA_A]) for k in keys}


class AdapterInterpolator:
    """Alpha sweeps of a LoRA fine-tune: ``load_into(model, alpha)`` writes theta_0 +
    alpha * B A into each adapted weight and the linear mix into the head. Holds references
    to theta_0 and the factors, never a merged copy; keys and shapes are checked up front.

    Example:
        >>> interp = AdapterInterpolator(zs_state, lora_state)
        >>> interp.load_into(model, 0.5)
    """

    def __init__(self, theta_0: StateDict, theta_1: StateDict, *, allow_extrapolation: bool = False):
        self.theta_0 = {k: v.detach() for k, v in theta_0.items()}
        self.deltas = adapter_deltas(theta_1)
        self.heads = {k: v.detach() for k, v in theta_1.items() if not k.endswith((LORA_A, LORA_B))}
        self.allow_extrapolation = allow_extrapolation
        for key, (b, a) in self.deltas.items():
            if key not in self.theta_0:
                raise MergeError(f"adapter state: {key} is no weight of theta_0")
            if (b.shape[0], a.shape[1]) != tuple(self.theta_0[key].shape):
                raise MergeError(f"adapter state: B A of {key} has shape {(b.shape[0], a.shape[1])}, the weight "
                                 f"{tuple(self.theta_0[key].shape)}")
        stray = [k for k in self.heads if k not in self.theta_0]
        if stray:
            raise MergeError(f"adapter state: {stray[0]} is no weight of theta_0")

    def tensor(self, key: str, alpha: float) -> torch.Tensor:
        """theta_alpha's tensor ``key`` (a new tensor for mixed keys; theta_0's own otherwise)."""
        base = self.theta_0[key]
        if key in self.deltas:
            b, a = self.deltas[key]
            mixed = torch.addmm(base.float(), b.float().to(base.device), a.float().to(base.device), alpha=alpha)
            return mixed.to(base.dtype)
        if key in self.heads:
            return torch.lerp(base.float(), self.heads[key].float().to(base.device), alpha).to(base.dtype)
        return base

    def merge(self, alpha: float) -> dict[str, torch.Tensor]:
        """theta_alpha as a new state dict (the full weights at ``alpha``)."""
        check_alpha(alpha, self.allow_extrapolation)
        return {k: self.tensor(k, alpha).clone() for k in self.theta_0}

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, alpha: float) -> torch.nn.Module:
        """Set ``model``'s weights to theta_alpha in place and return it."""
        check_alpha(alpha, self.allow_extrapolation)
        for key, target in model.state_dict(keep_vars=True).items():
            target.copy_(self.tensor(key, alpha))
        return model


def merged_adapter_state(theta_0: StateDict, theta_1: StateDict) -> dict[str, torch.Tensor]:
    """The full fine-tuned weights (theta_0 + B A, the trained head) of a LoRA fine-tune;
    full weights come back as they are."""
    if not is_adapter_state(theta_1):
        return dict(theta_1)
    return AdapterInterpolator(theta_0, theta_1).merge(1.0)


def interpolator_for(theta_0: StateDict, theta_1: StateDict, *,
                     allow_extrapolation: bool = False) -> Interpolator | AdapterInterpolator:
    """The sweep's interpolator: the adapter-scaling one for a LoRA theta_1, else ``Interpolator``."""
    if is_adapter_state(theta_1):
        return AdapterInterpolator(theta_0, theta_1, allow_extrapolation=allow_extrapolation)
    return Interpolator(theta_0, theta_1, allow_extrapolation=allow_extrapolation)


def adapter_provenance(mode: str, theta_1: StateDict) -> dict[str, str]:
    """What a LoRA sweep's records say of how it mixed: ``lora_mix`` is ``scaled adapter`` or,
    for an update not linear in its scale (DoRA), ``merged weights``; other modes add nothing."""
    if mode != "lora":
        return {}
    return {"lora_mix": "scaled adapter" if is_adapter_state(theta_1) else "merged weights"}

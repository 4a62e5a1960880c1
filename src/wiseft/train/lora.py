"""LoRA adapters on a backbone's encoder, trained with the peft library (``finetune.mode: lora``).

peft's ``inject_adapter_in_model`` wraps the target modules in place and freezes every
base weight; the head is trained fully, as in end-to-end mode. After training,
:func:`finetuned_state` turns the model into theta_1 for the sweep: the head and, for each
adapted weight ``W``, its low-rank factors (``W.lora_A`` = A, ``W.lora_B`` = scale * B), so
theta_alpha = theta_0 + alpha * B A is mixed without a copy of the weights. An update that
is not linear in its scale (DoRA, or a layer kind other than Linear and
MultiheadAttention) comes back as the merged weights instead, which the sweep mixes as
any fine-tune.
"""

from __future__ import annotations

import copy
import logging
import sys

import torch

from wiseft.backbones import require
from wiseft.config import LoraConfig
from wiseft.core import WiseftError

log = logging.getLogger("wiseft")

ADAPTER = "default"  # peft's adapter name
LORA_A, LORA_B = ".lora_A", ".lora_B"  # suffixes of an adapted weight's factors in theta_1
# Default target modules per backbone family: the attention projections, as peft's own
# defaults for BERT (query, value) and for q_proj/v_proj models. open_clip fuses q, k and v
# into one nn.MultiheadAttention, which peft adapts whole (in_proj and out_proj).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "open_clip": ("attn",),
    "hf_clip": ("q_proj", "v_proj"),
    "sentence_transformer": ("query", "value"),
}


class LoraError(WiseftError):
    """LoRA adapters cannot be added as configured; the message names the setting."""


def target_modules(family: str, cfg: LoraConfig) -> list[str]:
    """The module-name suffixes to adapt: ``cfg.target_modules``, else the family's default."""
    if cfg.target_modules:
        return list(cfg.target_modules)
    if family not in DEFAULT_TARGETS:
        raise LoraError(f"finetune.lora.target_modules: backbone family {family!r} has no default target "
                        f"modules; name them (defaults exist for {', '.join(sorted(DEFAULT_TARGETS))})")
    return list(DEFAULT_TARGETS[family])


def inject_lora(encoder: torch.nn.Module, family: str, cfg: LoraConfig) -> torch.nn.Module:
    """Add LoRA adapters to ``encoder`` in place (peft's ``inject_adapter_in_model``); only
    the adapters remain trainable. Returns ``encoder``.

    Example:
        >>> inject_lora(model.encoder, "open_clip", LoraConfig(rank=4))
    """
    peft = require("peft", "lora")
    targets = target_modules(family, cfg)
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                             use_dora=cfg.use_dora)
    try:
        return peft.inject_adapter_in_model(config, encoder, adapter_name=ADAPTER)
    except ValueError as e:
        raise LoraError(f"finetune.lora (target_modules {targets}): {str(e).splitlines()[0]}") from None


def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every peft LoRA layer in ``model``, outermost first."""
    if "peft" not in sys.modules:  # no adapter can exist before peft is imported; a plain run never imports it
        return []
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def _base_name(name: str) -> str:
    """A module's name in the model without adapters (peft nests the original as ``base_layer``)."""
    return ".".join(part for part in name.split(".") if part != "base_layer")


def _weight_key(name: str, layer: torch.nn.Module) -> str:
    base = layer.get_base_layer()
    return f"{_base_name(name)}.{'in_proj_weight' if isinstance(base, torch.nn.MultiheadAttention) else 'weight'}"


def scales_linearly(model: torch.nn.Module) -> bool:
    """Whether every adapter's update is ``scale * B A`` on a Linear or attention weight
    (not DoRA, not a convolution or embedding adapter, no fan-in-fan-out layout)."""
    for _, layer in lora_layers(model):
        base = layer.get_base_layer()
        if layer.use_dora.get(ADAPTER, False) or getattr(layer, "fan_in_fan_out", False) or \
                not isinstance(base, (torch.nn.Linear, torch.nn.MultiheadAttention)):
            return False
    return True


@torch.no_grad()
def adapter_factors(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """theta_1 of a LoRA fine-tune whose update scales linearly: the head's tensors and each
    adapted weight's factors, ``<weight key>.lora_A`` (A) and ``.lora_B`` (c * scale * B).

    The factors are checked against peft's own merge, the update the forward pass applies:
    peft's MultiheadAttention adds out_proj's update twice (in its forward as in ``merge``),
    so there c is 2; elsewhere 1. None when no such c reproduces the merge."""
    merged = merged_state(model)
    state = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    for name, layer in lora_layers(model):
        key = _weight_key(name, layer)
        base = layer.get_base_layer()
        weight = base.in_proj_weight if isinstance(base, torch.nn.MultiheadAttention) else base.weight
        a, b = layer.lora_A[ADAPTER].weight.detach(), layer.lora_B[ADAPTER].weight.detach() * layer.scaling[ADAPTER]
        delta = merged[key] - weight
        factor = next((c for c in (1, 2) if torch.allclose(delta, c * (b @ a), atol=1e-5, rtol=1e-4)), None)
        if factor is None:
            return None
        state[key + LORA_A], state[key + LORA_B] = a.clone(), b * factor
    return state


@torch.no_grad()
def merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` with every adapter merged into its weights by peft
    (``merge``), under the names of the model without adapters."""
    merged = copy.deepcopy(model)
    layers = lora_layers(merged)
    for name, layer in layers:  # an outer layer merges its nested ones (peft's MultiheadAttention: out_proj)
        if not any(name.startswith(outer + ".") for outer, _ in layers):
            layer.merge(adapter_names=[ADAPTER])
    return {_base_name(k): v for k, v in merged.state_dict().items() if ".lora_" not in k}


def finetuned_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """theta_1 of a fine-tuned classifier: its state dict; for LoRA the head and the adapter
    factors (:func:`adapter_factors`), or the merged weights where the update is not linear
    in its scale (DoRA), which is logged."""
    if not lora_layers(model):
        return model.state_dict()
    factors = adapter_factors(model) if scales_linearly(model) else None
    if factors is not None:
        return factors
    log.info("LoRA: the update is not linear in its scale (DoRA or a non-linear layer); the alpha sweep "
             "mixes the merged weights instead of scaling the adapter")
    return merged_state(model)

"""WiSE-FT for LoRA fine-tunes: theta_alpha = theta_0 + alpha * B A, the weight-space mix
of theta_0 and the merged model, written from the low-rank factors without a merged copy.

theta_1 of a LoRA fine-tune (``train.lora.finetuned_state``) holds the head and, for
each adapted weight ``W``, ``W.lora_A`` (A) and ``W.lora_B`` (scale * B). The head is
trained fully, so it is mixed linearly as in any sweep; every other weight is theta_0's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from wiseft.config import MergeConfig
from wiseft.io import StateDict
from wiseft.merge.interpolator import Interpolator
from wiseft.merge.plan import MergeError, check_alpha
from wiseft.train import LORA_A, LORA_B


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
    return Interpolator(theta_0, theta_1, MergeConfig(allow_extrapolation=allow_extrapolation))


def adapter_provenance(mode: str, theta_1: StateDict) -> dict[str, str]:
    """What a LoRA sweep's records say of how it mixed: ``lora_mix`` is ``scaled adapter`` or,
    for an update not linear in its scale (DoRA), ``merged weights``; other modes add nothing."""
    if mode != "lora":
        return {}
    return {"lora_mix": "scaled adapter" if is_adapter_state(theta_1) else "merged weights"}


# ---------------------------------------------------------------------------------------
# adapters trained elsewhere: a peft adapter folder (adapter_config.json, adapter_model.*)

PEFT_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."


def is_peft_adapter(path) -> bool:
    """Whether ``path`` is a peft adapter folder (``save_pretrained`` of a PeftModel)."""
    from pathlib import Path

    return (Path(path) / PEFT_CONFIG).is_file()


def _peft_config(adapter_dir):
    """The adapter's LoraConfig, refused where its update is not theta_0 + scale * B A."""
    from wiseft.backbones import require

    peft = require("peft", "lora")
    config = peft.PeftConfig.from_pretrained(str(adapter_dir))
    if not isinstance(config, peft.LoraConfig):
        raise MergeError(f"{adapter_dir}: a {type(config).__name__} adapter; only LoRA adapters can be scaled")
    if config.use_dora or config.rank_pattern or config.alpha_pattern or config.fan_in_fan_out:
        raise MergeError(f"{adapter_dir}: DoRA, per-module rank_pattern/alpha_pattern and fan_in_fan_out "
                         "adapters are not supported by wiseft interpolate (mix the merged model instead)")
    return config


class AdapterError(MergeError):
    """A peft adapter does not fit its base model; the message names the adapter folder, the
    first adapted module at fault and why."""


@dataclass(frozen=True)
class AdapterBase:
    """What a peft adapter is checked against. ``roots``: per candidate model the adapter may
    have been made on (a name for messages), every weight by its path in that model with its
    shape, and the key of each in theta_0 (None for a weight theta_0 does not mix: another
    tower). The first root holding every adapted weight, shapes included, is the adapter's."""

    roots: tuple[tuple[str, dict[str, tuple[int, ...]], dict[str, str | None]], ...]


def state_base(theta_0: StateDict) -> AdapterBase:
    """A base given as a state dict: adapted modules must be its keys exactly (no prefix is
    guessed: a text tower's ``transformer.x`` is never an image tower's ``visual.transformer.x``)."""
    shapes = {k: tuple(v.shape) for k, v in theta_0.items()}
    return AdapterBase((("the base state dict", shapes, {k: k for k in shapes}),))


def model_base(full: torch.nn.Module, mixed: torch.nn.Module) -> AdapterBase:
    """A base given as a model: ``full`` the pretrained model the adapter names modules of (a
    whole CLIP, both towers; or a pretrained model nested in it, as a sentence encoder's
    transformer), ``mixed`` the model theta_0 is the state of. A weight maps to ``mixed``'s key
    of the very same tensor, so a text tower never lands on the image tower."""
    ids = {id(t): k for k, t in mixed.state_dict(keep_vars=True).items()}
    candidates = [(type(full).__name__, full)] + [
        (f"{type(full).__name__}.{name}", m) for name, m in full.named_modules()
        if name and hasattr(m, "save_pretrained")]
    roots = []
    for label, root in candidates:
        state = root.state_dict(keep_vars=True)
        roots.append((label, {k: tuple(t.shape) for k, t in state.items()},
                      {k: ids.get(id(t)) for k, t in state.items()}))
    return AdapterBase(tuple(roots))


def _adapted(adapter_dir, scale: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path (``base_layer`` dropped) -> (A, scale * B) of every adapted module of a peft
    LoRA folder; peft's MultiheadAttention applies its nested out_proj update twice (see
    train.lora.adapter_factors), so that B counts twice."""
    from peft.utils import load_peft_weights

    weights = load_peft_weights(str(adapter_dir), device="cpu")
    out = {}
    for name, a in weights.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[:-len(".lora_A.weight")].removeprefix(_PEFT_PREFIX)
        b = weights[name.replace(".lora_A.weight", ".lora_B.weight")]
        twice = module.endswith(".base_layer.out_proj")
        path = ".".join(p for p in module.split(".") if p != "base_layer")
        out[path] = (a.float(), b.float() * scale * (2 if twice else 1))
    return out


def _fit(adapted: Mapping[str, tuple[torch.Tensor, torch.Tensor]], shapes: Mapping[str, tuple[int, ...]],
         label: str):
    """(module -> weight path) when every adapted module's weight is in ``shapes`` with B A's
    shape, else (None, the first module at fault and why)."""
    paths = {}
    for module, (a, b) in adapted.items():
        path = next((f"{module}.{leaf}" for leaf in ("weight", "in_proj_weight") if f"{module}.{leaf}" in shapes), None)
        if path is None:
            return None, f"adapted module {module!r} has no weight in {label} (no {module}.weight)"
        if (b.shape[0], a.shape[1]) != shapes[path]:
            return None, (f"adapted module {module!r}: B A is {(b.shape[0], a.shape[1])} but {path} of {label} is "
                          f"{shapes[path]} (an adapter of another architecture or width)")
        paths[module] = path
    return paths, None


def _targets(adapter_dir, adapted, base: AdapterBase) -> dict[str, str | None]:
    """Module -> theta_0 key (None: a weight of the pretrained model theta_0 does not mix), from
    the first root of ``base`` the adapter fits; AdapterError naming the first misfit or a
    theta_0 key two modules would both write."""
    why = None
    for label, shapes, keys in base.roots:
        paths, reason = _fit(adapted, shapes, label)
        if paths is None:
            why = why or reason
            continue
        targets, seen = {m: keys[p] for m, p in paths.items()}, {}
        for module, key in targets.items():
            if key is not None and key in seen:
                raise AdapterError(f"{adapter_dir}: adapted modules {seen[key]!r} and {module!r} both map to "
                                   f"{key!r} of the base; one would overwrite the other")
            seen[key] = module
        return targets
    raise AdapterError(f"{adapter_dir} does not fit the base model: {why}")


def read_peft_adapter(adapter_dir, base: StateDict | AdapterBase) -> dict[str, torch.Tensor]:
    """A peft LoRA adapter folder as a LoRA theta_1 over theta_0 (each adapted weight's
    ``lora_A`` and scale * ``lora_B``; no head: theta_0's stays), checked against ``base``
    (``model_base`` of a loaded model, or theta_0 itself, ``state_base``) before any use:
    every adapted module a weight of the base's architecture with B A's shape, no two on one
    key. Modules of the pretrained model that theta_0 does not mix (a CLIP text tower, under
    an image classifier) are left out and counted in the log; an adapter with none that
    theta_0 mixes is an AdapterError naming the first."""
    import logging
    import math

    config = _peft_config(adapter_dir)
    scale = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    adapted = _adapted(adapter_dir, scale)
    if not adapted:
        raise AdapterError(f"{adapter_dir}: no LoRA weights (adapter_model.* holds no lora_A)")
    targets = _targets(adapter_dir, adapted, base if isinstance(base, AdapterBase) else state_base(base))
    state, skipped = {}, [m for m, key in targets.items() if key is None]
    for module, key in targets.items():
        if key is not None:
            state[key + LORA_A], state[key + LORA_B] = adapted[module]
    if not state:
        raise AdapterError(f"{adapter_dir}: adapted module {skipped[0]!r} is a weight of the pretrained model but "
                           f"not of the model being mixed (another tower); none of its {len(skipped)} adapted "
                           "modules is, so the adapter would change nothing")
    if skipped:
        logging.getLogger("wiseft").info("%s: %d adapted modules are not in the model being mixed (e.g. %s); "
                                         "left out", adapter_dir, len(skipped), skipped[0])
    return state


def write_peft_adapter(adapter_dir, out_dir, alpha: float, meta: dict | None = None):
    """The adapter scaled to ``alpha`` in peft's own format (``lora_B`` times alpha, the
    config unchanged), loadable with ``PeftModel.from_pretrained(base, out_dir)``; its alpha
    and parents in ``wiseft.json``. Written atomically."""
    import json
    import shutil
    from pathlib import Path

    from peft.utils import load_peft_weights
    from safetensors.torch import save_file

    from wiseft.io import atomic_path

    _peft_config(adapter_dir)
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    scaled = {k: (v * alpha if ".lora_B." in k else v).contiguous() for k, v in weights.items()}
    with atomic_path(Path(out_dir), directory=True) as tmp:
        shutil.copyfile(Path(adapter_dir) / PEFT_CONFIG, tmp / PEFT_CONFIG)
        save_file(scaled, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "wiseft.json").write_text(json.dumps({**(meta or {}), "alpha": alpha}, indent=2))
    return Path(out_dir)

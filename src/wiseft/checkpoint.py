"""Checkpoints that describe themselves: safetensors weights with JSON metadata,
written atomically; export to the backbone family's own format; reading state
dicts written by other tools (open_clip training checkpoints, Hugging Face dirs).

``load_state`` is the one loader of weights (every merge and soup reads through it);
resumable training state, a different format, is ``train.checkpoints.load_training_state``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .backbones.base import Backbone, exported_spec, load_backbone, shareless
from .errors import WiseftError
from .heads import Classifier
from .merge import check_finite
from .files import atomic_path, atomic_write, read_torch, resolve_checkpoint

MODEL_FILE = "model.safetensors"
META_FILE = "wiseft.json"
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(WiseftError):
    """A checkpoint cannot be read; the message names the file and what is wrong."""


def save_state(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Write a state dict as safetensors with ``meta`` as JSON in the header, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(shareless(state), str(tmp), metadata={"wiseft": json.dumps(meta or {})})
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The wiseft metadata of a safetensors file or model directory ({} if none)."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("wiseft", "{}"))


StateSource = str | Path | Mapping[str, torch.Tensor]


def load_state(path: StateSource) -> dict[str, torch.Tensor]:
    """A state dict from a wiseft model dir, a Hugging Face dir (single or sharded), a
    .safetensors file, or a torch file (read with ``weights_only=True``); ``state_dict``
    and ``model`` wrappers and ``module.``/``_orig_mod.`` prefixes are removed, and NaN or
    Inf weights refused (NonFiniteError). A state dict already in memory comes back as it
    is, its tensors detached (not copied, not checked), so callers take either."""
    if isinstance(path, Mapping):
        return {k: v.detach() for k, v in path.items()}
    kind, files = resolve_checkpoint(path, CheckpointError)  # the one resolver: every format
    if kind == "safetensors":
        state = {k: v for f in files for k, v in _load_safetensors(f).items()}
    else:
        state = {k: v for f in files for k, v in _torch_state(f).items()}
    check_finite(state, f"checkpoint {path}")  # NaN/Inf weights (a diverged fine-tune) never enter
    return state


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise CheckpointError(f"cannot read {file} as safetensors (truncated or damaged): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of one torch file (``torch.load(weights_only=True)``)."""
    obj = read_torch(path, CheckpointError)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return {_strip(k): v for k, v in obj.items()}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def export_model(model: Classifier, backbone: Backbone, meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write a self-contained model directory: the classifier (``model.safetensors``),
    its metadata (``wiseft.json``) and the full pretrained model with these encoder
    weights in the family's own format (open_clip file, HF or sentence-transformers
    directory). ``backbone.encoder`` is set to ``model.encoder``'s weights."""
    out_dir = Path(out_dir)
    check_finite(model.state_dict(), f"model to export to {out_dir}")  # before anything is written
    if model.encoder is not backbone.encoder:
        backbone.encoder.load_state_dict(model.encoder.state_dict())
    with atomic_path(out_dir, directory=True) as tmp:  # an old export is replaced in one step
        native = backbone.export(tmp)
        spec = backbone.spec.model_dump()
        if backbone.extras.get("quick_gelu") is not None:  # the activation the weights were built with,
            spec["quick_gelu"] = backbone.extras["quick_gelu"]  # which a reload from a file cannot look up by tag
        meta = {**meta, "backbone": spec, "native": native.name, "logit_scale": backbone.logit_scale}
        save_state(tmp / MODEL_FILE, model.state_dict(), meta)
        atomic_write(tmp / META_FILE, json.dumps(meta, indent=2))
    return out_dir


def load_model(path: str | Path) -> tuple[Classifier, Backbone, dict[str, Any]]:
    """Load an exported model directory back: (classifier, backbone, metadata)."""
    path = Path(path)
    if not (path / META_FILE).exists():
        raise CheckpointError(f"{path} is not a wiseft model directory (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text())
    backbone = load_backbone(exported_spec(meta["backbone"], path / meta["native"]))  # the family knows the field
    state = load_state(path / MODEL_FILE)
    head = torch.nn.Linear(state["head.weight"].shape[1], state["head.weight"].shape[0])
    model = Classifier(backbone.encoder, head)
    model.load_state_dict(state)
    model.eval()
    return model, backbone, meta

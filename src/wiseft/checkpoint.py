"""Checkpoints that describe themselves: safetensors weights with JSON metadata,
written atomically; export to the backbone family's own format; reading state
dicts written by other tools (open_clip training checkpoints, Hugging Face dirs)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .backbones.base import Backbone, BackboneSpec, load_backbone, shareless
from .heads import Classifier
from .merge_files import is_safetensors_checkpoint, safetensors_files

MODEL_FILE = "model.safetensors"
META_FILE = "wiseft.json"
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message names the file and what is wrong."""


def save_state(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Write a state dict as safetensors with ``meta`` as JSON in the header, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(shareless(state), tmp, metadata={"wiseft": json.dumps(meta or {})})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The wiseft metadata of a safetensors file or model directory ({} if none)."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("wiseft", "{}"))


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a wiseft model dir, a Hugging Face dir (single or sharded), a
    .safetensors file, or a torch file (read with ``weights_only=True``); ``state_dict``
    and ``model`` wrappers and ``module.``/``_orig_mod.`` prefixes are removed."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_safetensors_checkpoint(path):  # a file, a shard index, or a directory with either
        return {k: v for f in safetensors_files(path) for k, v in load_file(str(f)).items()}
    if path.is_dir():
        return _load_torch_dir(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {e}") from None
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


def _load_torch_dir(path: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face directory with torch weights, single or sharded."""
    if (path / "pytorch_model.bin").exists():
        return load_state(path / "pytorch_model.bin")
    index = path / "pytorch_model.bin.index.json"
    if index.exists():
        files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return {k: v for f in files for k, v in load_state(path / f).items()}
    raise CheckpointError(f"{path} is a directory with no weights ({MODEL_FILE}, a *.safetensors file or "
                          "index, pytorch_model.bin or its index)")


def export_model(model: Classifier, backbone: Backbone, meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write a self-contained model directory: the classifier (``model.safetensors``),
    its metadata (``wiseft.json``) and the full pretrained model with these encoder
    weights in the family's own format (open_clip file, HF or sentence-transformers
    directory). ``backbone.encoder`` is set to ``model.encoder``'s weights."""
    out_dir = Path(out_dir)
    if model.encoder is not backbone.encoder:
        backbone.encoder.load_state_dict(model.encoder.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent if out_dir.parent.exists() else None, prefix=".export-"))
    try:
        native = backbone.export(tmp)
        spec = backbone.spec.model_dump()
        if backbone.extras.get("quick_gelu") is not None:  # the activation the weights were built with,
            spec["quick_gelu"] = backbone.extras["quick_gelu"]  # which a reload from a file cannot look up by tag
        meta = {**meta, "backbone": spec, "native": native.name, "logit_scale": backbone.logit_scale}
        save_state(tmp / MODEL_FILE, model.state_dict(), meta)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def load_model(path: str | Path) -> tuple[Classifier, Backbone, dict[str, Any]]:
    """Load an exported model directory back: (classifier, backbone, metadata)."""
    path = Path(path)
    if not (path / META_FILE).exists():
        raise CheckpointError(f"{path} is not a wiseft model directory (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text())
    spec = dict(meta["backbone"])
    native = str(path / meta["native"])
    if spec["family"] == "open_clip":
        spec["pretrained"] = native
    else:
        spec["name"] = native
    backbone = load_backbone(BackboneSpec(**spec))
    state = load_state(path / MODEL_FILE)
    head = torch.nn.Linear(state["head.weight"].shape[1], state["head.weight"].shape[0])
    model = Classifier(backbone.encoder, head)
    model.load_state_dict(state)
    model.eval()
    return model, backbone, meta

"""open_clip models: an architecture name plus a pretrained tag or a local checkpoint.

The activation follows the weights: open_clip records per pretrained tag whether it
was trained with QuickGELU (OpenAI's CLIP weights were) but builds the architecture's
default (GELU for ``ViT-B-32``) and only warns, so every feature would be off. The
tag's choice is applied here, an explicit ``quick_gelu`` overrides it, and an export
records the choice so that a reload builds the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from wiseft.backbones.base import (
    Backbone,
    BackboneSpec,
    CardFacts,
    Origin,
    image_collate,
    looks_like_hub_id,
    register_backbone,
    require,
)
from wiseft.io import shareless

EXPORT_FILE = "open_clip_model.safetensors"


HUB_PREFIX = "hf-hub:"


def open_clip_origin(spec: BackboneSpec) -> Origin:
    """The Hub repository of an ``hf-hub:`` name, or the one open_clip's own pretrained
    config names for an architecture and tag (``get_pretrained_cfg(...)["hf_hub"]``:
    ``ViT-B-32`` / ``openai`` is ``timm/vit_base_patch32_clip_224.openai``); nothing for a
    local file or ``local-dir:``."""
    if spec.name.startswith(HUB_PREFIX):
        repo = spec.name[len(HUB_PREFIX):]
        return Origin(repo if looks_like_hub_id(repo) else None)
    if ":" in spec.name or not spec.pretrained:
        return Origin()
    try:
        open_clip = require("open_clip", "openclip")
    except ImportError:
        return Origin()
    hub = (open_clip.get_pretrained_cfg(spec.name.replace("/", "-"), spec.pretrained) or {}).get("hf_hub") or ""
    repo = "/".join(hub.strip("/").split("/")[:2])  # some entries name a file in the repository
    return Origin(repo if repo and looks_like_hub_id(repo) else None)


def open_clip_loading(spec: dict[str, Any], native: str) -> str:
    """open_clip's own calls that load an exported file (with their imports)."""
    gelu = ", force_quick_gelu=True" if spec.get("quick_gelu") else ""
    create = f"model, _, preprocess = open_clip.create_model_and_transforms({spec['name']!r}"
    if ":" in spec["name"]:  # an hf-hub: or local-dir: name ignores ``pretrained``: its weights are loaded after
        return ("import open_clip\nimport safetensors.torch\n\n"
                f"{create}, load_weights=False)\nmodel.load_state_dict(safetensors.torch.load_file({native!r}))")
    return f"import open_clip\n\n{create}, pretrained={native!r}{gelu})"


@register_backbone("open_clip", settings=("quick_gelu",), export_field="pretrained", wraps="open_clip.",
                   card=CardFacts(library="open_clip", modality="image", tags=("open_clip", "clip"),
                                  origin=open_clip_origin, loading=open_clip_loading))
def load_open_clip(spec: BackboneSpec, model: torch.nn.Module | None = None) -> Backbone:
    """open_clip ``create_model_and_transforms(name, pretrained)``; the image tower is
    the encoder. ``pretrained`` may be a tag, a local .safetensors/.pt/.bin file, or an
    open_clip training checkpoint (``state_dict`` entry, ``module.`` prefixes). Given
    ``model`` (an open_clip CLIP in memory), that model seen as a backbone: ``name`` (its
    architecture) gives the tokenizer, the model's own preprocessing config the transforms."""
    from wiseft.backbones.base import BackboneError
    from wiseft.io import check_torch_file

    open_clip = require("open_clip", "openclip")
    quick_gelu = resolve_quick_gelu(spec)
    if model is None:
        check_torch_file(spec.pretrained, BackboneError)  # a pickle that would run code: a named error first
        model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
            spec.name, pretrained=spec.pretrained or None, **quick_gelu_kwargs(spec.name, quick_gelu)
        )
        model.eval()
    else:  # the transforms create_model_and_transforms gives this model
        transform = require("open_clip.transform", "openclip")
        pp_cfg = transform.PreprocessCfg(**model.visual.preprocess_cfg)
        preprocess_train = transform.image_transform_v2(pp_cfg, is_train=True)
        preprocess_eval = transform.image_transform_v2(pp_cfg, is_train=False)
    tokenizer = open_clip.get_tokenizer(spec.name)

    @torch.no_grad()
    def encode_text(texts):
        return model.encode_text(tokenizer(list(texts)).to(_device_of(model)))

    def export(out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / EXPORT_FILE
        meta = {"open_clip_model": spec.name}
        if quick_gelu is not None:
            meta["quick_gelu"] = "true" if quick_gelu else "false"
        save_file(shareless(model.state_dict()), str(path), metadata=meta)
        return path

    scale = spec.logit_scale if spec.logit_scale is not None else model.logit_scale.detach().exp().item()
    return Backbone(
        spec=spec, modality="image", encoder=model.visual, encode_text=encode_text,
        logit_scale=scale, transform_train=preprocess_train, transform_eval=preprocess_eval,
        collate=image_collate, export=export, extras={"model": model, "quick_gelu": quick_gelu},
    )


def resolve_quick_gelu(spec: BackboneSpec) -> bool | None:
    """Whether ``spec``'s model uses QuickGELU: the explicit ``spec.quick_gelu``, else the
    pretrained tag's own config (``open_clip.get_pretrained_cfg``), else the
    architecture's config (``-quickgelu`` names say True); None when open_clip knows
    neither (a hub or local-directory model keeps its own config)."""
    if spec.quick_gelu is not None:
        return spec.quick_gelu
    open_clip = require("open_clip", "openclip")
    if spec.pretrained and ":" not in spec.name:  # a hub or local-dir name ignores ``pretrained``
        tag_cfg = open_clip.get_pretrained_cfg(spec.name.replace("/", "-"), spec.pretrained)
        if tag_cfg:  # a known tag of this architecture (a file path never is)
            return bool(tag_cfg.get("quick_gelu", False))
    arch = _model_config(spec.name)
    return None if arch is None else bool(arch.get("quick_gelu", False))


def quick_gelu_kwargs(name: str, quick_gelu: bool | None) -> dict[str, Any]:
    """``create_model`` arguments that build ``name`` with that activation: the
    ``force_quick_gelu`` flag for QuickGELU (so open_clip's own tag check agrees), a
    ``quick_gelu=False`` config override unless the architecture's config already says
    GELU."""
    if quick_gelu is None:
        return {}
    if quick_gelu:
        return {"force_quick_gelu": True}
    arch = _model_config(name)
    return {} if arch is not None and not arch.get("quick_gelu", False) else {"quick_gelu": False}


def _model_config(name: str) -> dict | None:
    open_clip = require("open_clip", "openclip")
    if ":" in name:  # hf-hub: / local-dir: schemas carry their own config
        return None
    try:
        return open_clip.get_model_config(name.replace("/", "-"))  # open_clip reads 'ViT-B/32' as 'ViT-B-32'
    except Exception:  # noqa: BLE001 - an unknown name is reported when the model is built
        return None


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device

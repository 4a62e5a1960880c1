"""open_clip models: an architecture name plus a pretrained tag or a local checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .base import Backbone, BackboneSpec, image_collate, register_backbone, require, shareless

EXPORT_FILE = "open_clip_model.safetensors"


@register_backbone("open_clip")
def load_open_clip(spec: BackboneSpec) -> Backbone:
    """open_clip ``create_model_and_transforms(name, pretrained)``; the image tower is
    the encoder. ``pretrained`` may be a tag, a local .safetensors/.pt/.bin file, or an
    open_clip training checkpoint (``state_dict`` entry, ``module.`` prefixes)."""
    open_clip = require("open_clip", "openclip")
    model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
        spec.name, pretrained=spec.pretrained or None
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.name)

    @torch.no_grad()
    def encode_text(texts):
        return model.encode_text(tokenizer(list(texts)).to(_device_of(model)))

    def export(out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / EXPORT_FILE
        save_file(shareless(model.state_dict()), str(path), metadata={"open_clip_model": spec.name})
        return path

    scale = spec.logit_scale if spec.logit_scale is not None else model.logit_scale.detach().exp().item()
    return Backbone(
        spec=spec, modality="image", encoder=model.visual, encode_text=encode_text,
        logit_scale=scale, transform_train=preprocess_train, transform_eval=preprocess_eval,
        collate=image_collate, export=export, extras={"model": model},
    )


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device

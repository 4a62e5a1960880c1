"""Hugging Face CLIP-family models (CLIPModel, SiglipModel) from a hub id or a local directory."""

from __future__ import annotations

from pathlib import Path

import torch

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

EXPORT_DIR = "hf_model"


class HFImageEncoder(torch.nn.Module):
    """The vision tower (and projection, where the model has one) of a CLIP-family
    model: pixel values -> image embeddings, as ``get_image_features`` computes them."""

    def __init__(self, vision_model: torch.nn.Module, projection: torch.nn.Module | None):
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled


def hf_origin(spec: BackboneSpec) -> Origin:
    """A Hub id as given, or a local model directory (whose README.md may carry its license)."""
    if Path(spec.name).is_dir():
        return Origin(local_dir=Path(spec.name))
    return Origin(spec.name if looks_like_hub_id(spec.name) else None)


def hf_loading(spec: dict, native: str) -> str:
    """transformers' own calls that load an exported directory (with their import)."""
    return (f"import transformers\n\nmodel = transformers.AutoModel.from_pretrained({native!r})\n"
            f"processor = transformers.AutoProcessor.from_pretrained({native!r})")


@register_backbone("hf_clip", settings=(), wraps="transformers.",
                   card=CardFacts(library="transformers", modality="image", origin=hf_origin, loading=hf_loading))
def load_hf_clip(spec: BackboneSpec, model: torch.nn.Module | None = None) -> Backbone:
    """``AutoModel.from_pretrained(name)`` for a CLIP or SigLIP checkpoint; given ``model``
    (a CLIPModel or SiglipModel in memory), that model seen as a backbone, its tokenizer
    and image processor read from ``name``."""
    transformers = require("transformers", "hf")
    if model is None:
        model = transformers.AutoModel.from_pretrained(spec.name)
        model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec.name)
    processor = transformers.AutoImageProcessor.from_pretrained(spec.name)
    encoder = HFImageEncoder(model.vision_model, getattr(model, "visual_projection", None))
    siglip = "siglip" in model.config.model_type
    max_length = spec.max_length or getattr(model.config.text_config, "max_position_embeddings", 77)

    @torch.no_grad()
    def encode_text(texts):
        tok = tokenizer(list(texts), padding="max_length" if siglip else True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        device = next(model.parameters()).device
        out = model.get_text_features(**{k: v.to(device) for k, v in tok.items()})
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def export(out_dir: Path) -> Path:
        path = out_dir / EXPORT_DIR
        model.save_pretrained(path)  # the vision tower is shared with ``encoder``
        tokenizer.save_pretrained(path)
        processor.save_pretrained(path)
        return path

    train_tf, eval_tf = _transforms(processor)
    scale = spec.logit_scale if spec.logit_scale is not None else model.logit_scale.detach().exp().item()
    return Backbone(
        spec=spec, modality="image", encoder=encoder, encode_text=encode_text, logit_scale=scale,
        transform_train=train_tf, transform_eval=eval_tf, collate=image_collate, export=export,
        extras={"model": model, "processor": processor},
    )


def _transforms(processor):
    """torchvision train/eval transforms equal to the processor's resize, crop and
    normalisation; training adds RandomResizedCrop(scale=(0.9, 1.0)) as open_clip does."""
    T = require("torchvision.transforms", "hf")
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    if "height" in size:
        side = (size["height"], size["width"])
    else:
        side = (size["shortest_edge"],) * 2
    resize = processor.size.get("shortest_edge", side[0]) if hasattr(processor.size, "get") else side[0]
    norm = T.Normalize(processor.image_mean, processor.image_std)
    to_rgb = T.Lambda(lambda im: im.convert("RGB"))
    bicubic = T.InterpolationMode.BICUBIC
    train = T.Compose([to_rgb, T.RandomResizedCrop(side, scale=(0.9, 1.0), interpolation=bicubic),
                       T.ToTensor(), norm])
    if getattr(processor, "do_center_crop", False):
        evaluate = T.Compose([to_rgb, T.Resize(resize, interpolation=bicubic), T.CenterCrop(side),
                              T.ToTensor(), norm])
    else:
        evaluate = T.Compose([to_rgb, T.Resize(side, interpolation=bicubic), T.ToTensor(), norm])
    return train, evaluate

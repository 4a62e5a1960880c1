"""Zero-shot head (prompt ensembling) and the classifier WiSE-FT fine-tunes and mixes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .backbones.base import Backbone
from .files import write_with
from .templates import templates_hash

log = logging.getLogger("wiseft")


@torch.no_grad()
def zeroshot_weights(encode_text, classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """(num_classes, dim) class embeddings: every prompt embedding L2-normalised,
    averaged over templates per class, and re-normalised. Prompts go in batches
    across classes, so a 1000-class, 80-template set is 313 calls, not 1000."""
    prompts = [t.format(c) for c in classnames for t in templates]
    chunks = [encode_text(prompts[i:i + batch_size]).float() for i in range(0, len(prompts), batch_size)]
    emb = F.normalize(torch.cat(chunks), dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def head_cache_dir() -> Path:
    """Where zero-shot heads are cached: $WISEFT_CACHE or ~/.cache/wiseft, then /heads."""
    return Path(os.environ.get("WISEFT_CACHE", Path.home() / ".cache" / "wiseft")) / "heads"


def zeroshot_head(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], *,
                  cache: bool = True, batch_size: int = 256) -> torch.nn.Linear:
    """A linear head whose rows are the zero-shot class embeddings times the model's
    logit scale (bias zero), cached on disk by a content hash of (model, class names,
    templates).

    Example:
        >>> head = zeroshot_head(bb, ["cat", "dog"], get_templates("openai_imagenet"))
    """
    key = hashlib.sha256(json.dumps(
        [backbone.fingerprint(), list(classnames), templates_hash(templates), backbone.logit_scale]
    ).encode()).hexdigest()[:24]
    path = head_cache_dir() / f"{key}.safetensors"
    weight = _read_cached_head(path, len(classnames)) if cache else None
    if weight is None:
        weight = zeroshot_weights(backbone.encode_text, classnames, templates, batch_size)
        weight = weight * backbone.logit_scale
        if cache:
            write_with(path, lambda tmp: save_file({"weight": weight.contiguous()}, str(tmp)))
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
    return head


def _read_cached_head(path: Path, num_classes: int) -> torch.Tensor | None:
    """A cached head's weight, or None when there is none or it is damaged (truncated,
    wrong shape, non-finite): a damaged entry is removed and rebuilt, never trusted."""
    if not path.exists():
        return None
    try:
        weight = load_file(str(path))["weight"]
        if weight.ndim != 2 or weight.shape[0] != num_classes or not torch.isfinite(weight).all():
            raise ValueError(f"shape {tuple(weight.shape)} for {num_classes} classes, or non-finite values")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own type for a truncated file
        log.warning("head cache %s is damaged (%s); rebuilding it", path, str(e).splitlines()[0] if str(e) else
                    type(e).__name__)
        path.unlink(missing_ok=True)
        return None
    return weight


class Classifier(torch.nn.Module):
    """Encoder + linear head; features are L2-normalised before the head, so
    ``forward`` gives logit_scale * cosine similarity at initialisation."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def features(self, inputs) -> torch.Tensor:
        return F.normalize(self.encoder(inputs), dim=-1)

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.features(inputs))

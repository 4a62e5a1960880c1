"""The one small interface every backbone family implements, and its registry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_serializer, model_validator

from ..errors import WiseftError
from ..registry import Registry


class BackboneSpec(BaseModel):
    """Where a pretrained model comes from.

    ``family`` picks the adapter; ``name`` is an open_clip architecture
    (``ViT-B-32``), a Hugging Face hub id or a local directory; ``pretrained`` is an
    open_clip tag (``openai``, ``laion2b_s34b_b79k``) or a local checkpoint file.
    ``quick_gelu`` (open_clip only) overrides the activation; unset, it follows the
    pretrained tag's own config (OpenAI's weights were trained with QuickGELU), else the
    architecture's (``ViT-B-32-quickgelu``). Set it for a local checkpoint file whose
    weights were trained with QuickGELU.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str  # a registered backbone family: open_clip, hf_clip, sentence_transformer, or one added
    name: str
    pretrained: str | None = None
    logit_scale: float | None = None  # override; text encoders have none of their own
    max_length: int | None = None  # text inputs: tokens kept per input
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    quick_gelu: bool | None = None  # open_clip: QuickGELU activation; None: the tag's (else the architecture's) choice

    @field_validator("family")
    @classmethod
    def _registered_family(cls, v: str) -> str:
        if v not in BACKBONES:  # families added with register_backbone count too
            raise ValueError(BACKBONES.unknown(v))
        return v

    @model_validator(mode="after")
    def _quick_gelu_is_open_clip(self) -> "BackboneSpec":
        if self.quick_gelu is not None and self.family in ("hf_clip", "sentence_transformer"):
            raise ValueError(f"quick_gelu is an open_clip setting; family {self.family!r} takes its "
                             "activation from the model's own config")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # unset, quick_gelu is left out, so specs (and the hashes and records made from
        # them) written before the field existed read the same
        out = handler(self)
        if self.quick_gelu is None:
            out.pop("quick_gelu", None)
        return out


@dataclass
class Backbone:
    """A pretrained model seen through the parts WiSE-FT needs.

    ``encoder`` maps a collated batch of inputs to features; ``encode_text`` embeds
    prompts for the zero-shot head; ``transform_train``/``transform_eval`` turn one raw
    input (a PIL image or a string) into what ``collate`` stacks into a batch.
    ``export`` writes the full pretrained model, with ``encoder``'s current weights, in
    the family's own format so its own loading call reads it back.
    """

    spec: BackboneSpec
    modality: Literal["image", "text"]
    encoder: torch.nn.Module
    encode_text: Callable[[Sequence[str]], torch.Tensor]
    logit_scale: float
    transform_train: Callable[[Any], Any]
    transform_eval: Callable[[Any], Any]
    collate: Callable[[list], Any]
    export: Callable[[Path], Path]
    extras: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A content hash of the spec and a sample of the text-side weights, so that
        caches built on one set of weights are never reused for another."""
        h = hashlib.sha256(self.spec.model_dump_json().encode())
        with torch.no_grad():
            probe = self.encode_text(["wiseft fingerprint"]).float().cpu()
        h.update(json.dumps([round(v, 5) for v in probe.flatten()[:64].tolist()]).encode())
        return h.hexdigest()[:16]


BACKBONES: Registry = Registry("backbone family", [f"wiseft.backbones.{m}" for m in
                                                    ("hf_clip", "open_clip_backbone", "text")])
register_backbone = BACKBONES.register  # decorator: a loader ``fn(spec) -> Backbone`` for a family
list_backbones = BACKBONES.names


def load_backbone(spec: BackboneSpec | dict) -> Backbone:
    """Load a pretrained backbone from its spec.

    Example:
        >>> bb = load_backbone({"family": "open_clip", "name": "ViT-B-32", "pretrained": "openai"})
    """
    if isinstance(spec, dict):
        spec = BackboneSpec(**spec)
    loader = BACKBONES.get(spec.family)
    try:
        return loader(spec)
    except ImportError:
        raise
    except (RuntimeError, OSError, ValueError) as e:  # unknown names, missing files, no network
        detail = str(e) if len(str(e)) < 400 else str(e)[:400] + " ..."
        where = f" with pretrained {spec.pretrained!r}" if spec.pretrained else ""
        raise BackboneError(f"cannot load {spec.family} model {spec.name!r}{where}: {detail}") from e


class BackboneError(WiseftError):
    """A pretrained model cannot be loaded; the message names the model and why."""


def require(module: str, extra: str):
    """Import an optional dependency, or fail naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for this backbone: pip install 'wiseft[{extra}]' ({e})") from e


def image_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (tensor, label) pairs."""
    xs, ys = zip(*batch)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def shareless(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: contiguous, and no two entries sharing storage."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        v = v.detach().contiguous()
        key = v.untyped_storage().data_ptr() if v.numel() else id(v)
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out

"""Where a pretrained model comes from: the backbone section of a config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_serializer, model_validator

from wiseft.core import BACKBONES

# Spec fields that only some families read: a family reads one only if it declares it
# (``register_backbone(family, settings=(...))``); a family that declares no settings
# reads them all. Each with what a family that does not take it does instead.
FAMILY_SETTINGS = {"quick_gelu": "takes its activation from the model's own config"}


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
    def _family_takes_its_settings(self) -> "BackboneSpec":
        takes = BACKBONES.info(self.family).get("settings")
        for field, instead in FAMILY_SETTINGS.items():
            if getattr(self, field) is not None and takes is not None and field not in takes:
                raise ValueError(f"{field} is {_owners(field)} setting; family {self.family!r} {instead}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # unset, quick_gelu is left out, so specs (and the hashes and records made from
        # them) written before the field existed read the same
        out = handler(self)
        if self.quick_gelu is None:
            out.pop("quick_gelu", None)
        return out


def _owners(field: str) -> str:
    """'an open_clip' or 'an open_clip or my_family': the families that declare ``field``."""
    owners = " or ".join(f for f in BACKBONES.names() if field in (BACKBONES.info(f).get("settings") or ()))
    if not owners:
        return "no registered family's"
    return ("an " if owners[0] in "aeiou" else "a ") + owners

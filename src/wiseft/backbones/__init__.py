"""Adapters from pretrained models to the encoders WiSE-FT needs; one file per family."""

from .base import Backbone, BackboneSpec, list_backbones, load_backbone, register_backbone

__all__ = ["Backbone", "BackboneSpec", "list_backbones", "load_backbone", "register_backbone"]

"""Adapters from pretrained models to the encoders WiSE-FT needs; one file per family."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "base": ["Backbone", "BackboneError", "card_facts", "CardFacts", "exported_spec", "list_backbones",
             "load_backbone", "looks_like_hub_id", "Origin", "register_backbone", "require", "wrap_backbone",
             "wrapped_prefixes"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)

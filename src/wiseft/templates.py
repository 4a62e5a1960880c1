"""Prompt template sets, as data. A template is a format string with one ``{}``
for the class name. Look sets up by name with ``get_templates``; add one with
``register_templates``.

The OpenAI sets are those published with CLIP (Radford et al. 2021), the 80
ImageNet prompts used by the WiSE-FT paper and its reference implementation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

OPENAI_IMAGENET = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

# The 7-prompt subset CLIP's authors found best on ImageNet.
OPENAI_IMAGENET_SIMPLE = (
    'itap of a {}.',
    'a bad photo of the {}.',
    'a origami {}.',
    'a photo of the large {}.',
    'a {} in a video game.',
    'art of the {}.',
    'a photo of the small {}.',
)

SIMPLE = ("a photo of a {}.",)

NEWS = (
    "This news article is about {}.",
    "A news story about {}.",
    "The topic of this article is {}.",
    "{} news.",
)

_REGISTRY: dict[str, tuple[str, ...]] = {}


def register_templates(name: str, templates: Sequence[str]) -> None:
    """Add a template set under ``name``; each template must hold exactly one ``{}``."""
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} of set {name!r} must contain exactly one '{{}}'")
    _REGISTRY[name] = tuple(templates)


def list_templates() -> list[str]:
    """Names of the registered template sets."""
    return sorted(_REGISTRY)


def get_templates(name_or_list: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name, or a literal list of templates checked and returned."""
    if isinstance(name_or_list, str):
        if name_or_list not in _REGISTRY:
            raise KeyError(f"unknown template set {name_or_list!r}; known: {', '.join(list_templates())}")
        return _REGISTRY[name_or_list]
    register_templates("<inline>", name_or_list)
    return _REGISTRY.pop("<inline>")


def templates_hash(templates: Sequence[str]) -> str:
    """A short content hash of a template list, for provenance and caches."""
    return hashlib.sha256(json.dumps(list(templates)).encode()).hexdigest()[:16]


register_templates("openai_imagenet", OPENAI_IMAGENET)
register_templates("openai_imagenet_simple", OPENAI_IMAGENET_SIMPLE)
register_templates("simple", SIMPLE)
register_templates("news", NEWS)

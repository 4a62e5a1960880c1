"""Prompt template sets, as data, in one registry (``TEMPLATES``). A template is a
format string with one slot for the class name: ``{}`` (the name as it is), or
``{with_article}`` (the name after "a" or "an", underscores as spaces: the WiSE-FT
reference implementation's ``append_proper_article``, used by its FMoW prompts).
``fill(template, classname)`` makes one prompt. Look sets up by name with
``get_templates``; add one with ``register_templates``.

Every shipped set lives in this module, so any of them can be named in a config
without first importing the dataset that uses it. The OpenAI sets are those
published with CLIP (Radford et al. 2021): the 80 ImageNet prompts used by the
WiSE-FT paper and its reference implementation, and the per-dataset sets; the FMoW
and iWildCam sets are the WiSE-FT reference implementation's (``src/templates``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from wiseft.core.errors import WiseftError
from wiseft.core.registry import Registry

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

# The 18 CIFAR prompts published with CLIP (Radford et al. 2021).
CIFAR_TEMPLATES = tuple(
    t.format(d) for d in ("a", "the") for t in (
        "a photo of {} {{}}.", "a blurry photo of {} {{}}.", "a black and white photo of {} {{}}.",
        "a low contrast photo of {} {{}}.", "a high contrast photo of {} {{}}.", "a bad photo of {} {{}}.",
        "a good photo of {} {{}}.", "a photo of {} small {{}}.", "a photo of {} big {{}}.")
)

# The transfer sets' and WILDS sets' prompts (CLIP's and the WiSE-FT paper's).
DTD = ("a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
       "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
       "a photo of the {} thing.", "a photo of the {} object.")
FOOD101 = ("a photo of {}, a type of food.",)
SUN397 = ("a photo of a {}.", "a photo of the {}.")
STANFORD_CARS = ("a photo of a {}.", "a photo of the {}.", "a photo of my {}.",
                 "i love my {}!", "a photo of my dirty {}.", "a photo of my clean {}.",
                 "a photo of my new {}.", "a photo of my old {}.")
WITH_ARTICLE = "{with_article}"  # the class name after 'a' or 'an', underscores as spaces

# The WiSE-FT reference implementation's 16 FMoW prompts (src/templates/fmow_template.py),
# used with its underscored class names: ``{}`` keeps the underscores, ``{with_article}``
# does not, exactly as the reference writes them.
FMOW = ("satellite photo of a {}.", "aerial photo of a {}.",
        "satellite photo of {with_article}.", "aerial photo of {with_article}.",
        *(f"{kind} photo of a {{}} in {region}." for region in ("asia", "africa", "the americas", "europe",
                                                                "oceania") for kind in ("satellite", "aerial")),
        "a photo of a {}.", "{}.")
IWILDCAM = ("a photo of {}.", "{} in the wild.")

TEMPLATES: Registry[tuple[str, ...]] = Registry("template set")


def with_article(classname: str) -> str:
    """``airport_hangar`` -> ``an airport hangar``: the reference implementation's
    ``append_proper_article`` (lower-case vowels take "an")."""
    name = classname.replace("_", " ")
    return ("an " if name[:1] in tuple("aeiou") else "a ") + name


def fill(template: str, classname: str) -> str:
    """One prompt: ``template`` with its slot filled by ``classname``."""
    if WITH_ARTICLE in template:
        return str.format(str(template), with_article=with_article(classname))
    return str.format(str(template), classname)


class Template(str):
    """A template with the ``{with_article}`` slot: ``format(classname)`` fills it as
    ``fill`` does, so code that formats plain templates with ``t.format(c)`` makes the
    same prompts from these. Compares, hashes and serialises as its text."""

    def format(self, *args, **kwargs) -> str:  # type: ignore[override]
        if len(args) == 1 and not kwargs:
            return fill(self, args[0])
        return str.format(str(self), *args, **kwargs)


def _as_template(template: str) -> str:
    return Template(template) if WITH_ARTICLE in template else template


def template_problem(template: object) -> str | None:
    """Why ``template`` cannot be used as a prompt template, or None when it can."""
    if not isinstance(template, str):
        return f"template {template!r} must be a string"
    if template.count("{}") + template.count(WITH_ARTICLE) != 1:
        return f"template {template!r} must contain exactly one '{{}}' (or one '{WITH_ARTICLE}')"
    try:
        fill(template, "x")
    except (IndexError, KeyError, ValueError):
        return f"template {template!r} must contain exactly one '{{}}' and no other braces"
    return None


class PromptError(WiseftError):
    """Class names or templates that cannot make a zero-shot head (the message says which)."""


def classnames_problem(classnames: object, where: str = "{}") -> tuple[int | None, str] | None:
    """Why ``classnames`` cannot name a head's classes, as (index or None, message), or None:
    not a list of strings, empty, an empty name, or a name listed twice (``where`` formats
    the index of the first listing, e.g. ``data.classnames.{}``). The config and the
    library check the same rule."""
    if isinstance(classnames, (str, bytes)) or not hasattr(classnames, "__iter__"):
        return None, f"give a list of class names, not {type(classnames).__name__} {classnames!r}"
    classnames = list(classnames)
    if not classnames:
        return None, "no class names; give at least one"
    first: dict[str, int] = {}
    for i, c in enumerate(classnames):
        if not isinstance(c, str):
            return i, f"class name {c!r} must be a string"
        if not c.strip():
            return i, "empty class name"
        if c in first:
            return i, f"class {c!r} is listed twice (also at {where.format(first[c])})"
        first[c] = i
    return None


def check_prompts(classnames: Sequence[str], templates: str | Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """The class names and templates a zero-shot head is built from, checked as ``wiseft run``
    checks its config (PromptError naming the first problem); ``templates`` may name a set.

    Example:
        >>> check_prompts(["cat", "dog", "cat"], "simple")
        Traceback (most recent call last):
        PromptError: classnames[2]: class 'cat' is listed twice (also at classnames[0])
    """
    problem = classnames_problem(classnames, "classnames[{}]")
    if problem:
        i, msg = problem
        raise PromptError(f"classnames{'' if i is None else f'[{i}]'}: {msg}")
    try:
        return list(classnames), get_templates(templates)
    except (KeyError, ValueError) as e:
        raise PromptError(f"templates: {e.args[0] if e.args else e}") from None


def register_templates(name: str, templates: Sequence[str]) -> None:
    """Add a template set under ``name``; each template must hold exactly one ``{}``."""
    if isinstance(templates, str):
        raise ValueError(f"template set {name!r} must be a list of templates, not one string")
    for t in templates:
        problem = template_problem(t)
        if problem:
            raise ValueError(f"{problem} (set {name!r})")
    if not templates:
        raise ValueError(f"template set {name!r} is empty")
    TEMPLATES.add(name, tuple(_as_template(t) for t in templates))


def list_templates() -> list[str]:
    """Names of the registered template sets."""
    return TEMPLATES.names()


def get_templates(name_or_list: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name, or a literal list of templates checked and returned."""
    if isinstance(name_or_list, str):
        return TEMPLATES.get(name_or_list)
    for t in name_or_list:
        problem = template_problem(t)
        if problem:
            raise ValueError(problem)
    if not name_or_list:
        raise ValueError("give at least one template")
    return tuple(_as_template(t) for t in name_or_list)


def templates_hash(templates: Sequence[str]) -> str:
    """A short content hash of a template list, for provenance and caches."""
    return hashlib.sha256(json.dumps(list(templates)).encode()).hexdigest()[:16]


for _name, _set in {"openai_imagenet": OPENAI_IMAGENET, "openai_imagenet_simple": OPENAI_IMAGENET_SIMPLE,
                    "simple": SIMPLE, "news": NEWS, "cifar": CIFAR_TEMPLATES, "dtd": DTD, "food101": FOOD101,
                    "sun397": SUN397, "stanford_cars": STANFORD_CARS, "fmow": FMOW,
                    "iwildcam": IWILDCAM}.items():
    register_templates(_name, _set)
del _name, _set

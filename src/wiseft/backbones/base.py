"""The one small interface every backbone family implements, and its registry."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence

import torch

from wiseft.config import BackboneSpec
from wiseft.core import BACKBONES, WiseftError


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


list_backbones = BACKBONES.names


class Origin(NamedTuple):
    """Where a spec's pretrained weights come from, as far as is known without a network:
    ``hub_id``, the Hugging Face Hub model they are (None when unknown: a local file, an
    open_clip tag the library names no Hub repository for), and ``local_dir``, the model
    directory they are read from (whose own README.md may say their license), or None."""

    hub_id: str | None = None
    local_dir: Path | None = None


@dataclass(frozen=True)
class CardFacts:
    """What a family declares for the model card of an export: ``library``, the Hub's
    ``library_name`` of the folder its ``Backbone.export`` writes (``open_clip``,
    ``transformers``, ``sentence-transformers``); ``modality`` of its inputs; ``tags``
    for the Hub; ``origin(spec)``, where a spec's weights come from; ``loading(spec,
    native)``, the library's own calls that load the exported ``native`` folder or file,
    imports included (``spec`` as the export's metadata holds it)."""

    library: str | None = None
    modality: Literal["image", "text"] | None = None
    tags: tuple[str, ...] = ()
    origin: Callable[[BackboneSpec], Origin] | None = None
    loading: Callable[[Mapping[str, Any], str], str] | None = None


def register_backbone(family: str, *, settings: Sequence[str] | None = None,
                      export_field: Literal["name", "pretrained"] = "name",
                      card: CardFacts | None = None, wraps: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: a loader ``fn(spec) -> Backbone`` for ``family``, with what the family
    declares: ``settings``, the family-specific spec fields it reads (``quick_gelu``; a
    config setting one the family does not declare is an error; None, the default, reads
    them all), ``export_field``, the spec field that takes the path ``Backbone.export``
    returns when an exported model is loaded back, ``card``, what an export's model card
    says of the family (:class:`CardFacts`; None: nothing beyond the records), and
    ``wraps``, the module prefix of the model classes the loader also takes in memory
    (``fn(spec, model)``: see :func:`wrap_backbone`).

    Example:
        >>> @register_backbone("my_clip", settings=())
        ... def load_my_clip(spec: BackboneSpec) -> Backbone: ...
    """
    return BACKBONES.register(family, settings=None if settings is None else tuple(settings),
                              export_field=export_field, card=card or CardFacts(),
                              **({"wraps": wraps} if wraps else {}))


def card_facts(family: str) -> CardFacts:
    """What ``family`` declared for model cards (:class:`CardFacts`; empty for a family
    that declared nothing or is not registered)."""
    if family not in BACKBONES:
        return CardFacts()
    return BACKBONES.info(family).get("card") or CardFacts()


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hugging Face Hub model id (``org/model``, or a
    legacy ``model``) and is no local path that exists."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name and not Path(name).exists()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")


def wrap_backbone(model: torch.nn.Module, spec: BackboneSpec | dict | None = None) -> Backbone:
    """A model in memory (an open_clip CLIP, a Hugging Face CLIPModel or SiglipModel, a
    SentenceTransformer) seen as a :class:`Backbone`, through its family's own loader
    (``loader(spec, model)``): the Backbone's modules are the model's, so training the model
    trains them. ``spec`` says where the model came from (it names the tokenizer, and what
    the records and an export say); without one the family is found from the model's class
    and the name from the model (``name_or_path``); an open_clip model needs one (its
    architecture's name).

    Example:
        >>> backbone = wrap_backbone(CLIPModel.from_pretrained("openai/clip-vit-base-patch32"))
    """
    if isinstance(spec, dict):
        spec = BackboneSpec(**spec)
    module = type(model).__module__
    family = spec.family if spec is not None else next(
        (f for f in BACKBONES.names() if module.startswith(BACKBONES.info(f).get("wraps") or "\0")), None)
    if family is None or not BACKBONES.info(family).get("wraps"):
        wrapped = sorted(f for f in BACKBONES.names() if BACKBONES.info(f).get("wraps"))
        raise BackboneError(f"a {type(model).__name__} ({module}) is not a model of a family wiseft wraps "
                            f"({', '.join(wrapped)}); pass the family's model, or wiseft's Classifier with its backbone")
    if spec is None:
        name = _model_name(model)
        if not name:
            raise BackboneError(f"cannot tell which {family} model this {type(model).__name__} is; pass its spec, "
                                f"e.g. {{'family': '{family}', 'name': ...}}")
        spec = BackboneSpec(family=family, name=name)
    try:
        return BACKBONES.get(family)(spec, model)
    except ImportError:
        raise
    except (AttributeError, RuntimeError, OSError, ValueError) as e:  # e.g. a text-only model handed to hf_clip
        raise BackboneError(f"cannot see this {type(model).__name__} as a {family} model ({spec.name}): {e}") from e


def wrapped_prefixes() -> tuple[str, ...]:
    """The module prefixes of the model classes :func:`wrap_backbone` takes (``transformers.``...)."""
    return tuple(BACKBONES.info(f)["wraps"] for f in BACKBONES.names() if BACKBONES.info(f).get("wraps"))


def _model_name(model: torch.nn.Module) -> str | None:
    """Where a model was loaded from, as its library records it: ``name_or_path`` (Hugging
    Face), or a SentenceTransformer's first module's (its transformer's) ``name_or_path``."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name and hasattr(model, "_first_module"):
        inner = getattr(model._first_module(), "auto_model", None)  # noqa: SLF001 - the library's own accessor
        name = getattr(inner, "name_or_path", None)
    return name or None


def exported_spec(spec: Mapping[str, Any], native: str | Path) -> BackboneSpec:
    """The spec that loads an exported model's native part (what ``Backbone.export``
    wrote, at ``native``) back: ``spec`` with the path in the field its family declares
    (``pretrained`` for an open_clip file, ``name`` for a model directory)."""
    spec = dict(spec)
    family = spec.get("family")
    spec[BACKBONES.info(family).get("export_field", "name") if family in BACKBONES else "name"] = str(native)
    return BackboneSpec(**spec)  # an unknown family: the spec's own error


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

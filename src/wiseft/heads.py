"""Zero-shot head (prompt ensembling) and the classifier WiSE-FT fine-tunes and mixes."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from wiseft.backbones import Backbone, exported_spec, load_backbone
from wiseft.core import check_prompts, templates_hash
from wiseft.io import (
    META_FILE,
    MODEL_FILE,
    CheckpointError,
    atomic_path,
    atomic_write,
    check_finite,
    load_state,
    save_state,
    write_with,
)
from wiseft.runtime import device_of, to_device

log = logging.getLogger("wiseft")


@torch.no_grad()
def zeroshot_weights(encode_text, classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """(num_classes, dim) class embeddings: every prompt embedding L2-normalised,
    averaged over templates per class, and re-normalised. Prompts go in batches
    across classes, so a 1000-class, 80-template set is 313 calls, not 1000. Class names
    and templates are checked as ``wiseft run`` checks them (PromptError): no duplicate or
    empty name, at least one template, each with one ``{}``; ``templates`` may name a set."""
    classnames, templates = check_prompts(classnames, templates)
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
    classnames, templates = check_prompts(classnames, templates)  # before the cache: a bad list is never looked up
    key = hashlib.sha256(json.dumps(
        [backbone.fingerprint(), list(classnames), templates_hash(templates), backbone.logit_scale]
    ).encode()).hexdigest()[:24]
    path = head_cache_dir() / f"{key}.safetensors"
    weight = _read_cached_head(path, len(classnames)) if cache else None
    if weight is None:
        weight = zeroshot_weights(backbone.encode_text, classnames, templates, batch_size)
        weight = weight * backbone.logit_scale
        if cache:
            meta = {"sha256": weight_checksum(weight)}
            write_with(path, lambda tmp: save_file({"weight": weight.contiguous()}, str(tmp), metadata=meta))
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
    return head


def weight_checksum(weight: torch.Tensor) -> str:
    """The SHA-256 of a head's weight bytes (float32, row-major): what a cache entry carries."""
    return hashlib.sha256(weight.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def _read_cached_head(path: Path, num_classes: int) -> torch.Tensor | None:
    """A cached head's weight, or None when there is none or it is damaged (truncated,
    wrong shape, non-finite, a zero row, or its content does not match the checksum it was
    written with; an entry without one predates the check): a damaged entry is removed
    and rebuilt, never trusted."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            expected = (f.metadata() or {}).get("sha256")
            weight = f.get_tensor("weight")
        if weight.ndim != 2 or weight.shape[0] != num_classes or not torch.isfinite(weight).all():
            raise ValueError(f"shape {tuple(weight.shape)} for {num_classes} classes, or non-finite values")
        if expected is None:
            raise ValueError("no checksum (written by an older wiseft)")
        if weight_checksum(weight) != expected:
            raise ValueError("its content does not match its checksum")
        if not (weight.norm(dim=1) > 0).all():  # every row is a unit vector times the logit scale
            raise ValueError("a class row is all zero")
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


class PromptClassifier(Classifier):
    """A Classifier that carries the text tower its head comes from (FLYP): the head is
    the zero-shot head of its own text tower (templates averaged, times its own logit
    scale), re-derived by :meth:`rederive_head` whenever the weights change, so WiSE-FT
    mixes both towers and the mixed model's head follows its mixed text tower.

    ``text`` maps ``tokenize(prompts)`` to prompt embeddings; None: ``encoder`` embeds
    both sides (text backbones). ``logit_scale`` is learned, stored as its log as in CLIP.
    """

    def __init__(self, encoder: torch.nn.Module, text: torch.nn.Module | None, tokenize: Callable[[list[str]], Any],
                 prompts: tuple[Sequence[str], Sequence[str]], logit_scale: float):
        classnames, templates = check_prompts(*prompts)
        super().__init__(encoder, torch.nn.Linear(1, len(classnames)))  # sized by rederive_head below
        self.text = text
        self.tokenize = tokenize
        self.classnames, self.templates = list(classnames), list(templates)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.rederive_head()

    def text_tower(self) -> torch.nn.Module:
        """The module that embeds prompts."""
        return self.encoder if self.text is None else self.text

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt embeddings (not normalised), with gradients when enabled."""
        return self.text_tower()(to_device(self.tokenize(list(prompts)), device_of(self)))

    @torch.no_grad()
    def rederive_head(self) -> None:
        """Set the head to the zero-shot head of the current text tower and logit scale
        (the tower in eval mode for the duration; each submodule's mode is restored after)."""
        tower = self.text_tower()
        modes = [(m, m.training) for m in tower.modules()]
        tower.eval()
        try:
            weight = zeroshot_weights(self.encode_prompts, self.classnames, self.templates)
        finally:
            for m, training in modes:
                m.training = training
        weight = (weight * self.logit_scale.float().exp()).to(device_of(self))
        if self.head.weight.shape != weight.shape:
            self.head = torch.nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device)
        self.head.weight.copy_(weight)
        self.head.bias.zero_()


def plain_classifier(model: Classifier) -> Classifier:
    """What an export stores: ``model`` itself, or for a :class:`PromptClassifier` its
    encoder and head as a plain Classifier (sharing them); its text tower reaches the
    family's own format through the backbone, whose modules it shares."""
    return Classifier(model.encoder, model.head) if isinstance(model, PromptClassifier) else model


def rederive_head(model: Classifier) -> None:
    """Re-derive a :class:`PromptClassifier`'s head from its text tower (after its weights
    were mixed or loaded); any other classifier's head is a weight of its own: no-op."""
    if isinstance(model, PromptClassifier):
        model.rederive_head()


def export_model(model: Classifier, backbone: Backbone, meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write a self-contained model directory: the classifier (``model.safetensors``),
    its metadata (``wiseft.json``) and the full pretrained model with these encoder
    weights in the family's own format (open_clip file, HF or sentence-transformers
    directory). ``backbone.encoder`` is set to ``model.encoder``'s weights."""
    out_dir = Path(out_dir)
    check_finite(model.state_dict(), f"model to export to {out_dir}")  # before anything is written
    if model.encoder is not backbone.encoder:
        backbone.encoder.load_state_dict(model.encoder.state_dict())
    with atomic_path(out_dir, directory=True) as tmp:  # an old export is replaced in one step
        native = backbone.export(tmp)
        spec = backbone.spec.model_dump()
        if backbone.extras.get("quick_gelu") is not None:  # the activation the weights were built with,
            spec["quick_gelu"] = backbone.extras["quick_gelu"]  # which a reload from a file cannot look up by tag
        meta = {**meta, "backbone": spec, "native": native.name, "logit_scale": backbone.logit_scale}
        save_state(tmp / MODEL_FILE, model.state_dict(), meta)
        atomic_write(tmp / META_FILE, json.dumps(meta, indent=2))
    return out_dir


def load_model(path: str | Path) -> tuple[Classifier, Backbone, dict[str, Any]]:
    """Load an exported model directory back: (classifier, backbone, metadata)."""
    path = Path(path)
    if not (path / META_FILE).exists():
        raise CheckpointError(f"{path} is not a wiseft model directory (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text())
    backbone = load_backbone(exported_spec(meta["backbone"], path / meta["native"]))  # the family knows the field
    state = load_state(path / MODEL_FILE)
    head = torch.nn.Linear(state["head.weight"].shape[1], state["head.weight"].shape[0])
    model = Classifier(backbone.encoder, head)
    model.load_state_dict(state)
    model.eval()
    return model, backbone, meta


def build_zeroshot_model(backbone: Backbone, classnames, templates, *, cache: bool = True) -> Classifier:
    """Classifier(encoder, zero-shot head) for the given classes and prompts."""
    return Classifier(backbone.encoder, zeroshot_head(backbone, classnames, templates, cache=cache))

"""FLYP, "Finetune like you pretrain" (Goyal et al. 2023, arXiv 2212.00638): fine-tune
with CLIP's own contrastive loss between each input and a prompt of its class, both
towers trained, instead of cross-entropy against a head.

Each training sample is paired with one prompt of its class, the template drawn at
random per sample (seeded by the run's seed, the epoch and the sample, like every random
transform); the loss is the symmetric cross-entropy over the batch's input-prompt
similarity matrix times the learned logit scale. The fine-tuned model is a
:class:`~wiseft.heads.PromptClassifier`: its head is the zero-shot head of its own text
tower, so WiSE-FT mixes both towers and re-derives the head from the mixed one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wiseft.backbones import Backbone, require
from wiseft.core import WiseftError
from wiseft.heads import Classifier, PromptClassifier

Tokenize = Callable[[list[str]], Any]


class FlypError(WiseftError):
    """FLYP cannot run on this model: the message names the backbone family or the model."""


def flyp_loss(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric contrastive loss over a (batch, batch) input-prompt logit matrix
    (row i: input i against every prompt; prompt i is input i's): the cross-entropy of
    the rows and of the columns against the diagonal, averaged, summed over the batch
    (the training loop weights it per sample). ``labels`` (the class labels) are unused:
    the targets are the pairing."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    rows = F.cross_entropy(logits, targets, reduction="sum")
    cols = F.cross_entropy(logits.t(), targets, reduction="sum")
    return (rows + cols) / 2


class Towers(torch.nn.Module):
    """The trainable part of a :class:`PromptClassifier` as one module: its input tower,
    its text tower and its log logit scale (shared, not copied; its head is left out),
    which FLYP and contrastive fine-tuning train. ``embed`` maps ``{"inputs": ...,
    "prompts": tokens}`` to the L2-normalised (input, text) embeddings, row i of each a
    pair. The parameters keep the classifier's names (``encoder.*``, ``text.*``,
    ``logit_scale``) so a training checkpoint's weights are the classifier's."""

    def __init__(self, classifier: PromptClassifier):
        super().__init__()
        self.encoder = classifier.encoder
        self.text = classifier.text  # None: the encoder embeds both sides
        self.logit_scale = classifier.logit_scale

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = F.normalize(self.encoder(batch["inputs"]), dim=-1)
        tower = self.encoder if self.text is None else self.text
        return inputs, F.normalize(tower(batch["prompts"]), dim=-1)


class FlypModel(Towers):
    """What FLYP trains: ``forward`` maps ``{"inputs": ..., "prompts": tokens}`` to the
    (batch, batch) input-prompt logit matrix of the micro-batch. The logit scale is
    learned without a cap (as FLYP trains it); contrastive fine-tuning caps it at 100."""

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        inputs, prompts = self.embed(batch)
        return self.logit_scale.exp() * inputs @ prompts.t()


class PromptPairs(Dataset):
    """``((input, prompt), label)``: each sample of ``base`` with a prompt of its class,
    the template drawn from torch's generator (which the loop seeds per sample)."""

    def __init__(self, base: Dataset, classnames: Sequence[str], templates: Sequence[str]):
        self.base, self.classnames, self.templates = base, list(classnames), list(templates)
        self.max_unreadable = getattr(base, "max_unreadable", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        template = self.templates[int(torch.randint(len(self.templates), ()))]
        return (x, template.format(self.classnames[int(y)])), y


class PromptCollate:
    """Collate ``PromptPairs`` samples: the inputs with the backbone's own collate, the
    prompts with the model's tokenizer."""

    def __init__(self, collate: Callable[[list], Any], tokenize: Tokenize):
        self.collate, self.tokenize = collate, tokenize

    def __call__(self, batch: list) -> tuple[dict[str, Any], torch.Tensor]:
        inputs, labels = self.collate([(x, y) for (x, _), y in batch])
        return {"inputs": inputs, "prompts": self.tokenize([p for (_, p), _ in batch])}, labels


def flyp_model(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str]) -> PromptClassifier:
    """The zero-shot model as FLYP and contrastive fine-tuning train it and WiSE-FT mixes it
    (its text tower included): the backbone's input
    tower, its text tower (or, for a text backbone, the same encoder), the logit scale,
    and the zero-shot head derived from them.

    Example:
        >>> model_0 = flyp_model(backbone, ["cat", "dog"], get_templates("openai_imagenet"))
    """
    side = TEXT_SIDES.get(backbone.spec.family)
    if side is None:
        raise FlypError(f"objectives flyp and contrastive train a text tower, and backbone family "
                        f"{backbone.spec.family!r} exposes none; they support {', '.join(sorted(TEXT_SIDES))}")
    text, tokenize = side(backbone)
    model = PromptClassifier(backbone.encoder, text, tokenize, (classnames, templates), backbone.logit_scale)
    return model.eval()  # as the backbone's modules are


def check_flyp_model(model: Classifier, objective: str = "flyp") -> PromptClassifier:
    """``model`` if FLYP (or contrastive fine-tuning, ``objective``) can train it, else
    FlypError saying how to build one."""
    if not isinstance(model, PromptClassifier):
        raise FlypError(f"objective {objective} trains a PromptClassifier (input and text towers), not a "
                        f"{type(model).__name__}: build the zero-shot model with wiseft.train.flyp.flyp_model")
    return model


class OpenClipText(torch.nn.Module):
    """An open_clip CLIP's text tower as a module of its own (the transformer, token and
    position embeddings, final norm and projection, shared with the model), run through
    open_clip's own ``encode_text``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.transformer, self.token_embedding, self.ln_final = model.transformer, model.token_embedding, model.ln_final
        self.positional_embedding = model.positional_embedding
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.text_pool_type = model.text_pool_type
        self.text_eos_id = getattr(model, "text_eos_id", None)
        self._encode_text = type(model).encode_text

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._encode_text(self, tokens)


class HFText(torch.nn.Module):
    """A Hugging Face CLIP-family text tower: tokens -> ``get_text_features``'s embeddings."""

    def __init__(self, text_model: torch.nn.Module, projection: torch.nn.Module | None):
        super().__init__()
        self.text_model, self.projection = text_model, projection

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.text_model(**tokens).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled


def _open_clip_side(backbone: Backbone) -> tuple[torch.nn.Module, Tokenize]:
    model = backbone.extras["model"]
    tokenizer = require("open_clip", "openclip").get_tokenizer(backbone.spec.name)
    text = model.text if hasattr(model, "text") else OpenClipText(model)  # CustomTextCLIP has its own tower
    return text, lambda prompts: tokenizer(list(prompts))


def _hf_side(backbone: Backbone) -> tuple[torch.nn.Module, Tokenize]:
    model = backbone.extras["model"]
    tokenizer = require("transformers", "hf").AutoTokenizer.from_pretrained(backbone.spec.name)
    siglip = "siglip" in model.config.model_type
    max_length = backbone.spec.max_length or getattr(model.config.text_config, "max_position_embeddings", 77)

    def tokenize(prompts):  # as the backbone's encode_text tokenises
        tok = tokenizer(list(prompts), padding="max_length" if siglip else True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        return dict(tok.items())

    return HFText(model.text_model, getattr(model, "text_projection", None)), tokenize


def _sentence_side(backbone: Backbone) -> tuple[None, Tokenize]:
    model = backbone.extras["model"]
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6

    def tokenize(prompts):
        return {k: v for k, v in preprocess(list(prompts)).items() if isinstance(v, torch.Tensor)}

    return None, tokenize  # the same encoder embeds inputs and prompts


# backbone family -> (text tower or None for the input encoder itself, tokenizer)
TEXT_SIDES: dict[str, Callable[[Backbone], tuple[torch.nn.Module | None, Tokenize]]] = {
    "open_clip": _open_clip_side, "hf_clip": _hf_side, "sentence_transformer": _sentence_side,
}

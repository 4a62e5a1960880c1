"""Scoring a pair set by retrieval: each distinct query (an image, or a text) ranks every
distinct caption and each caption ranks every query, by the cosine similarity of the
model's query embedding (its encoder) and caption embedding (its text tower), recall@k
both ways (``wiseft.core.retrieval_metrics``: exact on ties).

The queries go through the set's input cache as any evaluation set's inputs do (decoded
once, unreadable ones skipped and counted): the cache is built over the distinct queries,
each labelled by its position, so a query listed with five captions is embedded once. A
caption given twice is one item; every query it is paired with is correct for it. The
pairs of a skipped query leave both sides (its captions are no one's correct item).
Captions are tokenised and embedded per batch at every alpha, by the mixed text tower.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from wiseft.backbones import Backbone
from wiseft.core import COSINE_TIE, Score, retrieval_metrics
from wiseft.data import LabeledDataset, PairDataset
from wiseft.evaluation.cache import InputCache
from wiseft.heads import Classifier, PromptClassifier
from wiseft.runtime import device_of, numerics


@dataclass(frozen=True)
class PairIndex:
    """A pair set's distinct queries, as a LabeledDataset whose label is the query's
    position (what the input cache decodes), and each pair as (query position, caption)."""

    queries: LabeledDataset
    pairs: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, dataset: PairDataset) -> PairIndex:
        seen: dict[Hashable, int] = {}
        refs: list[Any] = []
        pairs = []
        for ref, caption in dataset.samples:
            key = _key(ref)
            if key not in seen:
                seen[key] = len(refs)
                refs.append(ref)
            pairs.append((seen[key], caption))
        queries = LabeledDataset([(ref, i) for i, ref in enumerate(refs)], [], load=dataset.load,
                                 transform=dataset.transform, name=dataset.name)
        queries.max_unreadable = getattr(dataset, "max_unreadable", None)
        return cls(queries, tuple(pairs))

    def relevance(self, kept: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """(distinct captions, (kept queries, captions) bool matrix of correct pairs) for the
        queries the cache kept (``kept``: their positions, in cache order)."""
        row = {int(q): i for i, q in enumerate(kept.tolist())}
        captions: dict[str, int] = {}
        cells = []
        for q, caption in self.pairs:
            if q in row:
                cells.append((row[q], captions.setdefault(caption, len(captions))))
        relevant = torch.zeros(len(row), len(captions), dtype=torch.bool)
        if cells:
            rows, cols = zip(*cells)
            relevant[list(rows), list(cols)] = True
        return list(captions), relevant


def _key(ref: Any) -> Hashable:
    """What makes two query references the same query (a path, a text, a tar member)."""
    try:
        hash(ref)
    except TypeError:
        return ("id", id(ref))
    return ref


def caption_encoder(model: Classifier, backbone: Backbone) -> Callable[[list[str]], torch.Tensor]:
    """The text tower captions are embedded with: a PromptClassifier's own (mixed with the
    rest of the model at each alpha, as FLYP and contrastive fine-tunes train it); for any
    other classifier the backbone's, which its fine-tune leaves as pretrained."""
    return model.encode_prompts if isinstance(model, PromptClassifier) else backbone.encode_text


@torch.no_grad()
def retrieval_scores(model: Classifier, cache: InputCache, index: PairIndex, backbone: Backbone, *,
                     batch_size: int, precision: str, modality: str = "image") -> dict[str, Score]:
    """Recall@1/5/10 both ways (``r@1`` first, the primary) of ``model`` on a pair set whose
    distinct queries ``cache`` holds: queries by the model's encoder, captions by
    :func:`caption_encoder`, in ``batch_size`` batches at ``precision``."""
    model.eval()
    device = device_of(model)
    queries = cache.outputs(lambda x: F.normalize(model.encoder(x).float(), dim=-1), batch_size, device, precision)
    captions, relevant = index.relevance(cache.labels)
    if not len(captions) or not len(queries):
        raise ValueError(f"pair set {index.queries.name!r}: no readable query to score")
    encode = caption_encoder(model, backbone)
    docs = []
    with numerics(precision, device):
        for i in range(0, len(captions), batch_size):
            docs.append(F.normalize(encode(list(captions[i:i + batch_size])).float(), dim=-1).cpu())
    return retrieval_metrics(queries @ torch.cat(docs).T, relevant, modality, tie=COSINE_TIE)


def pair_sets(evalsets: Sequence[Any]) -> list[Any]:
    """The evaluation sets that are pair sets (scored by retrieval)."""
    return [es for es in evalsets if isinstance(es.dataset, PairDataset)]

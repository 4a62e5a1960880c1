"""Paired data for contrastive fine-tuning and retrieval: each sample is a query (an
image, or a text) and its caption (a text), the unit CLIP trains and is scored on."""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch

from wiseft.data.base import DataError, ReferencedDataset


class PairDataset(ReferencedDataset):
    """(query, caption) pairs: ``samples`` hold a reference to each query (an image path,
    image bytes or the text itself) and its caption text; ``load`` turns a reference into a
    raw query (a PIL image, a string) and ``transform`` into a model input. Captions stay
    strings: the text tower's tokeniser batches them. ``modality`` is the query's kind
    (``image`` for image-caption pairs, ``text`` for query-document pairs).

    ``dataset[i]`` is ``(query input, caption)``, the counterpart of a LabeledDataset's
    ``(input, label)``, so the same data layer, decode policy and loaders serve both.
    """

    def __init__(self, samples: Sequence[tuple[Any, str]], *, load: Callable[[Any], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None, name: str = "",
                 modality: Literal["image", "text"] = "image"):
        super().__init__(samples, load=load, transform=transform, name=name)
        for i, (_, caption) in enumerate(self.samples):
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"pair dataset {name!r}: pair {i} has no caption text (got {caption!r})")
        self.modality = modality

    @property
    def captions(self) -> list[str]:
        return [c for _, c in self.samples]


def split_pairs(dataset: PairDataset, fraction: float, seed: int = 0) -> tuple[PairDataset, PairDataset]:
    """(train, validation): a seeded random hold-out of ``fraction`` of the pairs (at least
    one when there are two or more), each part in the dataset's order."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    k = max(1, round(fraction * n)) if n > 1 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return dataset.subset(sorted(perm[k:])), dataset.subset(sorted(perm[:k]))

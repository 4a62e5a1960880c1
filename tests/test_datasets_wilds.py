"""WILDS FMoW and iWildCam layouts, splits and metrics against hand values."""

import typing

import pytest
import torch
from dataset_fixtures import write_csv, write_image

from wiseft.core import macro_f1, worst_group_accuracy
from wiseft.data import DataError, build_dataset
from wiseft.data.wilds import FMOW_CATEGORIES, FMOW_SPLITS, FmowSplit, iwildcam_classnames


@pytest.fixture
def fmow_root(tmp_path):
    root = tmp_path / "fmow_v1.1"
    rows = [  # (split, category, country, year): row n is images/rgb_img_n.png
        ("train", "airport", "USA", 2010), ("seq", "airport", "USA", 2016), ("test", "zoo", "KEN", 2016),
        ("test", "airport", "FRA", 2017), ("test", "barn", "USA", 2016), ("test", "barn", "XXX", 2016),
        ("val", "dam", "AUS", 2014), ("test", "dam", "KEN", 2010),
    ]
    write_csv(root / "rgb_metadata.csv", [{"split": s, "category": c, "country_code": cc,
                                      "timestamp": f"{y}-03-01T10:00:00Z"} for s, c, cc, y in rows])
    write_csv(root / "country_code_mapping.csv", [{"alpha-3": a, "region": r} for a, r in
                                             [("USA", "Americas"), ("KEN", "Africa"), ("FRA", "Europe"),
                                              ("AUS", "Oceania")]])
    for n in range(len(rows)):
        write_image(root / "images" / f"rgb_img_{n}.png", seed=n)
    return tmp_path


def test_fmow_splits_follow_wilds_years_and_row_numbers(fmow_root):
    test = build_dataset({"kind": "fmow", "root": str(fmow_root)})
    assert [s.rsplit("_", 1)[1] for s, _ in test.samples] == ["2.png", "3.png", "4.png", "5.png"]
    assert test.labels == [FMOW_CATEGORIES.index(c) for c in ("zoo", "airport", "barn", "barn")]
    assert test.classnames[FMOW_CATEGORIES.index("lake_or_pond")] == "lake_or_pond"  # the reference's names
    assert len(build_dataset({"kind": "fmow", "root": str(fmow_root), "split": "val"})) == 1
    assert len(build_dataset({"kind": "fmow", "root": str(fmow_root), "split": "id_test"})) == 1
    with pytest.raises(DataError, match=r"^dataset 'fmow': split: Input should be 'train', 'id_val', 'id_test', "
                                        r"'val' or 'test', got 'nope'$"):
        build_dataset({"kind": "fmow", "root": str(fmow_root), "split": "nope"})
    assert typing.get_args(FmowSplit) == tuple(FMOW_SPLITS)  # the split a config may name is one the loader has


def test_fmow_worst_region_accuracy(fmow_root):
    ds = build_dataset({"kind": "fmow", "root": str(fmow_root)})
    # regions: zoo/KEN Africa, airport/FRA Europe, barn/USA Americas, barn/XXX Other (excluded)
    logits = torch.zeros(4, 62)
    wrong = FMOW_CATEGORIES.index("dam")
    for i, y in enumerate(ds.labels):
        logits[i, y if i in (0, 3) else wrong] = 1.0  # right: Africa, Other; wrong: Europe, Americas
    m = ds.metrics(logits, torch.tensor(ds.labels), torch.arange(4))
    assert m["top1"].value == 0.5 and (m["top1"].correct, m["top1"].total) == (2, 4)
    assert m["worst_region_acc"].value == 0.0 and m["worst_region_acc"].total == 1
    assert next(iter(m)) == "worst_region_acc"  # the paper's FMoW OOD metric is the primary one
    # skipped inputs: only rows 0 and 2 scored (index says which samples they are)
    m = ds.metrics(logits[[0, 2]], torch.tensor(ds.labels)[[0, 2]], torch.tensor([0, 2]))
    assert m["worst_region_acc"].value == 0.0 and m["top1"].value == 0.5


@pytest.mark.parametrize("split, primary", [("test", "worst_region_acc"), ("val", "worst_region_acc"),
                                             ("id_test", "top1"), ("id_val", "top1"), ("train", "top1")])
def test_fmow_headline_is_worst_region_out_of_distribution_only(fmow_root, split, primary):
    """The paper's FMoW ID column is plain accuracy and its OOD column worst-region
    accuracy (Table 6; the reference's FMOWID/FMOWOOD, src/datasets/fmow.py, score
    subsets 'id_test' and 'test')."""
    write_csv(fmow_root / "fmow_v1.1" / "rgb_metadata.csv",
         [{"split": s, "category": "dam", "country_code": "KEN", "timestamp": f"{y}-03-01T10:00:00Z"}
          for s, y in [("train", 2010), ("val", 2010), ("test", 2010), ("val", 2014), ("test", 2016)]])
    ds = build_dataset({"kind": "fmow", "root": str(fmow_root), "split": split})
    m = ds.metrics(torch.zeros(len(ds), 62), torch.tensor(ds.labels), torch.arange(len(ds)))
    assert list(m) == [primary, *({"top1", "worst_region_acc"} - {primary})]


def test_iwildcam_layout_and_macro_f1(tmp_path):
    root = tmp_path / "iwildcam_v2.0"
    rows = [("test", 0, "a.jpg"), ("test", 1, "b.jpg"), ("test", 1, "c.jpg"), ("train", 2, "d.jpg")]
    write_csv(root / "metadata.csv", [{"split": s, "y": y, "filename": f, "location_remapped": 0} for s, y, f in rows])
    for _, _, f in rows:
        write_image(root / "train" / f)
    ds = build_dataset({"kind": "iwildcam", "root": str(tmp_path)})
    assert len(ds.classnames) == 182 and ds.classnames == iwildcam_classnames()
    assert ds.classnames[4] == "cougar" and ds.labels == [0, 1, 1]  # lower case, as the reference prompts
    logits = torch.zeros(3, 182)
    logits[0, 1], logits[1, 1], logits[2, 5] = 1, 1, 1  # preds 1, 1, 5 for labels 0, 1, 1
    m = ds.metrics(logits, torch.tensor([0, 1, 1]), torch.arange(3))
    # F1 over present classes {0, 1}: class 0 -> 0; class 1: tp 1, fp 1, fn 1 -> 0.5
    assert m["top1"].value == pytest.approx(1 / 3) and m["macro_f1"].value == pytest.approx(0.25)
    assert next(iter(m)) == "macro_f1"  # the paper's iWildCam metric is the primary one


def test_metric_functions_by_hand():
    preds, labels = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    assert macro_f1(preds, labels).value == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    worst = worst_group_accuracy(preds, labels, torch.tensor([0, 1, 1, 2]))
    assert (worst.value, worst.correct, worst.total) == (0.5, 1, 2)

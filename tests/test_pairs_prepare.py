"""A run's data with pair sets: pair test and shift sets beside labelled ones, a pair
training set held out by split_pairs (the set alpha is chosen on), classes from the
labelled sets or none, --quick slices, and the objective check."""

from __future__ import annotations

import pytest
import yaml
from conftest import write_image_folder
from pair_fixtures import write_pair_manifest

from wiseft.config import ConfigError, RunConfig
from wiseft.data import PairDataset
from wiseft.pipeline.prepare import prepare_data, quick_data


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    write_pair_manifest(root / "tr", 4, 1, name="train.jsonl")
    write_pair_manifest(root / "te", 2, 2, name="test.jsonl")
    write_image_folder(root / "img", 2, seed=3)
    return root


def config(root, train, test, shifts=None, **data) -> RunConfig:
    body = {"backbone": {"family": "open_clip", "name": "x"},
            "data": {"name": "caps", "train": train, "test": test, "shifts": shifts or {}, "templates": ["a {}."],
                     **data},
            "output_dir": str(root / "out")}
    (root / "c.yaml").write_text(yaml.safe_dump(body))
    from wiseft.config import load_config
    return load_config(root / "c.yaml")


PAIRS_TRAIN = {"kind": "pair_manifest", "path": "tr/train.jsonl"}
PAIRS_TEST = {"kind": "pair_manifest", "path": "te/test.jsonl"}
IMAGES = {"kind": "image_folder", "root": "img"}


def contrastive(cfg: RunConfig) -> RunConfig:
    """The config with objective contrastive (the value the contrastive fine-tuning adds)."""
    return cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"objective": "contrastive"})})


def test_pair_train_with_a_labelled_objective_is_an_error_naming_the_field(files):
    cfg = config(files, PAIRS_TRAIN, PAIRS_TEST)
    with pytest.raises(ConfigError, match=r"c.yaml: finetune.objective: 'ce' needs class labels.*caps-train.*"
                                          r"objective: contrastive"):
        prepare_data(cfg)


def test_pair_train_held_out_by_pairs_and_classes_from_the_labelled_shift(files):
    cfg = contrastive(config(files, PAIRS_TRAIN, PAIRS_TEST, {"colours": IMAGES}, validation_fraction=0.25))
    data = prepare_data(cfg)
    assert isinstance(data.train, PairDataset) and len(data.train) == 9
    roles = {es.name: (es.role, es.is_pairs) for es in data.evalsets}
    assert roles == {"caps": ("reference", True), "colours": ("shift", False), "caps-val": ("validation", True)}
    val = data.evalsets[-1].dataset
    assert len(val) == 3 and not set(val.samples) & set(data.train.samples)
    assert data.classnames == ["blue", "green", "red"]  # the labelled shift's classes
    quick = quick_data(data, 0)
    assert {es.name: len(es.dataset) for es in quick.evalsets} == {"caps": 6, "colours": 6, "caps-val": 3}


def test_only_pair_sets_need_no_classnames(files):
    data = prepare_data(contrastive(config(files, PAIRS_TRAIN, PAIRS_TEST)))
    assert data.classnames == [] and all(es.is_pairs for es in data.evalsets)


def test_labelled_train_with_pair_test_and_shift(files):
    data = prepare_data(config(files, IMAGES, IMAGES, {"captions": PAIRS_TEST}))
    assert [(es.name, es.is_pairs) for es in data.evalsets] == [("caps", False), ("captions", True),
                                                                  ("caps-val", False)]
    assert data.evalsets[1].projection is None


def test_data_classnames_win_over_the_labelled_sets(files):
    data = prepare_data(contrastive(config(files, PAIRS_TRAIN, IMAGES, classnames=["red", "green", "blue"])))
    assert data.classnames == ["red", "green", "blue"] and data.evalsets[0].projection is not None


def test_class_map_on_a_pair_set_is_an_error_naming_it(files):
    cfg = config(files, IMAGES, IMAGES, {"captions": {**PAIRS_TEST, "subset": True}})
    with pytest.raises(ConfigError, match=r"data.shifts.captions: 'captions' is a pair set.*class_map and subset"):
        prepare_data(cfg)


@pytest.mark.parametrize("name", ["caps", "caps-val"])
def test_a_shift_named_as_the_reference_or_validation_set_is_an_error(files, name):
    # the sweep keys scores by set name: the shift would silently overwrite the reference set's records
    cfg = config(files, IMAGES, PAIRS_TEST, {name: IMAGES})
    with pytest.raises(ConfigError, match=rf"data.shifts.{name}: a shift may not be named '{name}'"):
        prepare_data(cfg)

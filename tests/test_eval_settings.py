"""The evaluation stage's settings as one object (EvalSettings, SweepSettings) from the
config to the loaders: every field arrives where it is used, on the cached and the
uncached path, in the library and in ``wiseft evaluate``."""

from __future__ import annotations

import importlib

import pytest
import torch
import yaml
from conftest import COLORS, run_config

from wiseft.backbones import load_backbone
from wiseft.config import EvalConfig
from wiseft.evaluation import EvalSet, EvalSettings, SweepSettings, evaluate, evaluate_records, sweep
from wiseft.heads import Classifier, zeroshot_head

ALPHAS = [0.0, 1.0]


def test_settings_from_config_carry_every_evaluation_field():
    cfg = EvalConfig(batch_size=7, precision="bf16", cache="disk", cache_dir="/tmp/c", num_workers=3, fp32_check=9)
    assert EvalSettings.from_config(cfg, progress=False) == EvalSettings(
        batch_size=7, precision="bf16", cache="disk", cache_dir="/tmp/c", num_workers=3, fp32_check=9,
        max_memory=None, progress=False)
    sweep_settings = SweepSettings.from_config(cfg, model_name="lp", linear=True, allow_extrapolation=True,
                                               provenance={"mode": "linear"})
    assert sweep_settings == SweepSettings(batch_size=7, precision="bf16", cache="disk", cache_dir="/tmp/c",
                                           num_workers=3, fp32_check=9, progress=True, model_name="lp",
                                           linear=True, allow_extrapolation=True, provenance={"mode": "linear"})
    # the defaults of the config and of the settings are the same evaluation
    assert EvalSettings.from_config(EvalConfig()).cache_mode == EvalSettings().cache_mode == "auto"
    assert (EvalSettings(cache=False).cache_mode, EvalSettings(cache="disk").cache_mode) == ("auto", "disk")


def test_plain_eval_settings_sweep_with_the_sweeps_defaults():
    assert SweepSettings.of(EvalSettings(batch_size=5, cache=False)) == SweepSettings(batch_size=5, cache=False)
    assert SweepSettings.of(None) == SweepSettings()
    own = SweepSettings(model_name="x")
    assert SweepSettings.of(own) is own


@pytest.fixture(scope="module")
def setup(open_clip_spec, image_data):
    bb = load_backbone(open_clip_spec)
    torch.manual_seed(0)
    model = Classifier(bb.encoder, zeroshot_head(bb, list(COLORS), ["a {} photo."], cache=False))
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    theta_1 = {k: v + 0.05 if v.is_floating_point() else v.clone() for k, v in theta_0.items()}
    return bb, model, theta_0, theta_1


def _sets(image_data):
    from wiseft.data import build_dataset

    return [EvalSet("test", "reference", build_dataset({"kind": "image_folder", "root": str(image_data / "test")}))]


@pytest.fixture
def loaders(monkeypatch):
    """The ``num_workers`` of every DataLoader the evaluation engine builds (the input cache's
    decoding loader, and an evaluation set's uncached one)."""
    modules = [importlib.import_module(f"wiseft.evaluation.{name}") for name in ("cache", "sets")]
    built, real = [], modules[0].DataLoader

    def spy(*args, **kwargs):
        built.append(kwargs.get("num_workers", 0))
        return real(*args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, "DataLoader", spy)
    return built


def test_uncached_sweep_loads_with_the_workers_asked_for(setup, image_data, loaders):
    bb, model, theta_0, theta_1 = setup
    one = sweep(model, theta_0, theta_1, _sets(image_data), ALPHAS, bb,
                settings=SweepSettings(cache=False, progress=False))
    assert loaders == [0, 0]  # one loader per alpha; under 512 inputs the default is no worker process
    loaders.clear()
    two = sweep(model, theta_0, theta_1, _sets(image_data), ALPHAS, bb,
                settings=SweepSettings(cache=False, num_workers=2, progress=False))
    assert loaders == [2, 2]  # was dropped: every uncached pass decoded in the main process
    assert two == one
    loaders.clear()
    assert evaluate(model, _sets(image_data), bb, cache=False, num_workers=2) == {"test": (
        next(r.correct for r in two if r.alpha == 1.0 and r.metric == "top1" and r.model == "finetuned"), 18)}
    assert loaders == [2]


def test_cached_evaluation_loads_with_the_workers_asked_for(setup, image_data, loaders):
    bb, model, _, _ = setup
    records = evaluate_records(model, _sets(image_data), bb, model_name="m",
                               settings=EvalSettings(num_workers=2, progress=False))
    assert loaders == [2]  # one decoding pass into the cache
    assert {(r.metric, r.total) for r in records if r.metric == "top1"} == {("top1", 18)}


def test_evaluate_command_puts_its_disk_cache_in_the_configs_cache_dir(setup, open_clip_spec, image_data,
                                                                       tmp_path, capsys):
    from wiseft.cli import main
    from wiseft.heads import export_model

    bb, model, theta_0, _ = setup
    model.load_state_dict(theta_0)
    export = export_model(model, bb, {"classnames": list(COLORS), "templates": ["a {} photo."], "alpha": 0.0},
                          tmp_path / "export")
    outputs = {}
    for cache in ("memory", "disk"):
        cfg = run_config(open_clip_spec, image_data, tmp_path / "unused")
        cfg["evaluation"] = {"batch_size": 16, "cache": cache, "cache_dir": str(tmp_path / "inputs")}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["evaluate", str(export), str(tmp_path / "c.yaml")]) == 0
        outputs[cache] = capsys.readouterr().out
    # the memory-mapped file went under cache_dir (created for it) and was removed after
    assert (tmp_path / "inputs").is_dir() and not any((tmp_path / "inputs").iterdir())
    assert outputs["disk"] == outputs["memory"] and "colors" in outputs["disk"]

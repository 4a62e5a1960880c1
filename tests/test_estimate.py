"""The run's time estimate (estimate.py): a real training step and a batch of each set,
timed at the precision each stage runs in, scaled by the plan's work; the stages named
as the run's own timings name them."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import run_config

from wiseft.backbones import load_backbone
from wiseft.config import parse_config
from wiseft.pipeline import estimate
from wiseft.runtime.distributed import DistInfo


@pytest.fixture
def setup(open_clip_spec, image_data, tmp_path):
    from wiseft.heads import build_zeroshot_model
    from wiseft.pipeline import prepare_data, resolve_precisions

    def make(**overrides):
        cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path / "run", **overrides))
        cfg, _ = resolve_precisions(cfg, torch.device("cpu"))
        data = prepare_data(cfg)
        backbone = load_backbone(cfg.backbone)
        model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=False)
        theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
        return cfg, data, backbone, model, theta_0
    return make


def _fixed_clock(monkeypatch, world: int = 1) -> None:
    clock = itertools.count(0.0, 0.25)  # every timed interval takes 0.25 s
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(estimate, "current", lambda: DistInfo(0, world, 0))


def test_each_stage_is_its_timed_work_scaled_by_the_plan_and_divided_by_the_processes(setup, monkeypatch):
    cfg, data, backbone, model, theta_0 = setup(variants={"slow": {"lr": 1e-4}})
    sizes = {e.name: len(e.dataset) for e in data.evalsets}
    assert sizes == {"colors": 18, "noise": 18, "subset": 10, "colors-val": 9} and len(data.train) == 27
    per = lambda n, k: n * 0.25 / min(k, n)  # noqa: E731 - a timed batch of min(k, n) inputs takes 0.25 s
    one_pass = sum(per(n, 32) for n in sizes.values())
    train = 2 * per(27, 8)  # 2 epochs; a step of batch 8 takes 0.25 s
    expect = {"fine-tune finetuned": train, "sweep finetuned": 11 * one_pass + one_pass,  # + decoding once
              "fine-tune slow": train, "sweep slow": 10 * one_pass}  # alpha 0 is scored once for both
    for world in (1, 2):
        _fixed_clock(monkeypatch, world)
        got = estimate.estimate_stages(model, theta_0, backbone, data, cfg, cfg.finetune_runs(), set())
        assert got == pytest.approx({k: v / world for k, v in expect.items()})
    text = estimate.estimate_text(got, torch.device("cpu"))
    assert text.startswith(f"  estimate: about {estimate.duration(sum(got.values()))} on 2 processes on cpu (")
    assert "fine-tune finetuned" in text and "sweep slow" in text
    assert text.endswith("; from one timed training step and one batch of each set)")
    reused = estimate.estimate_text({"sweep finetuned": 3.0}, torch.device("cpu"))
    assert reused.endswith("(sweep finetuned 3.0 s; from one batch of each set)")


def test_a_linear_probe_costs_one_feature_pass_and_a_reused_fine_tune_nothing(setup, monkeypatch):
    cfg, data, backbone, model, theta_0 = setup(finetune={"mode": "linear", "batch_size": 8, "epochs": 3})
    _fixed_clock(monkeypatch)
    got = estimate.estimate_stages(model, theta_0, backbone, data, cfg, cfg.finetune_runs(), set())
    one_pass = sum(len(e.dataset) * 0.25 / min(32, len(e.dataset)) for e in data.evalsets)
    assert got == pytest.approx({"fine-tune finetuned": 27 * 0.25 / 27, "sweep finetuned": 2 * one_pass})
    got = estimate.estimate_stages(model, theta_0, backbone, data, cfg, cfg.finetune_runs(), {"finetuned"})
    assert list(got) == ["sweep finetuned"]


def test_timing_a_training_step_leaves_the_model_as_it_was(setup):
    cfg, data, backbone, model, theta_0 = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = estimate.estimate_stages(model, theta_0, backbone, data, cfg, cfg.finetune_runs(), set())
    assert got["fine-tune finetuned"] > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_an_estimate_that_fails_says_so_and_the_run_goes_on(setup, monkeypatch, caplog):
    import logging

    cfg, data, backbone, model, theta_0 = setup()
    monkeypatch.setattr(estimate, "_eval_seconds", lambda *a: (_ for _ in ()).throw(OSError("unreadable.jpg")))
    with caplog.at_level(logging.INFO, logger="wiseft"):
        assert estimate.estimate_run(model, theta_0, backbone, data, cfg, cfg.finetune_runs(), set()) == {}
    assert "(no time estimate: OSError: unreadable.jpg)" in caplog.text

"""Several alphas per pass in the sweep (``alphas_per_pass``, issue 17 item 2): a group of
alphas is scored from one read of each batch (``multi_alpha.MultiAlpha``) and gives the
same records as one alpha at a time; models that mix otherwise fall back to one at a time."""

import logging
import math
import sys
from dataclasses import replace

import pytest
import torch
from conftest import COLORS, write_image_folder

from wiseft.backbones import load_backbone
from wiseft.config import EvalConfig
from wiseft.data import build_dataset
from wiseft.evaluation import EvalSet, InputCache, SweepSettings, sweep
from wiseft.heads import Classifier, zeroshot_head
from wiseft.merge import Interpolator, MultiAlphaSettings
from wiseft.train import LORA_A, LORA_B

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]  # groups of 3 and 2 at alphas_per_pass=3
QUIET = SweepSettings(progress=False)


def _count_passes(monkeypatch) -> list:
    """The function of each pass over a set's cached inputs (``InputCache.outputs``' first argument)."""
    passes = []
    forward = InputCache.outputs
    monkeypatch.setattr(InputCache, "outputs", lambda *a, **k: passes.append(a[1]) or forward(*a, **k))
    return passes


@pytest.fixture(scope="module")
def bb(open_clip_spec):
    return load_backbone(open_clip_spec)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    write_image_folder(root / "test", 4, seed=5, fmt="jpg")
    write_image_folder(root / "shift", 3, seed=6, jitter=100)
    write_image_folder(root / "val", 3, seed=8)
    return root


def _sets(folders):
    """A validation set (first in no particular place: the sweep orders it), a reference and a shift set."""
    roles = {"test": "reference", "val": "validation", "shift": "shift"}
    return [EvalSet(n, role, build_dataset({"kind": "image_folder", "root": str(folders / n)}, name=n))
            for n, role in roles.items()]


def _model_and_thetas(bb):
    torch.manual_seed(0)
    model = Classifier(bb.encoder, zeroshot_head(bb, list(COLORS), ["a {} photo."], cache=False))
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    theta_1 = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
               for k, v in theta_0.items()}
    return model, theta_0, theta_1


def _same_records_to_rounding(one, many, extra: dict):
    """The same records in the same order; counts and every counted metric (top-1) exactly;
    the other values (ece, temperature) to float rounding; provenance plus ``extra``.

    vmap runs each layer as one batched kernel, so logits differ from one alpha at a time by
    a few ulps (tests/test_multi_alpha.py). The temperature is fitted by a bounded scalar
    search that stops within 1e-5 of log T (``metrics.fit_temperature``), so a few-ulp
    change of the logits can move it by a few 1e-5 relative (seen: up to 1.2e-5); ece,
    computed under that temperature, moves by under 1e-6 (seen: up to 2e-7)."""
    assert len(one) == len(many) > 0
    for a, b in zip(one, many):
        assert (a.model, a.alpha, a.dataset, a.role, a.metric, a.correct, a.total) == \
            (b.model, b.alpha, b.dataset, b.role, b.metric, b.correct, b.total)
        assert b.provenance == {**a.provenance, **extra}
        if a.correct is not None:
            assert a.value == b.value
        elif a.metric == "temperature":
            assert math.isclose(a.value, b.value, rel_tol=1e-4), (a, b)
        else:
            assert math.isclose(a.value, b.value, rel_tol=0, abs_tol=1e-6), (a, b)


def test_three_alphas_per_pass_give_the_records_of_one_at_a_time(bb, folders, monkeypatch):
    model, theta_0, theta_1 = _model_and_thetas(bb)
    one = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb, settings=QUIET)
    passes = _count_passes(monkeypatch)
    many = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb,
                 settings=SweepSettings(progress=False, alphas_per_pass=3))
    assert len(passes) == 2 * 3  # two groups (3 + 2 alphas) x three sets; one at a time reads 5 x 3
    assert all(p is not model for p in passes)  # every pass ran the stacked weights
    assert {r.metric for r in one} >= {"top1", "ece", "temperature"}
    assert any(r.model == "finetuned (output ensemble)" for r in one)  # the end points' logits: kept too
    _same_records_to_rounding(one, many, {"alphas_per_pass": 3})


def test_the_loop_fallback_gives_the_same_records_bit_for_bit(bb, folders, monkeypatch):
    """Where vmap cannot run, MultiAlpha loops over the alphas on the batch read once: the
    same kernels on the same weights, so the records are equal and say nothing more."""
    ev = sys.modules["wiseft.evaluation.alpha_sweep"]
    model, theta_0, theta_1 = _model_and_thetas(bb)
    one = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb, settings=QUIET)
    monkeypatch.setattr(ev, "_multi_settings", lambda s: MultiAlphaSettings(mode="loop"))
    many = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb,
                 settings=SweepSettings(progress=False, alphas_per_pass=4))
    assert many == one


def test_extrapolated_alphas_share_a_pass_too(bb, folders):
    model, theta_0, theta_1 = _model_and_thetas(bb)
    alphas = [-0.5, 0.0, 1.0, 1.5]
    settings = SweepSettings(progress=False, allow_extrapolation=True)
    one = sweep(model, theta_0, theta_1, _sets(folders), alphas, bb, settings=settings)
    many = sweep(model, theta_0, theta_1, _sets(folders), alphas, bb,
                 settings=SweepSettings(progress=False, allow_extrapolation=True, alphas_per_pass=4))
    _same_records_to_rounding(one, many, {"alphas_per_pass": 4})


def test_bf16_check_runs_on_the_first_alpha_of_the_first_group(bb, folders, monkeypatch):
    monkeypatch.setenv("WISEFT_NATIVE_BF16", "1")  # bf16 on any CPU
    model, theta_0, theta_1 = _model_and_thetas(bb)
    settings = SweepSettings(progress=False, precision="bf16")
    one = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb, settings=settings)
    many = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb,
                 settings=SweepSettings(progress=False, precision="bf16", alphas_per_pass=3))
    checks = lambda records: {r.dataset: r.provenance["bf16_check"] for r in records  # noqa: E731
                              if r.model == "finetuned" and r.alpha == 0.0}
    a, b = checks(one), checks(many)
    assert set(a) == set(b) == {"test", "val", "shift"}
    for name in a:  # fp32 reference: alpha 0 loaded into the model, the same in both
        assert (b[name]["alpha"], b[name]["n"], b[name]["top1_fp32"]) == (0.0, a[name]["n"], a[name]["top1_fp32"])
        top1 = next(r.value for r in many if r.model == "finetuned" and r.alpha == 0.0 and r.dataset == name
                    and r.metric == "top1")
        assert b[name]["top1_bf16"] == top1  # the grouped bf16 pass's own alpha-0 accuracy


def test_auto_is_one_alpha_at_a_time_on_cpu(bb, folders, monkeypatch):
    model, theta_0, theta_1 = _model_and_thetas(bb)
    one = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb, settings=QUIET)
    passes = _count_passes(monkeypatch)
    auto = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb,
                 settings=SweepSettings(progress=False, alphas_per_pass="auto"))
    assert auto == one
    assert len(passes) == len(ALPHAS) * 3 and all(p is model for p in passes)


@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "3", None])
def test_a_bad_alphas_per_pass_is_named(bb, folders, bad):
    model, theta_0, theta_1 = _model_and_thetas(bb)
    with pytest.raises(ValueError, match=f"alphas_per_pass must be a positive integer or 'auto', got {bad!r}"):
        sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb,
              settings=SweepSettings(progress=False, alphas_per_pass=bad))


def test_uncached_sweeps_go_one_alpha_at_a_time_and_say_why(bb, folders, caplog):
    model, theta_0, theta_1 = _model_and_thetas(bb)
    naive = SweepSettings(progress=False, cache=False)
    one = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb, settings=naive)
    with caplog.at_level(logging.INFO, logger="wiseft"):
        many = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb,
                     settings=replace(naive, alphas_per_pass=3))
    assert many == one
    assert "alphas_per_pass=3: one alpha at a time, as inputs are not cached (cache: false)" in caplog.text


def test_a_lora_sweep_goes_one_alpha_at_a_time_and_says_why(bb, folders, caplog):
    """theta_1 of a LoRA fine-tune holds factors, scaled by alpha, not weights to stack."""
    model, theta_0, _ = _model_and_thetas(bb)
    key = next(k for k, v in theta_0.items() if k.startswith("encoder.") and k.endswith("weight") and v.dim() == 2)
    g = torch.Generator().manual_seed(2)
    rows, cols = theta_0[key].shape
    theta_1 = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in theta_0.items() if k.startswith("head.")}
    theta_1 |= {key + LORA_A: 0.3 * torch.randn(2, cols, generator=g), key + LORA_B: 0.3 * torch.randn(rows, 2,
                                                                                                     generator=g)}
    one = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb, settings=QUIET)
    with caplog.at_level(logging.INFO, logger="wiseft"):
        many = sweep(model, theta_0, theta_1, _sets(folders), ALPHAS, bb,
                     settings=SweepSettings(progress=False, alphas_per_pass=3))
    assert many == one
    assert "alphas_per_pass=3: one alpha at a time, as a LoRA fine-tune is mixed by scaling its adapter" \
        in caplog.text


def test_a_flyp_sweep_goes_one_alpha_at_a_time_and_says_why(bb, folders, caplog):
    """FLYP's head is re-derived from each alpha's mixed text tower, not mixed."""
    from wiseft.train import flyp_model

    model = flyp_model(bb, list(COLORS), ["a {} photo."])
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    theta_1 = {k: v + 0.02 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
               for k, v in theta_0.items()}
    alphas = [0.0, 0.5, 1.0]
    one = sweep(model, theta_0, theta_1, _sets(folders), alphas, bb, settings=QUIET)
    with caplog.at_level(logging.INFO, logger="wiseft"):
        many = sweep(model, theta_0, theta_1, _sets(folders), alphas, bb,
                     settings=SweepSettings(progress=False, alphas_per_pass=3))
    assert many == one
    assert "one alpha at a time, as a PromptClassifier (FLYP) re-derives its head" in caplog.text
    model.load_state_dict(theta_0)


def test_the_group_size_and_its_order(bb):
    ev = sys.modules["wiseft.evaluation.alpha_sweep"]
    model, theta_0, theta_1 = _model_and_thetas(bb)
    interp = Interpolator(theta_0, theta_1)
    alphas = [round(0.1 * i, 1) for i in range(11)]
    groups = ev._alpha_groups(model, interp, alphas, SweepSettings(alphas_per_pass=4))
    assert groups == [alphas[0:4], alphas[4:8], alphas[8:11]]
    assert ev._alpha_groups(model, interp, alphas, SweepSettings(alphas_per_pass=20)) == [alphas]
    assert ev._alpha_groups(model, interp, alphas, SweepSettings()) == [[a] for a in alphas]
    assert ev._alpha_groups(model, interp, [], SweepSettings(alphas_per_pass=3)) == []


def test_the_config_passes_the_setting_through():
    assert EvalConfig().alphas_per_pass == 1 and "alphas_per_pass" not in EvalConfig().model_dump()
    for value in (4, "auto"):
        cfg = EvalConfig(alphas_per_pass=value)
        assert cfg.model_dump()["alphas_per_pass"] == value
        assert SweepSettings.from_config(cfg, progress=False).alphas_per_pass == value
    assert SweepSettings.from_config(EvalConfig()).alphas_per_pass == 1
    for bad in (0, True, "3", 2.5, "all"):
        with pytest.raises(ValueError):
            EvalConfig(alphas_per_pass=bad)


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_the_benchmark_times_the_sweep_both_ways_and_compares_the_records(tmp_path):
    """benchmarks/multi_alpha.py at a tiny size: every mode timed, and its records agree."""
    import argparse
    import importlib.util
    import json
    from pathlib import Path

    import open_clip

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "multi_alpha.py"
    spec = importlib.util.spec_from_file_location("benchmark_multi_alpha", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "bench-vit-tiny.json").write_text(json.dumps(bench.MODELS["bench-vit-tiny"]))
    open_clip.add_model_config(tmp_path)
    args = argparse.Namespace(images=8, batch_size=4, alphas_per_pass=[11, 4], repeats=2, precision="fp32")
    rows = bench.bench("bench-vit-tiny", args, torch.device("cpu"))
    assert [r["per_pass"] for r in rows] == [1, 11, 4]
    assert all(len(r["times"]) == 2 and r["median"] > 0 for r in rows)
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == rows[0]["median"] / rows[1]["median"]
    assert all(r["agree"].startswith("same top-1 counts; largest difference: ece ") for r in rows)
    assert bench.table(rows).count("\n| bench-vit-tiny |") == 3


def test_auto_on_a_gpu_takes_as_many_alphas_as_half_the_free_memory_holds(bb, monkeypatch):
    # the CUDA branch's arithmetic, on this CPU: the device and its free memory stand in
    from wiseft.merge.stacked import stacked_bytes

    ev = sys.modules["wiseft.evaluation.alpha_sweep"]
    model, theta_0, theta_1 = _model_and_thetas(bb)
    interp = Interpolator(theta_0, theta_1)
    per_alpha = stacked_bytes(theta_0, theta_1)
    alphas = [round(0.1 * i, 1) for i in range(11)]
    monkeypatch.setattr(ev, "device_of", lambda m: torch.device("cuda", 0))
    for free, size in ((2 * 3 * per_alpha, 3), (2 * 3 * per_alpha - 1, 2), (per_alpha, 1), (100 * per_alpha, 11)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 2 * free))
        groups = ev._alpha_groups(model, interp, alphas, SweepSettings(alphas_per_pass="auto"))
        assert [a for g in groups for a in g] == alphas and len(groups[0]) == size, (free, size)

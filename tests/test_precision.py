"""The one precision decision (runtime.choose_precision), every branch with the
hardware detection stubbed both ways, and what a run records of it."""

from __future__ import annotations

import logging

import pytest
import torch

from wiseft.config import FinetuneConfig, parse_config
from wiseft.runtime import choose_precision, compute_info, describe_compute
from wiseft.runtime import device as runtime
from wiseft.runtime.device import cpu_has_bf16, parse_cpuinfo

# the flags line of the two CPUs this project runs on (trimmed): a 2-core Ice Lake Xeon without
# native bf16, and a 2-core AMD EPYC with AVX512-BF16; and an Arm Neoverse V1 (Graviton 3)
XEON = ("model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n"
        "flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512_vnni avx512_bitalg avx512_vpopcntdq\n")
EPYC = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: avx512f avx512_bf16 amx_tile amx_bf16\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm\n"
CPU = torch.device("cpu")


@pytest.fixture
def cpu(monkeypatch):
    """Make this machine's CPU the one whose /proc/cpuinfo text is given, detection not forced."""
    monkeypatch.delenv("WISEFT_NATIVE_BF16", raising=False)

    def use(text: str) -> None:
        monkeypatch.setattr(runtime, "_cpuinfo", lambda: parse_cpuinfo(text))
    return use


@pytest.mark.parametrize("text, native", [(XEON, False), (EPYC, True), (SAPPHIRE, True), (GRAVITON, True)])
def test_native_bf16_is_read_from_the_cpu_flags(cpu, text, native):
    cpu(text)
    assert cpu_has_bf16() is native
    choice = choose_precision("auto", CPU)
    assert choice.precision == ("bf16" if native else "fp32")
    assert choice.why.startswith("auto: ") and ("has native bf16" if native else "lacks native bf16") in choice.why


def test_the_detection_can_be_forced_both_ways(cpu, monkeypatch):
    cpu(EPYC)
    monkeypatch.setenv("WISEFT_NATIVE_BF16", "0")
    choice = choose_precision("auto", CPU)
    assert choice.precision == "fp32" and "WISEFT_NATIVE_BF16=0" in choice.why
    assert compute_info(CPU)["native_bf16_forced"] is False
    assert "no native bf16 (forced)" in describe_compute(compute_info(CPU))
    cpu(XEON)
    monkeypatch.setenv("WISEFT_NATIVE_BF16", "1")
    assert choose_precision("auto", CPU).precision == "bf16"


def test_an_explicit_bf16_on_a_cpu_without_it_runs_and_warns_of_its_cost(cpu, caplog):
    cpu(XEON)
    runtime._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="wiseft"):
        choice = choose_precision("bf16", CPU)
        choose_precision("bf16", CPU)  # once per process, not once per batch
    assert choice.precision == "bf16" and "emulated" in choice.why
    assert caplog.text.count("runs emulated, about 3x slower than fp32") == 1
    assert "Xeon" in caplog.text and "precision: auto picks fp32 here" in caplog.text


def test_explicit_choices_are_kept_and_auto_never_picks_fp16(cpu, caplog):
    cpu(EPYC)
    runtime._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="wiseft"):
        assert choose_precision("bf16", CPU).precision == "bf16"
        assert choose_precision("fp32", CPU).precision == "fp32"
        assert choose_precision("fp16", CPU).precision == "fp16"
    assert caplog.text == ""
    with pytest.raises(ValueError, match="precision must be 'auto' or one of fp32, bf16; got 'fp16'"):
        choose_precision("fp16", CPU, allowed=("fp32", "bf16"))
    with pytest.raises(ValueError, match="got 'tf32'"):
        choose_precision("tf32", CPU)


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_the_device(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    choice = choose_precision("auto", torch.device("cuda", 0))
    assert choice.precision == ("bf16" if supported else "fp32")
    assert "NVIDIA H100" in choice.why
    assert choose_precision("fp16", torch.device("cuda", 0)).precision == "fp16"  # asked for: with a scaler


def test_auto_on_other_devices_is_fp32():
    assert choose_precision("auto", torch.device("mps")).precision == "fp32"


def test_records_name_the_machine(cpu):
    cpu(EPYC)
    info = compute_info(CPU)
    assert info["cpu"] == "AMD EPYC" and info["cpu_flags"] == ["avx512f", "avx512_vnni", "avx512_bf16", "avx2"]
    assert info["native_bf16"] is True and info["torch"] == torch.__version__ and info["cores"] >= 1
    assert "native_bf16_forced" not in info
    assert describe_compute(info).startswith("cpu AMD EPYC, ")
    assert "(avx512_bf16), native bf16, torch " in describe_compute(info)


def test_a_deterministic_recipe_resolves_auto_to_fp32(cpu):
    from wiseft.train.loop import resolved_recipe

    cpu(EPYC)
    assert resolved_recipe(FinetuneConfig(), CPU).precision == "bf16"
    assert resolved_recipe(FinetuneConfig(deterministic=True), CPU).precision == "fp32"
    with pytest.raises(ValueError, match="deterministic: needs precision fp32"):
        FinetuneConfig(deterministic=True, precision="bf16")


def test_a_run_resolves_auto_once_and_its_train_key_says_what_ran(cpu, monkeypatch):
    from wiseft.pipeline import resolve_precisions
    from wiseft.pipeline.plan import precision_text

    cfg = parse_config({"backbone": {"family": "open_clip", "name": "ViT-B-32"},
                        "data": {"train": {"kind": "bbc_news"}, "test": {"kind": "bbc_news", "split": "test"}},
                        "variants": {"fp16": {"precision": "fp16"}, "slow": {"lr": 1e-3}}})
    assert cfg.finetune.precision == "auto" and cfg.evaluation.precision == "auto"
    keys = {}
    for text, expect in ((EPYC, "bf16"), (XEON, "fp32")):
        cpu(text)
        resolved, choices = resolve_precisions(cfg, CPU)
        runs = resolved.finetune_runs()
        assert (resolved.evaluation.precision, runs["finetuned"].precision, runs["slow"].precision) == (expect,) * 3
        assert runs["fp16"].precision == "fp16"
        assert choices["finetuned"].requested == "auto" and choices["fp16"].why == "asked for"
        keys[expect] = resolved.train_key("finetuned")
        line = precision_text(choices, CPU)
        assert f"evaluation {expect}, fine-tune finetuned {expect}, fine-tune fp16 fp16" in line
        assert "computed on: cpu " in line
    assert keys["bf16"] != keys["fp32"]  # a checkpoint trained in bf16 is not reused by an fp32 run


def test_autocast_takes_a_resolved_precision_and_a_trainer_resolves_auto_once(cpu):
    from wiseft.runtime import autocast
    from wiseft.train import Stage, Trainer

    with pytest.raises(ValueError, match="resolve 'auto' with choose_precision first"):
        autocast(CPU, "auto")
    cpu(XEON)
    trainer = Trainer(torch.nn.Linear(2, 2), [(torch.zeros(2), 0)] * 4, lambda b: b, FinetuneConfig(batch_size=2),
                      Stage("e2e", 1, 1e-3), progress=False)
    assert trainer.cfg.precision == "fp32"  # a stage resolves auto before its first step

"""benchmarks/gpu.py, the GPU check, on a CPU: its pieces, and its smoke mode end to end."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA GH200 480GB", 989.0), ("NVIDIA L40S", 362.0)])
def test_peak_by_device_name(gpu, monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert gpu.peak_tflops(torch.device("cuda"), None)[0] == peak
    assert gpu.peak_tflops(torch.device("cuda"), 500.0) == (500.0, "--peak-tflops")


def test_no_peak_for_an_unknown_device(gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Card 9000")
    assert gpu.peak_tflops(torch.device("cuda"), None) == (None, "'Some Card 9000' is not in the table "
                                                                  "(give --peak-tflops)")
    assert gpu.peak_tflops(torch.device("cpu"), None)[0] is None


def test_counted_flops_of_a_small_model(gpu):
    """Conv 3->4, kernel and stride 8, on 32x32 (16 positions), then a 64->10 linear layer.
    Forward: conv 2*64*192 = 24576, linear 2*64*10 = 1280, total 25856 per image. Backward:
    the conv's weight gradient 24576 (the image needs none), the linear layer's input and
    weight gradients 1280 each: training is 52992 per image."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert gpu.count_flops(model, 32, torch.device("cpu"), train=False) == 25856
    assert gpu.count_flops(model, 32, torch.device("cpu"), train=True) == 52992
    assert all(p.grad is None for p in model.parameters())


def test_timed_steps_stop_at_the_budget(gpu):
    calls = []
    n, seconds, warm = gpu.timed_steps(lambda: (calls.append(1), time.sleep(0.05)), torch.device("cpu"),
                                       warmup=1, steps=100, budget=0.2)
    assert 1 <= n <= 4 and len(calls) == n + 1  # 0.05 s a step: the budget ends it after 3 or 4 steps
    assert seconds >= 0.05 * n and warm >= 0.05
    n, _, _ = gpu.timed_steps(lambda: time.sleep(0.01), torch.device("cpu"), warmup=0, steps=5, budget=0.0)
    assert n == 1  # at least one timed step


def test_past_the_deadline_every_stage_is_skipped_and_written(gpu, tmp_path):
    out = tmp_path / "check.md"
    assert gpu.main(["--smoke", "--deadline", "-1", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "stage" not in line]
    assert len(rows) == 6 and all("skipped: past the deadline (-1 s)" in r for r in rows)
    assert "plan: smoke (tiny ViT, a few steps), 11 alphas, deadline -1 s" in text
    assert "peak dense bf16: unknown (unknown for a CPU (give --peak-tflops))" in text


def test_a_stage_that_fails_is_a_failed_row_and_the_check_goes_on(gpu, monkeypatch, tmp_path):
    def broken(what):
        def stage(*args, **kwargs):
            raise RuntimeError(f"no {what} here")
        return stage

    for name in ("stage_train", "stage_fp16", "eval_case", "stage_compile"):
        monkeypatch.setattr(gpu, name, broken(name))
    out = tmp_path / "check.md"
    assert gpu.main(["--smoke", "--out", str(out)]) == 1
    notes = [line.split(" | ")[-1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert notes == ["FAILED: RuntimeError: no stage_train here |", "FAILED: RuntimeError: no stage_fp16 here |"] + \
        ["FAILED: RuntimeError: no eval_case here |"] * 3 + ["FAILED: RuntimeError: no stage_compile here |"]


def test_table_formats_rates_mfu_and_speedups(gpu):
    rows = [gpu.Row("train", "ViT-B-16", "bf16", 256, 30, 3500.0, 368.0, 0.372, note="x"),
            gpu.Row("eval, 11 alphas per pass (vmap)", "ViT-B-16", "bf16", 256, "11 alphas x 16", 9000.0,
                    speedup=1.5)]
    text = gpu.table(rows, ["device: test"])
    assert "| train | ViT-B-16 | bf16 | 256 | 30 | 3500.0 | 368 | 37.2% | n/a | x |" in text
    assert "| eval, 11 alphas per pass (vmap) | ViT-B-16 | bf16 | 256 | 11 alphas x 16 | 9000.0 | n/a | n/a | 1.50x" \
        in text


@pytest.mark.slow
def test_smoke_mode_runs_every_stage_on_a_cpu(gpu, tmp_path):
    torch.set_num_threads(1)  # a tiny model on a busy machine: threads only wait for each other
    peak = 0.001  # TFLOP/s, so the tiny model's MFU is a number to check
    rows = gpu.run_check(gpu.Plan.smoke(), torch.device("cpu"), peak)
    assert [r.stage for r in rows] == ["train", "fp16 + GradScaler", "eval, one alpha at a time",
                                       "eval, 11 alphas per pass (vmap)", "eval, 11 alphas per pass (loop)",
                                       "train, torch.compile"]
    assert all(r.ok for r in rows), [r.note for r in rows if not r.ok]
    train, fp16, one, vmapped, looped, compiled = rows
    model, size = gpu.build_model(gpu.TINY, torch.device("cpu"))
    flops = gpu.count_flops(model, size, torch.device("cpu"), train=True)
    for r in (train, compiled):
        assert r.tflops == pytest.approx(r.images_per_s * flops / 1e12, rel=1e-12)
        assert r.mfu == pytest.approx(r.tflops / peak, rel=1e-12)
    assert compiled.speedup == pytest.approx(compiled.images_per_s / train.images_per_s, rel=1e-12)
    assert fp16.note.startswith("passed: ") and "(all finite)" in fp16.note
    assert one.steps == "11 alphas x 4" and vmapped.steps == looped.steps == "11 alphas x 4"
    for r in (vmapped, looped):
        assert r.speedup == pytest.approx(r.images_per_s / one.images_per_s, rel=1e-12)
        assert "top-1 agreement 1.0000" in r.note
    assert "max |logit diff| 0.00e+00" in looped.note  # the loop runs the very kernels of one alpha at a time

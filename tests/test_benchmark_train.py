"""benchmarks/train.py's LoRA comparison builds the models it measures: a process that
measures one mode's peak memory holds that mode's model only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("open_clip")
pytest.importorskip("peft")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_pair_builds_only_the_modes_asked_for():
    bench = _script()
    both, inputs, labels = bench.lora_pair("tiny", 2)
    assert set(both) == {"e2e", "lora"} and both["e2e"] is not both["lora"]
    assert not any("lora_" in n for n, _ in both["e2e"].named_parameters())
    one, _, _ = bench.lora_pair("tiny", 2, ("lora",))
    assert set(one) == {"lora"} and any("lora_" in n for n, _ in one["lora"].named_parameters())
    assert {n for n, _ in one["lora"].named_parameters()} == {n for n, _ in both["lora"].named_parameters()}

"""One context manager for the numeric flags (wiseft.runtime.device.deterministic_numerics):
evaluation's fp32 (deterministic algorithms, warnings where an op has none) and
training's deterministic mode (strict, plus cudnn.deterministic and cuBLAS's workspace)
set them, and every flag is restored on exit, an exception included."""

from __future__ import annotations

import os

import pytest
import torch

from wiseft.runtime import deterministic_numerics, numerics
from wiseft.train.engine import deterministic

CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


def _flags() -> dict:
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(), "cublas": os.environ.get(CUBLAS)}


@pytest.fixture
def odd_flags(monkeypatch):
    """Every flag away from what the contexts set (warn_only on while determinism is off),
    put back as it was after the test."""
    before = _flags()
    monkeypatch.delenv(CUBLAS, raising=False)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    torch.use_deterministic_algorithms(False, warn_only=True)
    yield _flags()
    torch.backends.cuda.matmul.allow_tf32 = before["matmul_tf32"]
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before["cudnn_tf32"], before["benchmark"]
    torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
    torch.use_deterministic_algorithms(before["deterministic"], warn_only=before["warn_only"])


EVALUATION = {"matmul_tf32": False, "cudnn_tf32": False, "benchmark": False, "cudnn_deterministic": False,
              "deterministic": True, "warn_only": True, "cublas": None}
TRAINING = {**EVALUATION, "cudnn_deterministic": True, "warn_only": False, "cublas": ":4096:8"}
CONTEXTS = {
    "evaluation fp32": (lambda: numerics("fp32", torch.device("cpu")), EVALUATION),
    "runtime, warn only": (lambda: deterministic_numerics(), EVALUATION),
    "training deterministic": (lambda: deterministic(True), TRAINING),
    "runtime, strict": (lambda: deterministic_numerics(strict=True), TRAINING),
}


@pytest.mark.parametrize("name", list(CONTEXTS))
def test_flags_set_inside_and_restored_after(odd_flags, name):
    context, inside = CONTEXTS[name]
    with context():
        assert _flags() == inside
    assert _flags() == odd_flags


@pytest.mark.parametrize("name", list(CONTEXTS))
def test_flags_restored_after_an_exception(odd_flags, name):
    context, _ = CONTEXTS[name]
    with pytest.raises(KeyError, match="boom"), context():
        raise KeyError("boom")
    assert _flags() == odd_flags


def test_a_cublas_setting_already_there_is_kept(odd_flags, monkeypatch):
    monkeypatch.setenv(CUBLAS, ":16:8")
    with deterministic(True):
        assert os.environ[CUBLAS] == ":16:8"
    assert os.environ[CUBLAS] == ":16:8"


def test_off_and_bf16_leave_the_flags_alone(odd_flags):
    with deterministic(False):
        assert _flags() == odd_flags
    with numerics("bf16", torch.device("cpu")):
        assert _flags() == odd_flags
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")

"""How to evaluate: the evaluation section of a config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(256, ge=1)
    # auto: bf16 where the device runs it natively, else fp32 (runtime.choose_precision)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    cache: bool | Literal["auto", "memory", "disk"] = "auto"  # decode each input once
    cache_dir: str | None = None  # where a memory-mapped input cache goes (default: a temp dir)
    num_workers: int | None = Field(None, ge=0)
    fp32_check: int = Field(512, ge=0)  # bf16 runs: inputs per set re-run in fp32 to report the difference
    # alphas whose logits one read of each batch gives (evaluate.SweepSettings): 1, one at a
    # time; N, up to N; "auto", as many as fit on a CUDA device (1 on CPU). At its default it
    # is left out of the dump, so configs written before it keep their hash and YAML dump
    # (tests/test_config_pins.py); another value is dumped and hashed, since vmapped logits
    # equal one alpha at a time's to float rounding, not bit for bit.
    alphas_per_pass: Annotated[int, Field(strict=True, ge=1)] | Literal["auto"] = Field(
        1, exclude_if=lambda v: v == 1)

"""How to evaluate: the evaluation section of a config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(256, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    cache: bool | Literal["auto", "memory", "disk"] = "auto"  # decode each input once
    cache_dir: str | None = None  # where a memory-mapped input cache goes (default: a temp dir)
    num_workers: int | None = Field(None, ge=0)
    fp32_check: int = Field(512, ge=0)  # bf16 runs: inputs per set re-run in fp32 to report the difference

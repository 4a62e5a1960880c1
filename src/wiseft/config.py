"""Typed, validated run configuration: YAML in, clear errors out, YAML out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .backbones.base import BackboneSpec
from .finetune import FinetuneConfig


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file and field."""


DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


class DataConfig(BaseModel):
    """Reference train/test sets, shift sets and the class list and templates."""

    model_config = ConfigDict(extra="forbid")

    name: str = "reference"
    classnames: list[str] | str | None = None
    templates: str | list[str] = "openai_imagenet"
    train: dict[str, Any]
    test: dict[str, Any]
    shifts: dict[str, dict[str, Any]] = {}
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0

    @field_validator("train", "test")
    @classmethod
    def _has_kind(cls, v):
        if "kind" not in v:
            raise ValueError("a dataset needs a 'kind' (e.g. image_folder, manifest)")
        return v


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(256, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    cache: bool | Literal["auto", "memory", "disk"] = "auto"  # decode each input once
    cache_dir: str | None = None  # where a memory-mapped input cache goes (default: a temp dir)
    num_workers: int | None = Field(None, ge=0)
    fp32_check: int = Field(512, ge=0)  # bf16 runs: inputs per set re-run in fp32 to report the difference


class RunConfig(BaseModel):
    """Everything ``wiseft run`` needs; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    backbone: BackboneSpec
    data: DataConfig
    finetune: FinetuneConfig = FinetuneConfig()
    variants: dict[str, dict[str, Any]] = {}
    alphas: list[float] = list(DEFAULT_ALPHAS)
    allow_extrapolation: bool = False
    select_alpha: float | None = None
    evaluation: EvalConfig = EvalConfig()
    output_dir: str = "runs/wiseft"
    device: str = "auto"
    head_cache: bool = True
    export: bool = True
    base_dir: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check(self):
        if not self.alphas:
            raise ValueError("alphas: give at least one alpha")
        bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if bad and not self.allow_extrapolation:
            raise ValueError(f"alphas: {bad} outside [0, 1]; set allow_extrapolation: true to extrapolate")
        for name, overrides in self.variants.items():
            if name == "finetuned":
                raise ValueError("variants: 'finetuned' names the main run; choose another name")
            try:
                FinetuneConfig(**{**self.finetune.model_dump(), **overrides})
            except ValidationError as e:
                raise ValueError(f"variants.{name}: {_first_error(e)}") from None
        return self

    def finetune_runs(self) -> dict[str, FinetuneConfig]:
        """The main fine-tune ('finetuned') and each variant, by name."""
        runs = {"finetuned": self.finetune}
        for name, overrides in self.variants.items():
            runs[name] = FinetuneConfig(**{**self.finetune.model_dump(), **overrides})
        return runs

    def train_key(self, name: str = "finetuned") -> str:
        """What a fine-tuned checkpoint depends on (backbone, data, fine-tuning settings):
        a checkpoint with the same key is reused instead of training again."""
        obj = [self.backbone.model_dump(mode="json"), self.data.model_dump(mode="json"),
               self.finetune_runs()[name].model_dump(mode="json")]
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def parse_config(data: dict[str, Any], *, source: str = "config", base_dir: str | Path | None = None) -> RunConfig:
    """Validate a config mapping; errors name the source and the first bad field."""
    try:
        cfg = RunConfig(**data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_first_error(e)}") from None
    cfg.base_dir = str(base_dir) if base_dir is not None else None
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML config; relative paths in it resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_config(data, source=str(path), base_dir=path.parent.resolve())

"""Typed, validated run configuration: YAML in, clear errors out, YAML out."""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wiseft.config.backbone import BackboneSpec
from wiseft.config.datasets import DatasetSpec, describe_type
from wiseft.config.errors import ConfigError, FieldError
from wiseft.config.evaluation import EvalConfig
from wiseft.config.finetune import FinetuneConfig
from wiseft.config.merge import MergeRun, MergeSpec, check_merges, resolve_merge
from wiseft.config.tracking import TrackingConfig
from wiseft.core import TEMPLATES, classnames_problem, deferred_plugins, did_you_mean, template_problem

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


class DataConfig(BaseModel):
    """Reference train/test sets, shift sets and the class list and templates."""

    model_config = ConfigDict(extra="forbid")

    name: str = "reference"
    classnames: list[str] | str | None = None
    templates: str | list[str] | None = None  # None: the reference dataset's own set, else openai_imagenet
    train: DatasetSpec
    test: DatasetSpec
    shifts: dict[str, DatasetSpec] = {}
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    # the fraction of a set (training or evaluation) whose inputs may be unreadable: they are
    # skipped and counted; more is an error naming the set and the first bad file. Left out of
    # the dump at its default, so configs written before it keep their hash and train key.
    max_unreadable: float = Field(0.01, ge=0.0, le=1.0, exclude_if=lambda v: v == 0.01)

    @field_validator("classnames")
    @classmethod
    def _classnames(cls, v):
        if isinstance(v, str) and not v.strip():
            raise FieldError((), "empty; give a list of class names or a file with one per line")
        if isinstance(v, list):
            problem = classnames_problem(v, "data.classnames.{}")
            if problem:
                raise FieldError(() if problem[0] is None else (problem[0],), problem[1])
        return v

    @field_validator("templates")
    @classmethod
    def _templates(cls, v):
        if isinstance(v, str):
            if v not in TEMPLATES:
                raise FieldError((), TEMPLATES.unknown(v))
        elif v is not None:
            if not v:
                raise FieldError((), "give at least one template, or a template set's name")
            for i, t in enumerate(v):
                problem = template_problem(t)
                if problem:
                    raise FieldError((i,), problem)
        return v


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
    # merge methods scored over the same sets (config/merge.py); left out of the dump when
    # empty, so configs written before it keep their hash
    merges: list[MergeSpec] = Field(default_factory=list, exclude_if=lambda v: not v)
    output_dir: str = "runs/wiseft"
    # experiment trackers (config/tracking.py); left out of the dump at its default, so configs
    # written before it keep their hash, and out of the config hash always (where metrics are
    # also sent changes no result)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, exclude_if=lambda v: v == TrackingConfig())
    device: str = "auto"
    head_cache: bool = True
    export: bool = True
    _base_dir: str | None = PrivateAttr(None)  # the folder relative paths resolve against
    _source: str | None = PrivateAttr(None)  # the file (or label) it was read from, for errors

    @model_validator(mode="wrap")
    @classmethod
    def _where_from(cls, data: Any, handler: Callable[[Any], RunConfig], info: ValidationInfo) -> RunConfig:
        """Set ``source`` and ``base_dir`` while the config is built, never after: from the
        validation context ``parse_config`` passes, else from a ``base_dir=`` keyword
        (accepted as when it was a field; it is not part of the config's dump or hash)."""
        given = None
        if isinstance(data, dict) and "base_dir" in data:
            data = dict(data)
            given = data.pop("base_dir")
        cfg = handler(data)
        context = info.context or {}
        if isinstance(data, dict) or context:  # not a RunConfig passed through again
            base_dir = context.get("base_dir", given)
            cfg._base_dir = None if base_dir is None else str(base_dir)
            cfg._source = context.get("source")
        return cfg

    @model_validator(mode="after")
    def _check(self):
        if not self.alphas:
            raise FieldError(("alphas",), "give at least one alpha")
        for i, a in enumerate(self.alphas):
            if not math.isfinite(a):
                raise FieldError(("alphas", i), f"{a} is not a number")
            if a in self.alphas[:i]:
                raise FieldError(("alphas", i), f"{a} is listed twice")
        bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if bad and not self.allow_extrapolation:
            raise FieldError(("alphas",), f"{bad} outside [0, 1]; set allow_extrapolation: true to extrapolate")
        if self.select_alpha is not None and not 0.0 <= self.select_alpha <= 1.0:  # NaN fails too
            raise FieldError(("select_alpha",), f"{self.select_alpha} outside [0, 1]; the alpha chosen for the "
                             "summary and the export is a mix of the two models (allow_extrapolation "
                             "covers the sweep only)")
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+|mps", self.device):
            hint = did_you_mean(self.device, ["auto", "cpu", "cuda", "mps"])
            raise FieldError(("device",), f"unknown device {self.device!r}"
                             + (f"; did you mean {hint!r}?" if hint else "") + " use auto, cpu, cuda, cuda:N or mps")
        for name, overrides in self.variants.items():
            if name == "finetuned":
                raise FieldError(("variants", name), "'finetuned' names the main run; choose another name")
            if not name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
                raise FieldError(("variants", name), "a variant's name names its checkpoint and log files: "
                                 "give a non-empty name without '/' or '\\'")
            try:
                FinetuneConfig(**{**self.finetune.model_dump(), **overrides})
            except ValidationError as e:
                loc, msg = _describe(e.errors()[0], FinetuneConfig)
                raise FieldError(("variants", name, *loc), msg) from None
        try:
            check_merges(self.merges, ["finetuned", *self.variants], self.data.validation_fraction > 0)
        except FieldError as e:
            raise FieldError(("merges", *e.loc), e.message) from None
        return self

    @property
    def base_dir(self) -> str | None:
        """The folder relative paths in the config resolve against (a YAML file's own), or None."""
        return self._base_dir

    @property
    def source(self) -> str | None:
        """The file (or label) this config was read from, or None."""
        return self._source

    def error(self, field: str, message: object) -> ConfigError:
        """A ConfigError naming this config's file (when it was read from one) and ``field``."""
        return ConfigError(f"{self._source + ': ' if self._source else ''}{field}: {message}")

    def finetune_runs(self) -> dict[str, FinetuneConfig]:
        """The main fine-tune ('finetuned') and each variant, by name."""
        runs = {"finetuned": self.finetune}
        for name, overrides in self.variants.items():
            runs[name] = FinetuneConfig(**{**self.finetune.model_dump(), **overrides})
        return runs

    def merge_runs(self) -> list[MergeRun]:
        """The ``merges:`` entries resolved against this run: labels, models and search
        grids (a linear entry's default search is the run's alphas)."""
        return [resolve_merge(spec, list(self.finetune_runs()), self.alphas, self.data.validation_fraction > 0)
                for spec in self.merges]

    def train_key(self, name: str = "finetuned") -> str:
        """What a fine-tuned checkpoint depends on (backbone, data, fine-tuning settings):
        a checkpoint with the same key is reused instead of training again."""
        data = self.data.model_dump(mode="json", exclude={"max_unreadable"})  # a threshold, not the trained result
        obj = [self.backbone.model_dump(mode="json"), data,
               self.finetune_runs()[name].model_dump(mode="json")]
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]

    def config_hash(self) -> str:
        """What the run's results depend on; ``tracking`` (where metrics are also sent) is left out."""
        dump = self.model_dump(mode="json", exclude={"tracking"})
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _first_error(e: ValidationError, model: type[BaseModel] = RunConfig) -> str:
    """'dotted.field: message' for the first error, with the closest valid key for an unknown one."""
    loc, msg = _describe(e.errors()[0], model)
    where = ".".join(loc)
    return f"{where}: {msg}" if where else msg


def _describe(err: dict, model: type[BaseModel]) -> tuple[tuple[str, ...], str]:
    """(dotted location, message) of one pydantic error under ``model``."""
    loc, union = _strip_union_tags(err["loc"], model)
    msg = err["msg"]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return loc + cause.loc, cause.message
    if err["type"] == "value_error":
        return loc, msg.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        if known is not None:
            hint = did_you_mean(loc[-1], known)
            msg += f"; unknown key {loc[-1]!r}, " + (f"did you mean {hint!r}?" if hint else f"known: {', '.join(known)}")
    elif union is not None:  # the value fits none of a union's types: name them all
        msg = f"expected {describe_type(union)}, got {err.get('input')!r}"
    return loc, msg


def _strip_union_tags(loc: tuple, model: type[BaseModel]) -> tuple[tuple[str, ...], Any]:
    """``loc`` without the member tags pydantic adds below a union-typed field
    (``data.templates.str`` -> ``data.templates``), and that union when the error is
    about the field's value as a whole (else None)."""
    out, i, current = [], 0, model
    while i < len(loc):
        part = loc[i]
        out.append(str(part))
        i += 1
        field = current.model_fields.get(part) if current is not None and isinstance(part, str) else None
        current = None
        if field is None:
            continue
        ann = field.annotation
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(members) > 1:
            if i < len(loc) and isinstance(loc[i], str):
                i += 1  # the member tag
                if i == len(loc):
                    return tuple(out), ann
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            current = ann
    return tuple(out), None


def _fields_at(model: type[BaseModel], path: tuple[str, ...]) -> list[str] | None:
    """The keys a config section takes (``finetune`` -> FinetuneConfig's fields), or None."""
    for part in path:
        if part.isdigit():  # an index into a list of sections (merges.0)
            continue
        if part not in model.model_fields:
            return None
        inner = [t for t in (model.model_fields[part].annotation, *typing.get_args(model.model_fields[part].annotation))
                 if isinstance(t, type) and issubclass(t, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return [n for n, f in model.model_fields.items() if not f.exclude]


def parse_config(data: dict[str, Any], *, source: str = "config", base_dir: str | Path | None = None) -> RunConfig:
    """Validate a config mapping; errors name the source and the first bad field."""
    context = {"source": source, "base_dir": base_dir}
    try:
        return RunConfig.model_validate(data, context=context)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_first_error(e)}") from None


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
    # first every check the plug-ins do not decide, without importing them (torch), so that
    # most bad configs fail in a fraction of a second; then the whole validation
    with deferred_plugins():
        parse_config({k: v for k, v in data.items() if k != "merges"}, source=str(path),
                     base_dir=path.parent.resolve())
    return parse_config(data, source=str(path), base_dir=path.parent.resolve())

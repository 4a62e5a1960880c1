"""How to merge checkpoints: ``MergeConfig``, the settings of every merge, in memory or
out of core; and the ``merges:`` list of a run config (``MergeSpec``, resolved against
its run as ``MergeRun``): merge methods evaluated over the run's reference and shift
sets, each with fixed parameters and a grid searched on the held-out validation split
(docs/evaluation.md, "Merge methods in a run").

A ``merges:`` entry is checked against the method's registered parameter model when the
config is loaded; the run's own checks (its fine-tunes' names, the method's model counts,
a validation split for a search, unique labels) are in ``RunConfig``.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wiseft.config.errors import FieldError
from wiseft.core import MERGE_METHODS, did_you_mean

DEFAULT_CHUNK_BYTES = 16 << 20


def parse_size(text: str | int) -> int:
    """Bytes from ``"5GB"``, ``"500MiB"``, ``"1e9"`` or an int."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?)B?\s*", text, flags=re.I)
    if not m:
        raise ValueError(f"cannot read {text!r} as a size (e.g. 5GB, 500MiB)")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index((m.group(2) or " ").upper()))


class MergeConfig(BaseModel):
    """The settings of a merge (``wiseft interpolate`` and ``wiseft soup`` take the same).

    A tensor is mixed when its name matches an ``include`` glob (every name when None)
    and no ``exclude`` glob; any other comes unchanged from input ``keep`` (None: the
    operation's own default, the fine-tuned side 1 for an interpolation of two models,
    input 0 for an average). ``allow_extrapolation`` opts in to alphas outside [0, 1].
    The out-of-core engine reads ``chunk_bytes`` at a time and writes directory outputs
    as shards of at most ``max_shard_bytes`` (``"5GB"``, ``"500MiB"`` or bytes; default 5 GB).

    Example:
        >>> MergeConfig(exclude=["head.*"], max_shard_bytes="5GB")
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    keep: int | None = None
    allow_extrapolation: bool = False
    max_shard_bytes: int | str | None = None  # read when a merge writes shards (parse_size)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    @field_validator("exclude", mode="before")
    @classmethod
    def _no_exclude(cls, value: Any) -> Any:
        return () if value is None else value

    @property
    def shard_bytes(self) -> int | None:
        """``max_shard_bytes`` in bytes, or None when unset (ValueError when it is no size)."""
        return None if self.max_shard_bytes is None else parse_size(self.max_shard_bytes)


class MergeSpec(BaseModel):
    """One entry of ``merges:``.

    ``method``: a registered merge method (``wiseft list``); ``models``: the run's
    fine-tunes it merges (``finetuned`` and the names of ``variants``; default: the main
    one for a one-model method, every fine-tune otherwise); ``params``: the method's fixed
    parameters; ``search``: parameter -> the values to try, a grid (every combination)
    searched on the validation split; ``name``: the label of its records (default: the
    method and its fixed parameters). Fields left at their default are left out of the
    dump.

    Example:
        >>> MergeSpec(method="ties", search={"density": [0.1, 0.2, 0.5]})
        >>> MergeSpec(method="linear", name="per-layer", search={"ramp": [[0.2, 0.8], [0.5, 0.5]]})
    """

    model_config = ConfigDict(extra="forbid")

    method: str
    models: list[str] | None = Field(None, exclude_if=lambda v: v is None)
    params: dict[str, Any] = Field(default_factory=dict, exclude_if=lambda v: not v)
    search: dict[str, list[Any]] = Field(default_factory=dict, exclude_if=lambda v: not v)
    name: str | None = Field(None, exclude_if=lambda v: v is None)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in MERGE_METHODS:
            raise FieldError((), MERGE_METHODS.unknown(v))
        method = MERGE_METHODS.get(v)
        needs = tuple(getattr(method, "needs", ()))
        if needs:
            raise FieldError((), f"merge method {v!r} needs {', '.join(needs)} beyond the weights; a run's "
                             "merges: list runs plain merges only")
        if method.extras and not getattr(method, "extras_optional", False):
            raise FieldError((), f"merge method {v!r} reads per-model {', '.join(method.extras)} tensors, "
                             "which a run does not compute")
        return v

    @field_validator("name")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise FieldError((), "give a non-empty label, or leave name out for one derived from the method")
        return v

    @model_validator(mode="after")
    def _check_params(self) -> MergeSpec:
        fields = list(MERGE_METHODS.get(self.method).params.model_fields)
        for where, keys in (("params", self.params), ("search", self.search)):
            for key in keys:
                if key not in fields:
                    hint = did_you_mean(key, fields)
                    raise FieldError((where, key), f"merge method {self.method!r} has no parameter {key!r}; "
                                     + (f"did you mean {hint!r}?" if hint else
                                        f"it takes: {', '.join(fields) or 'none'}"))
        for key, values in self.search.items():
            if key in self.params:
                raise FieldError(("search", key), f"{key!r} is fixed in params and searched here; give it in one")
            if not values:
                raise FieldError(("search", key), "give at least one value to try")
            for i, v in enumerate(values):
                if v in values[:i]:
                    raise FieldError(("search", key, i), f"{v!r} is listed twice")
        for point in grid(self.search):
            self._check_point(point)
        return self

    def _check_point(self, point: dict[str, Any]) -> None:
        """FieldError naming the field (in ``search`` or ``params``) of a grid point the
        method's parameter model refuses."""
        try:
            MERGE_METHODS.get(self.method).params(**{**self.params, **point})
        except ValidationError as e:
            first = e.errors()[0]
            key = str(first["loc"][0]) if first["loc"] else ""
            msg = first["msg"].removeprefix("Value error, ")
            if key in point:
                raise FieldError(("search", key, self.search[key].index(point[key])), msg) from None
            if not key and point and self._valid(self.params):  # a check across fields that a point fails
                raise FieldError(("search",), f"{msg} (at {_short(point)})") from None
            raise FieldError(("params", key) if key else ("params",), msg) from None

    def _valid(self, params: dict[str, Any]) -> bool:
        try:
            MERGE_METHODS.get(self.method).params(**params)
        except ValidationError:
            return False
        return True

    def label(self) -> str:
        """``name``, else the method and its fixed parameters: ``ties``, ``dare (seed=1)``."""
        if self.name is not None:
            return self.name
        if not self.params:
            return self.method
        return f"{self.method} ({', '.join(f'{k}={_short(v)}' for k, v in self.params.items())})"


def grid(search: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the ``search`` values, as ``{parameter: value}`` points, the
    last parameter varying fastest; ``[{}]`` (one point, nothing searched) when empty."""
    keys = list(search)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(search[k] for k in keys))]


def _short(value: Any) -> str:
    """A parameter value as a label shows it: JSON, without spaces after commas."""
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


@dataclass(frozen=True)
class MergeRun:
    """A ``merges:`` entry resolved against its run: the label its records carry, the
    method, the fine-tunes it merges, its fixed parameters, and the search grid
    (``search`` with the run's default filled in: a linear entry that fixes neither
    ``alpha`` nor ``ramp`` searches alpha over the run's alphas, as WiSE-FT's sweep does).

    Example:
        >>> [m.name for m in cfg.merge_runs()]
        ['linear', 'ties']
    """

    name: str
    method: str
    models: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    search: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def points(self) -> list[dict[str, Any]]:
        """The search grid (``grid``): one point per combination; ``[{}]`` without a search."""
        return grid(self.search)

    def params_at(self, point: dict[str, Any]) -> dict[str, Any]:
        """The parameters of one grid point: the fixed ones with the point's values."""
        return {**self.params, **point}

    @property
    def alpha_search(self) -> bool:
        """Whether this is WiSE-FT itself: linear, one model, a global alpha searched and
        nothing else set, so the sweep's records of its fine-tune are its search."""
        return (self.method == "linear" and list(self.search) == ["alpha"]
                and set(self.params) <= {"allow_extrapolation"})


def default_models(method: str, finetunes: Sequence[str]) -> list[str]:
    """The fine-tunes an entry without ``models`` merges: the main one for a one-model
    method, every fine-tune of the run otherwise."""
    return list(finetunes[:1]) if MERGE_METHODS.get(method).max_models == 1 else list(finetunes)


def resolve_merge(spec: MergeSpec, finetunes: Sequence[str], alphas: Iterable[float],
                  validation: bool) -> MergeRun:
    """``spec`` against its run: models defaulted, and a linear entry without ``alpha``,
    ``ramp`` or a search searching alpha over ``alphas`` (only with a ``validation``
    split; without one it keeps the method's default alpha, 0.5)."""
    params, search = dict(spec.params), {k: tuple(v) for k, v in spec.search.items()}
    if spec.method == "linear" and not search and not {"alpha", "ramp"} & set(params) and validation:
        alphas = list(alphas)
        search = {"alpha": tuple(alphas)}
        if any(not 0.0 <= a <= 1.0 for a in alphas):  # the run allows extrapolation, or alphas would be refused
            params.setdefault("allow_extrapolation", True)
    models = tuple(spec.models if spec.models is not None else default_models(spec.method, finetunes))
    return MergeRun(spec.label(), spec.method, models, params, search)


def check_merges(specs: Sequence[MergeSpec], finetunes: Sequence[str], validation: bool) -> None:
    """The checks of ``merges:`` that need the run: FieldError (below ``merges``) for a
    model that is no fine-tune of the run, a model count the method refuses, a search
    without a validation split, or a label used twice or taken by a fine-tune's records."""
    taken = {n: "a fine-tune" for n in finetunes} | {f"{n} (output ensemble)": "an output ensemble" for n in finetunes}
    for i, spec in enumerate(specs):
        method = MERGE_METHODS.get(spec.method)
        models = spec.models if spec.models is not None else default_models(spec.method, finetunes)
        for j, m in enumerate(models):
            if m not in finetunes:
                hint = did_you_mean(m, finetunes)
                raise FieldError((i, "models", j), f"{m!r} is not a fine-tune of this run; "
                                 + (f"did you mean {hint!r}? " if hint else "") + f"known: {', '.join(finetunes)}")
            if m in models[:j]:
                raise FieldError((i, "models", j), f"{m!r} is listed twice")
        if not method.takes(len(models)):
            why = "" if spec.models is not None else " (by default: " + ", ".join(models) + "; add variants:)"
            raise FieldError((i, "models"), f"merge method {spec.method!r} takes {method.models_wanted()} "
                             f"fine-tuned model(s), got {len(models)}{why}")
        if spec.search and not validation:
            raise FieldError((i, "search"), "a search is scored on the held-out validation split; set "
                             "data.validation_fraction above 0, or fix the parameters in params")
        label = spec.label()
        if label in taken:
            raise FieldError((i, "name"), f"the label {label!r} is taken by {taken[label]}; give this entry "
                             "another name")
        taken[label] = f"merges.{i}"

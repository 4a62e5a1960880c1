"""Dataset specs (``{"kind": ..., **options}``) checked against the registered builders'
signatures, without reading any file: the one check of a config's datasets and of
``build_dataset``."""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import PurePath
from typing import Any, Mapping

from pydantic import GetCoreSchemaHandler, TypeAdapter, ValidationError
from pydantic_core import CoreSchema, core_schema

from wiseft.config.errors import FieldError
from wiseft.core import DATASETS, did_you_mean

_CLASS_MAP = dict[str, str | int | list[str | int]]  # dataset class -> reference class name(s) or index(es)
# keys of a spec that the run reads (projecting a set onto the reference classes), not the builder
RUN_KEYS = ("class_map", "subset")


class DatasetSpec(dict[str, Any]):
    """A dataset as a config names it: ``{"kind": ..., **options}``, plus the run's own
    keys ``class_map`` and ``subset``. As a config field it is checked against the kind's
    registered builder (``check_dataset_spec``: option names, required options, values
    against the builder's annotations) and holds, and dumps, exactly what was written; it
    is a dict, so ``spec["kind"]``, ``spec.get(...)`` and ``dict(spec)`` read it as before.

    Example:
        >>> spec = DatasetSpec.check({"kind": "cifar10", "root": "data", "split": "test"})
        >>> spec.kind, spec.options
        ('cifar10', {'root': 'data', 'split': 'test'})
    """

    @classmethod
    def check(cls, spec: Mapping[str, Any]) -> "DatasetSpec":
        """``spec`` as a DatasetSpec (a copy), or a FieldError naming the first problem:
        where inside the spec, and why."""
        problem = check_dataset_spec(spec)
        if problem:
            raise FieldError(*problem)
        return cls(spec)

    @property
    def kind(self) -> str:
        """The registered dataset kind."""
        return self["kind"]

    @property
    def options(self) -> dict[str, Any]:
        """The builder's keyword arguments: every key but ``kind`` and the run's keys."""
        return {k: v for k, v in self.items() if k != "kind" and k not in RUN_KEYS}

    @property
    def class_map(self) -> dict[str, Any] | None:
        """Dataset class -> reference class name(s) or index(es), or None."""
        return self.get("class_map")

    @property
    def subset(self) -> bool:
        """Whether the set's classes may be a proper subset of the reference classes."""
        return self.get("subset", False) is True

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # validated as a dict, then checked; serialised as the plain dict it holds
        return core_schema.no_info_after_validator_function(cls.check, handler.generate_schema(dict[str, Any]))


def dataset_options(kind: str) -> dict[str, inspect.Parameter]:
    """The options a dataset kind's builder takes (``base_dir`` is set by the loader)."""
    params = inspect.signature(DATASETS.get(kind)).parameters
    return {n: p for n, p in params.items()
            if n != "base_dir" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_dataset_spec(spec: Mapping[str, Any]) -> tuple[tuple[str, ...], str] | None:
    """The first problem with a dataset spec ``{"kind": ..., **options}`` that building it
    would hit, as (where inside the spec, message), or None. Checks the kind, option
    names (suggesting the closest), required options, and each option value against the
    builder's annotation (so ``split: tran`` names the allowed values). Nothing is read
    from disk: paths are checked when the dataset is built."""
    if not isinstance(spec, Mapping):
        return (), f"a dataset is a mapping with a 'kind' and its options, got {spec!r}"
    if "kind" not in spec:
        return ("kind",), ("missing; a dataset needs a 'kind' (e.g. image_folder, manifest); "
                           f"known: {', '.join(DATASETS.names())}")
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in DATASETS:
        return ("kind",), DATASETS.unknown(kind)
    fn = DATASETS.get(kind)
    options = dataset_options(kind)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    for key in spec:
        if key == "kind" or key in RUN_KEYS or key in options or takes_any:
            continue
        hint = did_you_mean(key, options)
        return (str(key),), (f"unknown option {key!r} for dataset kind {kind!r}"
                             + (f"; did you mean {hint!r}? " if hint else "; ") + f"allowed: {', '.join(options)}")
    for name, p in options.items():
        if p.default is inspect.Parameter.empty and name not in spec:
            return (name,), f"missing; dataset kind {kind!r} needs option {name!r}"
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved: leave the values to the builder
        hints = {}
    checks = [(key, hints[key]) for key in spec if key in hints and key in options]
    if "class_map" in spec:
        checks.append(("class_map", _CLASS_MAP))
    if "subset" in spec:  # the set's classes may be a proper subset of the reference classes
        checks.append(("subset", bool))
    for key, hint in checks:
        problem = _type_problem(spec[key], hint)
        if problem:
            return (key, *problem[0]), problem[1]
    return None


def _type_problem(value: Any, hint: Any) -> tuple[tuple[str, ...], str] | None:
    adapter = TypeAdapter(hint)
    try:
        adapter.validate_python(value, strict=True)
        return None
    except ValidationError as e:
        errors = e.errors()
    if isinstance(value, str):  # a path given as a string where the builder takes a Path
        try:
            if isinstance(adapter.validate_python(value), PurePath):
                return None
        except ValidationError:
            pass
    if len(errors) == 1:
        return tuple(str(p) for p in errors[0]["loc"]), f"{errors[0]['msg']}, got {value!r}"
    return (), f"expected {describe_type(hint)}, got {value!r}"


def describe_type(hint: Any) -> str:
    """``Sequence[str] | str | None`` rather than ``typing.Union[typing.Sequence[str], ...]``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin is typing.Union or type(hint) is types.UnionType:
        return " | ".join(describe_type(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(describe_type(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))

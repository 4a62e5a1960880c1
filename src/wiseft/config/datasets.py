"""Dataset specs (``{"kind": ..., **options}``) checked against the registered builders'
signatures, without reading any file."""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import PurePath
from typing import Any, Mapping

from ..registry import DATASETS, did_you_mean


_CLASS_MAP = dict[str, str | int | list[str | int]]  # dataset class -> reference class name(s) or index(es)


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
        if key in ("kind", "class_map", "subset") or key in options or takes_any:
            continue
        hint = did_you_mean(key, options)
        return (str(key),), (f"unknown option {key!r} for dataset kind {kind!r}"
                             + (f"; did you mean {hint!r}?" if hint else "") + f" allowed: {', '.join(options)}")
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
    from pydantic import TypeAdapter, ValidationError

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

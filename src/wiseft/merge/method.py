"""The merge-method interface: a method is a name, a typed parameter model, a reference
and a pure per-tensor function; ``apply`` runs any of them under the dtype rules of
``wiseft.merge.kernels`` (../../../docs/merge-methods.md)."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from wiseft.core import MERGE_METHODS
from wiseft.merge.kernels import keep_equal
from wiseft.merge.plan import MergeError, check_weights


class MergeParams(BaseModel):
    """The parameters of a merge method: typed, every field with a default, no unknown
    fields, frozen (a method's parameters are a value, hashable and safe to share).

    Every number, alone or inside a list or mapping, must be finite; a field's range is
    declared once, on the field (``Field(0.2, gt=0, le=1)``), and a value outside it is
    refused with a message naming the field and that range (``allowed_range``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="wrap")
    @classmethod
    def _finite_and_in_range(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        allowed = allowed_range(cls.model_fields[info.field_name])
        bad = first_non_finite(value)
        if bad is not None:
            raise ValueError(f"{bad} is not a finite number; {info.field_name} takes {allowed}")
        try:
            return handler(value)
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{msg}: {value!r} ({info.field_name} takes {allowed})") from None


def first_non_finite(value: Any) -> Any:
    """The first NaN or infinite number in ``value`` (a number, a numeric string as YAML or a
    command line may give, or a list, tuple or mapping of them), or None."""
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return next((b for b in map(first_non_finite, value) if b is not None), None)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        return value
    return None


def allowed_range(field: FieldInfo) -> str:
    """A field's declared range: the ``range`` its ``json_schema_extra`` states, else its bounds
    as an interval (``a finite number in (0, 1]``, ``an integer in [0, inf)``), ``a finite
    number`` without bounds, ``true or false`` for a flag."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "range" in extra:
        return str(extra["range"])
    kinds = {bool: "true or false", int: "an integer", float: "a finite number"}
    kind = kinds.get(field.annotation, "finite numbers")
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("gt", "ge", "lt", "le")
              if getattr(m, name, None) is not None}
    if field.annotation is bool or not bounds:
        return kind
    low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}" if "gt" in bounds else "(-inf"
    high = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})" if "lt" in bounds else "inf)"
    return f"{kind} in {low}, {high}"


@dataclass(frozen=True)
class TensorInputs:
    """Everything a merge method sees of one parameter.

    ``key`` is the parameter name; ``depth`` its place in the network in [0, 1] (0 the
    embeddings, 1 after the last block; see ``layer_depths``); ``base`` theta_0, the
    zero-shot (pre-trained) anchor, or None; ``models`` the fine-tuned tensors, with
    ``weights`` one per model (default 1 each). ``extras`` holds further per-model
    tensors a method declares in ``MergeMethod.extras`` (e.g. ``{"fisher": (F_1, ..., F_n)}``
    for a Fisher merge), one per model, shaped as the parameter.
    """

    key: str
    depth: float
    base: torch.Tensor | None
    models: tuple[torch.Tensor, ...]
    weights: tuple[float, ...] = ()
    extras: Mapping[str, tuple[torch.Tensor, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        weights = tuple(float(w) for w in self.weights) if self.weights else (1.0,) * len(self.models)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "extras", MappingProxyType({k: tuple(v) for k, v in self.extras.items()}))

    def tensors(self) -> list[torch.Tensor]:
        """The base (when there is one), the models and the extras, in that order."""
        base = [] if self.base is None else [self.base]
        return base + list(self.models) + [t for ts in self.extras.values() for t in ts]

    def mapped(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TensorInputs:
        """The same inputs with ``fn`` applied to every tensor."""
        return TensorInputs(self.key, self.depth, None if self.base is None else fn(self.base),
                            tuple(fn(m) for m in self.models), self.weights,
                            {k: tuple(fn(t) for t in ts) for k, ts in self.extras.items()})


MergeFn = Callable[[TensorInputs, Any], torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    ``merge_tensor(inputs, params)`` is pure: it reads ``inputs`` (floating tensors, in
    fp32 or wider; ``apply`` upcasts half types) and returns a new tensor of their shape.
    ``half_inside``: it takes half types as they are and computes in fp32 itself, rounding
    once (``merge.interpolate_tensor``, ``merge.average_tensor``), so ``apply`` makes no
    fp32 copy of every input.
    ``elementwise`` says the result at each element depends only on the inputs at that
    element, so an engine may cut a tensor into chunks and get the same bits.
    ``weighted`` is False for a method that takes no per-model weights (``apply`` then
    refuses weights other than 1); with ``average_weights`` the weights are an average's
    (each >= 0, a positive sum), else any finite numbers (``merge.check_weights``).
    ``extras`` names the per-model tensors the method needs in ``TensorInputs.extras``; with ``extras_optional`` a tensor may come without
    them (none of the models has one), and the method merges it without.

    A *procedure* merges by more than the weights (a greedy soup asks a held-out score of
    each candidate): ``needs`` names what it needs (``("evaluate",)``) and ``procedure`` is
    the function that runs it; the engines refuse it, pointing to that function, and
    ``merge_tensor`` is the per-tensor step of its final result.
    """

    name: str
    params: type[MergeParams]
    reference: str
    merge_tensor: MergeFn
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    elementwise: bool = False
    description: str = ""
    weighted: bool = True
    average_weights: bool = False
    extras: tuple[str, ...] = ()
    extras_optional: bool = False
    half_inside: bool = False
    needs: tuple[str, ...] = ()
    procedure: Callable[..., Any] | None = None

    def takes(self, n: int) -> bool:
        """Whether the method merges ``n`` fine-tuned models."""
        return n >= self.min_models and (self.max_models is None or n <= self.max_models)

    def models_wanted(self) -> str:
        """How many fine-tuned models it takes, for messages: '2', '1 to 3', '1 or more'."""
        most = self.max_models
        if most == self.min_models:
            return str(most)
        return f"{self.min_models} to {most}" if most is not None else f"{self.min_models} or more"

    def make_params(self, params: MergeParams | Mapping[str, Any] | None = None) -> MergeParams:
        """``params`` as this method's parameter model (its defaults when None); MergeError
        naming the method and the field for a wrong type or an invalid value."""
        if isinstance(params, self.params):
            return params
        if isinstance(params, MergeParams):
            raise MergeError(f"merge method {self.name!r} takes {self.params.__name__}, "
                             f"not {type(params).__name__}")
        try:
            return self.params(**dict(params or {}))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "parameters"
            msg = first["msg"].removeprefix("Value error, ")
            raise MergeError(f"merge method {self.name!r}: {where}: {msg}") from None


def get_method(name: str) -> MergeMethod:
    """The merge method registered as ``name``; MergeError suggesting the closest name."""
    if name not in MERGE_METHODS:
        raise MergeError(MERGE_METHODS.unknown(name))
    return MERGE_METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    """The registered merge methods whose name matches the glob ``pattern``, sorted.

    Example:
        >>> list_methods("t*")
        ['task_arithmetic', 'ties']
    """
    return [n for n in MERGE_METHODS.names() if fnmatch.fnmatchcase(n, pattern)]


def _check_inputs(method: MergeMethod, inputs: TensorInputs) -> None:
    """MergeError naming the parameter for inputs ``method`` cannot merge."""
    n, key = len(inputs.models), inputs.key
    if not method.takes(n):
        raise MergeError(f"merge method {method.name!r} takes {method.models_wanted()} fine-tuned model(s), got {n} "
                         f"(tensor {key!r})")
    if method.needs_base and inputs.base is None:
        raise MergeError(f"merge method {method.name!r} needs a base (theta_0) tensor; none given for {key!r}")
    check_weights(inputs.weights, n, average=method.average_weights, who=f"merge method {method.name!r}")
    if not method.weighted and any(w != 1.0 for w in inputs.weights):
        raise MergeError(f"merge method {method.name!r} takes no per-model weights; got {list(inputs.weights)} "
                         f"for {key!r}")
    ref = inputs.base if inputs.base is not None else inputs.models[0]
    for name in method.extras:
        given = inputs.extras.get(name, ())
        if not given and method.extras_optional:
            continue
        if len(given) != n or any(t.shape != ref.shape for t in given):
            raise MergeError(f"merge method {method.name!r} needs {n} {name!r} tensors shaped {tuple(ref.shape)} "
                             f"for {key!r}, got {[tuple(t.shape) for t in given]}")
    named = ([("the base", inputs.base)] if inputs.base is not None else []) + [
        (f"model {i}", m) for i, m in enumerate(inputs.models)]
    for what, t in named:
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise MergeError(f"tensor {key!r} is {tuple(t.shape)} {t.dtype} in {what} but "
                             f"{tuple(ref.shape)} {ref.dtype} in {named[0][0]}")


def _shares_storage(out: torch.Tensor, inputs: list[torch.Tensor]) -> bool:
    if out.numel() == 0 or out.device.type == "meta":
        return False
    ptr = out.untyped_storage().data_ptr()
    return any(t.numel() and t.device == out.device and t.untyped_storage().data_ptr() == ptr for t in inputs)


def apply(method: MergeMethod | str, inputs: TensorInputs,
          params: MergeParams | Mapping[str, Any] | None = None) -> torch.Tensor:
    """``method`` on one parameter under the dtype rules of ``wiseft.merge.kernels``: a new tensor
    of the inputs' shape and dtype, never aliasing them.

    Non-floating tensors (integer, bool buffers) are copied from the base (from the first
    model when the method takes no base); fp16, bf16 and other types under 32 bits are
    merged in fp32 and rounded once; elements equal in every input keep that value (an
    additive -inf mask stays -inf, not NaN). Inputs are checked first (model count, base,
    weights, shapes, dtypes) with a MergeError naming the tensor.

    Example:
        >>> x = TensorInputs("w", 0.5, base=theta_0["w"], models=(theta_1["w"],))
        >>> apply("linear", x, {"alpha": 0.5})
    """
    method = get_method(method) if isinstance(method, str) else method
    params = method.make_params(params)
    _check_inputs(method, inputs)
    source = inputs.base if method.needs_base else inputs.models[0]
    if not (source.is_floating_point() or source.is_complex()):
        return source.detach().clone(memory_format=torch.contiguous_format)
    detached = inputs.mapped(torch.Tensor.detach)
    work = detached
    if source.is_floating_point() and source.dtype.itemsize < 4 and not method.half_inside:
        work = detached.mapped(lambda t: t.to(torch.float32))
    with torch.no_grad():
        out = method.merge_tensor(work, params)
        if out.shape != source.shape:
            raise MergeError(f"merge method {method.name!r} returned shape {tuple(out.shape)} for {inputs.key!r}, "
                             f"not {tuple(source.shape)}")
        out = out.to(source.dtype)
        originals = detached.tensors()
        if _shares_storage(out, originals):
            out = out.clone(memory_format=torch.contiguous_format)
        mixed = ([detached.base] if method.needs_base else []) + list(detached.models)
        return keep_equal(out, mixed)

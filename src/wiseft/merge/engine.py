"""The in-memory engine: any registered merge method over whole state dicts.

``merge_states`` plans the merge with ``merge.plan_merge`` (keys, shapes and dtypes
checked before any work; ``MergeConfig``'s include/exclude/keep selection), computes
each parameter's depth once, calls ``apply`` on every mixed tensor, copies or drops the
others as planned, and keeps tied weights tied. The inputs are never modified or aliased.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from wiseft.config import MergeConfig
from wiseft.io import StateDict
from wiseft.merge.depth import layer_depths
from wiseft.merge.interpolator import tie_map
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs, apply, get_method
from wiseft.merge.plan import MergeError, Step, TensorSpec, check_weights, plan_merge, selection_of, specs_of


@dataclass(frozen=True)
class MergeCall:
    """One merge, checked: the method, its parameters, the inputs in plan order (the
    base first when the method takes one, then the models), the weights and the extras."""

    method: MergeMethod
    params: MergeParams
    has_base: bool
    weights: tuple[float, ...]
    extras: Mapping[str, tuple[Any, ...]]


def check_call(method: str | MergeMethod, has_base: bool, n_models: int,
               params: MergeParams | Mapping | None = None, *, weights: Sequence[float] | None = None,
               extras: Mapping[str, Sequence[Any]] | None = None,
               settings: MergeConfig | None = None) -> MergeCall:
    """What both engines check before reading a weight: the method exists, takes this
    many models, gets a base exactly when it needs one, one weight per model (none for a
    method without weights), the extras it declares (one per model), and valid
    parameters. MergeError naming the method and the problem."""
    method = get_method(method) if isinstance(method, str) else method
    if method.needs:
        runner = method.procedure
        where = f"{runner.__module__}.{runner.__qualname__}" if runner is not None else "its own procedure"
        raise MergeError(f"merge method {method.name!r} needs {', '.join(method.needs)} beyond the weights; "
                         f"run it with {where}, not as a plain merge")
    if not method.takes(n_models):
        raise MergeError(f"merge method {method.name!r} takes {method.models_wanted()} fine-tuned model(s), "
                         f"got {n_models}")
    if method.needs_base and not has_base:
        raise MergeError(f"merge method {method.name!r} needs a base model (theta_0, the zero-shot anchor); "
                         "none given")
    if has_base and not method.needs_base:
        raise MergeError(f"merge method {method.name!r} takes no base model; pass every model as a model")
    weights = tuple(check_weights(weights, n_models, average=method.average_weights,
                                  who=f"merge method {method.name!r}"))
    if not method.weighted and any(w != 1.0 for w in weights):
        raise MergeError(f"merge method {method.name!r} takes no per-model weights; got {list(weights)}")
    extras = dict(extras or {})
    for name in set(extras) - set(method.extras):
        raise MergeError(f"merge method {method.name!r} reads no {name!r} extras (it reads: "
                         f"{', '.join(method.extras) or 'none'})")
    for name in method.extras:
        if len(extras.get(name, ())) != n_models:
            raise MergeError(f"merge method {method.name!r} needs one {name!r} input per model ({n_models}), "
                             f"got {len(extras.get(name, ()))}")
    return MergeCall(method, _params(method, params, settings), has_base, weights,
                     {k: tuple(v) for k, v in extras.items()})


def _params(method: MergeMethod, params: MergeParams | Mapping | None, settings: MergeConfig | None) -> MergeParams:
    """``params`` as the method's model; ``settings.allow_extrapolation`` reaches a method
    whose parameters have that field when the parameters do not set it."""
    if (settings is not None and settings.allow_extrapolation and not isinstance(params, MergeParams)
            and "allow_extrapolation" in method.params.model_fields
            and "allow_extrapolation" not in (params or {})):
        params = {**dict(params or {}), "allow_extrapolation": True}
    return method.make_params(params)


def plan_call(call: MergeCall, specs: Sequence[Mapping[str, TensorSpec]], settings: MergeConfig | None) -> list[Step]:
    """The plan over the inputs' ``specs`` (the base first when there is one): tensors not
    selected come from ``settings.keep``, default the first fine-tuned model."""
    selection = selection_of(settings or MergeConfig(), default_keep=1 if call.has_base else 0)
    return plan_merge(specs, selection)


def extras_for(extras: Mapping[str, Sequence[Mapping[str, Any]]], name: str,
               lookup: Callable[[str, int], Any]) -> dict[str, tuple[Any, ...]]:
    """The extras of tensor ``name`` (``extras``: per extra, one mapping per model, state
    dicts or checkpoint headers): ``lookup(extra, i)`` for every model, for each extra every
    model has; an extra no model has is left out (``apply`` then refuses it unless the
    method takes it as optional); one some models lack is a MergeError."""
    out = {}
    for extra, sources in extras.items():
        have = [name in s for s in sources]
        if not any(have):
            continue
        if not all(have):
            raise MergeError(f"tensor {name!r} has a {extra!r} in input {have.index(True)} "
                             f"but not in input {have.index(False)}")
        out[extra] = tuple(lookup(extra, i) for i in range(len(sources)))
    return out


def merge_states(method: str | MergeMethod, base: StateDict | None, models: Sequence[StateDict],
                 params: MergeParams | Mapping | None = None, *, weights: Sequence[float] | None = None,
                 extras: Mapping[str, Sequence[StateDict]] | None = None,
                 settings: MergeConfig | None = None) -> dict[str, torch.Tensor]:
    """``method`` over whole state dicts: a new state dict, the inputs neither modified
    nor aliased.

    ``base`` is theta_0 (None for a method without one, e.g. ``soup``); ``models`` the
    fine-tuned state dicts; ``params`` the method's parameters (a mapping or its model);
    ``weights`` one per model; ``extras`` the per-model state dicts the method declares
    (``{"fisher": [F_1, ..., F_n]}``). ``settings`` picks the tensors to mix (the others
    come from input ``keep``: 0 is the base when there is one, then the models; default
    the first model). Integer and bool buffers are copied from input 0; tied weights are
    merged once and stay tied. MergeError naming the method, key or parameter at fault.

    Example:
        >>> merged = merge_states("ties", zs_state, [ft_a, ft_b], {"density": 0.2})
        >>> merged = merge_states("linear", zs_state, [ft_state], {"ramp": [0.2, 0.8]})
    """
    call = check_call(method, base is not None, len(models), params, weights=weights, extras=extras,
                      settings=settings)
    thetas = [{k: v.detach() for k, v in t.items()} for t in ([base] if base is not None else []) + list(models)]
    steps = plan_call(call, [specs_of(t) for t in thetas], settings)
    ties = tie_map(steps, thetas)
    depths = layer_depths(s.name for s in steps)
    first = 1 if call.has_base else 0
    out: dict[str, torch.Tensor] = {}
    for s in steps:
        if s.op == "drop":
            continue
        if s.name in ties:
            out[s.name] = out[ties[s.name]]
        elif s.op == "copy":
            out[s.name] = thetas[s.source][s.name].clone(memory_format=torch.contiguous_format)
        else:
            found = extras_for(call.extras, s.name, lambda extra, i: call.extras[extra][i][s.name])
            inputs = TensorInputs(s.name, depths[s.name], thetas[0][s.name] if call.has_base else None,
                                  tuple(t[s.name] for t in thetas[first:]), call.weights, found)
            out[s.name] = apply(call.method, inputs, call.params)
    return out

"""``linear``: WiSE-FT's weight-space ensemble, theta = (1 - alpha) theta_0 + alpha theta_1,
with alpha a function of the parameter (glob rules, a depth ramp)."""

from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
from pydantic import Field, model_validator

from wiseft.core import MERGE_METHODS
from wiseft.merge.depth import layer_depths
from wiseft.merge.kernels import interpolate_tensor
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs

IN_01 = "a finite number in [0, 1] (outside it with allow_extrapolation)"


class LinearParams(MergeParams):
    """``alpha`` for every tensor, unless the parameter name matches a glob of ``rules``
    (the first match, in the order given, wins) or ``ramp`` = (alpha at depth 0, alpha at
    depth 1) is set (alpha linear in depth between; rules still win). Alphas outside
    [0, 1] extrapolate and need ``allow_extrapolation``.

    Example:
        >>> LinearParams(ramp=(0.2, 0.8), rules={"*.ln_*": 0.5})
    """

    alpha: float = Field(0.5, json_schema_extra={"range": IN_01})
    rules: dict[str, float] = Field({}, json_schema_extra={"range": f"a mapping of globs to alphas, each {IN_01}"})
    ramp: tuple[float, float] | None = Field(None, json_schema_extra={"range": f"two alphas, each {IN_01}"})
    allow_extrapolation: bool = False

    @model_validator(mode="after")
    def _alphas_in_range(self) -> LinearParams:
        if self.allow_extrapolation:
            return self
        named = [("alpha", self.alpha)] + [(f"rules[{k!r}]", v) for k, v in self.rules.items()]
        named += [(f"ramp[{i}]", v) for i, v in enumerate(self.ramp or ())]
        for name, value in named:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value} is outside [0, 1]; set allow_extrapolation to "
                                 "extrapolate on purpose")
        return self

    def alphas(self, names: Sequence[str]) -> dict[str, float]:
        """The alpha of every parameter in ``names`` (the whole key set of a merge, so depths
        are placed as ``merge_states`` places them): the schedule ``merge.Interpolator`` takes."""
        depths = layer_depths(names)
        return {name: alpha_for(name, depths[name], self) for name in names}


def alpha_for(key: str, depth: float, params: LinearParams) -> float:
    """The alpha of parameter ``key`` at ``depth``: the first matching rule, else the ramp
    at that depth, else the global alpha. Engines group tensors by it."""
    for pattern, alpha in params.rules.items():
        if fnmatch.fnmatchcase(key, pattern):
            return alpha
    if params.ramp is not None:
        start, end = params.ramp
        return (1.0 - depth) * start + depth * end
    return params.alpha


def merge_linear(inputs: TensorInputs, params: LinearParams) -> torch.Tensor:
    """``merge.interpolate_tensor`` at this parameter's alpha: the same bits as today's engines."""
    return interpolate_tensor(inputs.base, inputs.models[0], alpha_for(inputs.key, inputs.depth, params))


MERGE_METHODS.add("linear", MergeMethod(
    name="linear", params=LinearParams, merge_tensor=merge_linear, needs_base=True, min_models=1, max_models=1,
    elementwise=True, weighted=False, half_inside=True,
    reference="Wortsman et al. 2022, Robust fine-tuning of zero-shot models (WiSE-FT), arXiv:2109.01903",
    description="(1 - alpha) theta_0 + alpha theta_1, alpha per parameter by glob rules or a depth ramp"))

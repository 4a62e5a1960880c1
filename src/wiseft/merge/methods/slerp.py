"""``slerp``: spherical linear interpolation from theta_0 to theta_1."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from wiseft.core import MERGE_METHODS
from wiseft.merge.kernels import interpolate_tensor
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs
from wiseft.merge.methods.ops import dot64

# above this |cos| the tensors are taken as colinear and mixed linearly (mergekit's value)
DOT_THRESHOLD = 0.9995


class SlerpParams(MergeParams):
    """``t``: 0 gives theta_0, 1 gives theta_1."""

    t: float = Field(0.5, ge=0, le=1)


def merge_slerp(inputs: TensorInputs, params: SlerpParams) -> torch.Tensor:
    """sin((1 - t) omega) / sin(omega) theta_0 + sin(t omega) / sin(omega) theta_1, omega
    the angle between the flattened tensors; linear (``interpolate_tensor``) at t = 0 or 1,
    when a norm is zero or not finite, or when |cos omega| > DOT_THRESHOLD."""
    v0, v1, t = inputs.base, inputs.models[0], params.t
    n0, n1 = math.sqrt(dot64(v0, v0)), math.sqrt(dot64(v1, v1))
    if t in (0.0, 1.0) or not (0.0 < n0 < math.inf and 0.0 < n1 < math.inf):
        return interpolate_tensor(v0, v1, t)
    cos = max(-1.0, min(1.0, dot64(v0, v1) / (n0 * n1)))
    if abs(cos) > DOT_THRESHOLD:
        return interpolate_tensor(v0, v1, t)
    omega = math.acos(cos)
    s0, s1 = math.sin((1.0 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
    return (v0 * s0).add_(v1 * s1)


MERGE_METHODS.add("slerp", MergeMethod(
    name="slerp", params=SlerpParams, merge_tensor=merge_slerp, needs_base=True, min_models=1, max_models=1,
    elementwise=False, weighted=False,
    reference="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH), "
              "doi:10.1145/325165.325242; per tensor as in mergekit",
    description="spherical interpolation from theta_0 to theta_1 by the angle between the flattened tensors"))

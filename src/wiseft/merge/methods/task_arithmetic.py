"""``task_arithmetic``: theta_0 + lambda sum_i w_i (theta_i - theta_0)."""

from __future__ import annotations

import torch
from pydantic import Field

from wiseft.core import MERGE_METHODS
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs
from wiseft.merge.methods.ops import add_scaled, combine, task_vectors


class TaskArithmeticParams(MergeParams):
    """``scale`` is the paper's lambda, any finite number (negative: task negation, the
    paper's section 3); ``normalize`` divides the weighted sum of task vectors by the sum of
    the weights (mergekit's option, off by default as there)."""

    scale: float = Field(1.0, json_schema_extra={"range": "a finite number (negative: task negation)"})
    normalize: bool = False


def merge_task_arithmetic(inputs: TensorInputs, params: TaskArithmeticParams) -> torch.Tensor:
    """theta_0 + scale * sum_i w_i (theta_i - theta_0)."""
    mixed = combine(task_vectors(inputs), inputs.weights, consensus=False, normalize=params.normalize)
    return add_scaled(inputs.base, mixed, params.scale)


MERGE_METHODS.add("task_arithmetic", MergeMethod(
    name="task_arithmetic", params=TaskArithmeticParams, merge_tensor=merge_task_arithmetic, needs_base=True,
    min_models=1, elementwise=True,
    reference="Ilharco et al. 2023, Editing models with task arithmetic, arXiv:2212.04089",
    description="theta_0 + lambda sum_i w_i (theta_i - theta_0): added task vectors"))

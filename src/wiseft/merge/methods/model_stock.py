"""``model_stock``: Model Stock's closed-form ratio between the fine-tunes' average and the anchor."""

from __future__ import annotations

import itertools
import math

import torch

from wiseft.core import MERGE_METHODS
from wiseft.merge.kernels import average_tensor, interpolate_tensor
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs
from wiseft.merge.methods.ops import dot64, task_vectors


class ModelStockParams(MergeParams):
    """Model Stock has no parameters: the ratio comes from the weights themselves."""


def mean_cosine(deltas: list[torch.Tensor]) -> float:
    """The average over pairs of the cosine between task vectors (0 for a pair where one
    is zero), each clamped to [-1, 1]."""
    norms = [math.sqrt(dot64(d, d)) for d in deltas]
    cosines = []
    for i, j in itertools.combinations(range(len(deltas)), 2):
        if norms[i] == 0.0 or norms[j] == 0.0:
            cosines.append(0.0)
        else:
            cosines.append(max(-1.0, min(1.0, dot64(deltas[i], deltas[j]) / (norms[i] * norms[j]))))
    return sum(cosines) / len(cosines)


def stock_ratio(cos: float, n: int) -> float:
    """t = n cos / (1 + (n - 1) cos), with cos clamped below at 0: fine-tunes that do not
    agree (orthogonal or opposed task vectors) leave the anchor unchanged (t = 0) rather
    than extrapolating away from their average."""
    cos = max(cos, 0.0) if not math.isnan(cos) else cos
    return n * cos / (1.0 + (n - 1) * cos)


def merge_model_stock(inputs: TensorInputs, params: ModelStockParams) -> torch.Tensor:
    """t * mean_i theta_i + (1 - t) * theta_0, t = stock_ratio(mean pairwise cosine, N)."""
    n = len(inputs.models)
    t = stock_ratio(mean_cosine(task_vectors(inputs)), n)
    average = average_tensor(inputs.models, [1.0] * n)
    return interpolate_tensor(inputs.base, average, t)


MERGE_METHODS.add("model_stock", MergeMethod(
    name="model_stock", params=ModelStockParams, merge_tensor=merge_model_stock, needs_base=True, min_models=2,
    elementwise=False, weighted=False,
    reference="Jang et al. 2024, Model Stock: All we need is just a few fine-tuned models, arXiv:2403.19522",
    description="per tensor, t = N cos / (1 + (N - 1) cos) from the mean pairwise cosine of the task vectors; "
                "t * average + (1 - t) * theta_0"))

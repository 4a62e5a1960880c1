"""``ties``: TIES-Merging, trim, elect sign, disjoint merge."""

from __future__ import annotations

import torch
from pydantic import Field

from wiseft.core import MERGE_METHODS
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs
from wiseft.merge.methods.ops import add_scaled, combine, task_vectors


class TiesParams(MergeParams):
    """``density``: the fraction of each task vector kept (the paper's k = 20%);
    ``scale``: the paper's lambda (1 when no validation set picks it); ``normalize``:
    the disjoint mean (off: the disjoint sum)."""

    density: float = Field(0.2, gt=0, le=1)
    scale: float = Field(1.0, ge=0)
    normalize: bool = True


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its top ``density`` fraction by magnitude set to 0.

    k = round(density * n), at least 1; every element whose magnitude reaches the k-th
    largest is kept, so ties at the threshold are all kept (as the paper's code does)
    and the result does not depend on a sort's order.
    """
    n = delta.numel()
    if density >= 1.0 or n == 0:
        return delta
    k = min(n, max(1, round(density * n)))
    magnitude = delta.abs()
    threshold = magnitude.reshape(-1).kthvalue(n - k + 1).values
    return torch.where(magnitude >= threshold, delta, 0.0)


def merge_ties(inputs: TensorInputs, params: TiesParams) -> torch.Tensor:
    """theta_0 + scale * disjoint mean of the trimmed, sign-elected task vectors."""
    trimmed = [trim(d, params.density) for d in task_vectors(inputs)]
    mixed = combine(trimmed, inputs.weights, consensus=True, normalize=params.normalize)
    return add_scaled(inputs.base, mixed, params.scale)


MERGE_METHODS.add("ties", MergeMethod(
    name="ties", params=TiesParams, merge_tensor=merge_ties, needs_base=True, min_models=1, elementwise=False,
    reference="Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models, arXiv:2306.01708",
    description="task vectors trimmed to their top-density magnitudes per tensor, sign elected per element, "
                "disjoint mean of the agreeing values"))

"""``fisher``: the Fisher-weighted average, sum_i c_i theta_i / sum_i c_i with
c_i = w_i max(F_i, floor) and F_i model i's diagonal Fisher (``soup.estimate_fisher``)."""

from __future__ import annotations

import torch
from pydantic import Field

from wiseft.core import MERGE_METHODS
from wiseft.merge.kernels import average_tensor
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs


class FisherParams(MergeParams):
    """``fisher_floor``: the least Fisher value a parameter counts with, so a parameter no
    model is sensitive to is still averaged (the reference implementation's guard)."""

    fisher_floor: float = Field(1e-8, ge=0)


def merge_fisher(inputs: TensorInputs, params: FisherParams) -> torch.Tensor:
    """sum_i c_i theta_i / sum_i c_i, c_i = w_i max(F_i, floor), over the models of nonzero
    weight; the plain weighted average for a tensor without Fishers (as the reference
    implementation does) and an exact copy when one model alone has weight."""
    fishers = inputs.extras.get("fisher")
    live = [i for i, w in enumerate(inputs.weights) if w != 0]
    if not fishers or len(live) == 1:
        return average_tensor(inputs.models, inputs.weights)
    x0 = inputs.models[0]
    num, den = torch.zeros_like(x0), torch.zeros_like(x0)
    for i in live:
        c = fishers[i].to(x0.device, x0.dtype).clamp_min(params.fisher_floor).mul_(inputs.weights[i])
        num.addcmul_(c, inputs.models[i])
        den.add_(c)
    return num.div_(den)


MERGE_METHODS.add("fisher", MergeMethod(
    name="fisher", params=FisherParams, merge_tensor=merge_fisher, needs_base=False, min_models=1, elementwise=True,
    average_weights=True,
    extras=("fisher",), extras_optional=True,
    reference="Matena and Raffel 2022, Merging Models with Fisher-Weighted Averaging, arXiv:2111.09832",
    description="sum_i c_i theta_i / sum_i c_i, c_i = w_i max(F_i, floor): models weighted per parameter by "
                "their diagonal Fisher (extras 'fisher', one per model); no base"))

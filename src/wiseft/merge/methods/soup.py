"""``soup``: the weighted (uniform by default) average of fine-tuned models."""

from __future__ import annotations

import torch

from wiseft.core import MERGE_METHODS
from wiseft.merge.kernels import average_tensor
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs


class SoupParams(MergeParams):
    """A soup has no parameters beyond the per-model weights of ``TensorInputs``."""


def merge_soup(inputs: TensorInputs, params: SoupParams) -> torch.Tensor:
    """sum_i w_i theta_i / sum_i w_i: ``merge.average_tensor``, the same bits as today's engines."""
    return average_tensor(inputs.models, inputs.weights)


MERGE_METHODS.add("soup", MergeMethod(
    name="soup", params=SoupParams, merge_tensor=merge_soup, needs_base=False, min_models=1, elementwise=True,
    average_weights=True,
    half_inside=True, reference="Wortsman et al. 2022, Model soups: averaging weights of multiple fine-tuned models improves "
              "accuracy without increasing inference time, arXiv:2203.05482",
    description="sum_i w_i theta_i / sum_i w_i (uniform soup with weights 1); no base"))

"""``soup``: the weighted (uniform by default) average of fine-tuned models (Wortsman et
al., "Model soups", ICML 2022, arXiv 2203.05482), and ``weighted_average`` and
``uniform_soup``, which run it over whole state dicts (``merge_states``; the out-of-core
``average_files`` gives the same bits). The greedy soup is ``methods/greedy_soup.py``."""

from __future__ import annotations

from typing import Sequence

import torch

from wiseft.config import MergeConfig
from wiseft.core import MERGE_METHODS
from wiseft.io import StateDict
from wiseft.merge.engine import merge_states
from wiseft.merge.kernels import average_tensor
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs
from wiseft.merge.plan import check_average_weights


class SoupParams(MergeParams):
    """A soup has no parameters beyond the per-model weights of ``TensorInputs``."""


def merge_soup(inputs: TensorInputs, params: SoupParams) -> torch.Tensor:
    """sum_i w_i theta_i / sum_i w_i: ``merge.average_tensor``, the same bits as today's engines."""
    return average_tensor(inputs.models, inputs.weights)


@torch.no_grad()
def weighted_average(thetas: Sequence[StateDict], weights: Sequence[float] | None = None,
                     settings: MergeConfig | None = None) -> dict[str, torch.Tensor]:
    """sum_i w_i theta_i / sum_i w_i (uniform when ``weights`` is None), in fp32 for
    half types; integer buffers from ``thetas[0]``; tensors not selected by ``settings``
    (``include``/``exclude``) from ``thetas[keep]`` (default 0).
    The registered method ``soup`` (weights non-negative, with a positive sum).

    Example:
        >>> soup = weighted_average([sd_a, sd_b, sd_c], [0.5, 0.25, 0.25])
    """
    weights = check_average_weights(weights, len(thetas))
    return merge_states("soup", None, thetas, weights=weights, settings=settings)


def uniform_soup(thetas: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """The plain average of N fine-tuned models (a uniform soup)."""
    return weighted_average(thetas)


MERGE_METHODS.add("soup", MergeMethod(
    name="soup", params=SoupParams, merge_tensor=merge_soup, needs_base=False, min_models=1, elementwise=True,
    average_weights=True,
    half_inside=True, reference="Wortsman et al. 2022, Model soups: averaging weights of multiple fine-tuned models improves "
              "accuracy without increasing inference time, arXiv:2203.05482",
    description="sum_i w_i theta_i / sum_i w_i (uniform soup with weights 1); no base"))

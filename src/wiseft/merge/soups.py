"""Averages of N models: weighted and uniform soups, greedy soup, Fisher-weighted merging.

- Uniform and greedy soups: Wortsman et al., "Model soups", ICML 2022 (arXiv 2203.05482).
- Fisher merging: Matena & Raffel, NeurIPS 2022 (arXiv 2111.09832), as the WiSE-FT
  reference implementation does it: theta = sum_i c_i theta_i / sum_i c_i with
  c_i = w_i * max(F_i, floor) and a diagonal Fisher F_i estimated one example at a time
  with labels sampled from the model.

Each is a registered merge method (``wiseft.merge``): ``weighted_average`` runs
``soup`` and ``fisher_merge`` runs ``fisher`` through ``merging.merge_states``, so the
out-of-core engine (``merge_files.average_files``, ``merge_files.merge_files``) gives the
same bits; ``greedy_soup`` is the registered procedure ``greedy_soup``
(``merging/greedy_soup.py``), which needs an ``evaluate`` callback.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

from wiseft.config import MergeConfig
from wiseft.io import StateDict
from wiseft.merge import merge_states
from wiseft.merge.methods.greedy_soup import GreedySoup, Ingredient, greedy_soup
from wiseft.merge.plan import MergeError, check_weights

__all__ = ["GreedySoup", "Ingredient", "estimate_fisher", "fisher_merge", "greedy_soup", "uniform_soup",
           "weighted_average"]


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if n < 1:
        raise MergeError("no models to average")
    return check_weights(weights, n, average=True)


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
    weights = _weights(weights, len(thetas))
    return merge_states("soup", None, thetas, weights=weights, settings=settings)


def uniform_soup(thetas: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """The plain average of N fine-tuned models (a uniform soup)."""
    return weighted_average(thetas)


# --- Fisher merging -------------------------------------------------------------------

def _rows(x: Any, i: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[i:i + 1]
    if isinstance(x, Mapping):
        return {k: _rows(v, i) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_rows(v, i) for v in x)
    return x


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def estimate_fisher(model: torch.nn.Module, loader: Iterable, *, max_examples: int | None = None,
                    empirical: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Diagonal Fisher E_x E_{y ~ p(y|x)} [(d log p(y|x) / d theta)^2] of the trainable
    parameters, one example at a time (``loader`` yields ``(inputs, labels)`` batches;
    ``inputs`` a tensor or a dict of tensors). With ``empirical=True`` the dataset
    labels replace the sampled ones. Returns fp32 tensors keyed as ``state_dict``.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for inputs, labels in loader:
            for i in range(len(labels)):
                if max_examples is not None and seen >= max_examples:
                    break
                logits = model(_to(_rows(inputs, i), device))
                logp = torch.log_softmax(logits.float(), dim=-1)[0]
                if empirical:
                    y = int(labels[i])
                else:
                    y = int(torch.multinomial(logp.detach().exp().cpu(), 1, generator=generator))
                grads = torch.autograd.grad(logp[y], list(params.values()), allow_unused=True)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        fisher[n].add_(g.float().square())
                seen += 1
            if max_examples is not None and seen >= max_examples:
                break
    finally:
        model.train(was_training)
    if seen == 0:
        raise MergeError("the loader gave no examples to estimate the Fisher on")
    return {n: f.div_(seen) for n, f in fisher.items()}


@torch.no_grad()
def fisher_merge(thetas: Sequence[StateDict], fishers: Sequence[Mapping[str, torch.Tensor]],
                 weights: Sequence[float] | None = None, *, fisher_floor: float = 1e-8) -> dict[str, torch.Tensor]:
    """Fisher-weighted average: sum_i c_i theta_i / sum_i c_i, c_i = w_i max(F_i, floor).

    A tensor with no Fisher in any input gets the plain weighted average (as the
    reference implementation does); one with a Fisher in some inputs only is an error.
    For WiSE-FT with Fisher weights use ``weights=[1 - alpha, alpha]``. The registered
    method ``fisher`` (``merge_files.merge_files("fisher", ..., extras={"fisher": paths})``
    runs it out of core).
    """
    weights = _weights(weights, len(thetas))
    if len(fishers) != len(thetas):
        raise MergeError(f"{len(fishers)} Fishers for {len(thetas)} models")
    return merge_states("fisher", None, thetas, {"fisher_floor": fisher_floor}, weights=weights,
                        extras={"fisher": fishers})

"""``fisher``: the Fisher-weighted average, sum_i c_i theta_i / sum_i c_i with
c_i = w_i max(F_i, floor) and F_i model i's diagonal Fisher (Matena & Raffel, NeurIPS
2022, arXiv 2111.09832), as the WiSE-FT reference implementation does it; with
``estimate_fisher``, the diagonal Fisher estimated one example at a time with labels
sampled from the model, and ``fisher_merge``, which runs the method over whole state
dicts (``merge_states``; ``merge_files("fisher", ...)`` runs it out of core)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from pydantic import Field

from wiseft.core import MERGE_METHODS
from wiseft.io import StateDict
from wiseft.merge.engine import merge_states
from wiseft.merge.kernels import average_tensor
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs
from wiseft.merge.plan import MergeError, check_average_weights


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
    method ``fisher`` (``merge_files("fisher", ..., extras={"fisher": paths})``
    runs it out of core).
    """
    weights = check_average_weights(weights, len(thetas))
    if len(fishers) != len(thetas):
        raise MergeError(f"{len(fishers)} Fishers for {len(thetas)} models")
    return merge_states("fisher", None, thetas, {"fisher_floor": fisher_floor}, weights=weights,
                        extras={"fisher": fishers})


MERGE_METHODS.add("fisher", MergeMethod(
    name="fisher", params=FisherParams, merge_tensor=merge_fisher, needs_base=False, min_models=1, elementwise=True,
    average_weights=True,
    extras=("fisher",), extras_optional=True,
    reference="Matena and Raffel 2022, Merging Models with Fisher-Weighted Averaging, arXiv:2111.09832",
    description="sum_i c_i theta_i / sum_i c_i, c_i = w_i max(F_i, floor): models weighted per parameter by "
                "their diagonal Fisher (extras 'fisher', one per model); no base"))

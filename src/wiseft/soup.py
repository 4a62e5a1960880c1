"""Averages of N models: weighted and uniform soups, greedy soup, Fisher-weighted merging.

- Uniform and greedy soups: Wortsman et al., "Model soups", ICML 2022 (arXiv 2203.05482).
- Fisher merging: Matena & Raffel, NeurIPS 2022 (arXiv 2111.09832), as the WiSE-FT
  reference implementation does it: theta = sum_i c_i theta_i / sum_i c_i with
  c_i = w_i * max(F_i, floor) and a diagonal Fisher F_i estimated one example at a time
  with labels sampled from the model.

Every average goes through ``merge.average_tensor``, so ``weighted_average`` and the
out-of-core ``merge_files.average_files`` give the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .checkpoint import load_state
from .config.merge import MergeConfig, merge_config
from .merge import (MergeError, StateDict, TensorSpec, _acc_dtype, allocate, average_tensor, make_selection,
                    plan_merge, selection_of, specs_of, tie_map)

Ingredient = StateDict | str | Path  # loaded with ``checkpoint.load_state``


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    from .merge_files import _check_weights

    return _check_weights(weights, n)


@torch.no_grad()
def weighted_average(thetas: Sequence[StateDict], weights: Sequence[float] | None = None,
                     settings: MergeConfig | None = None, **options: Any) -> dict[str, torch.Tensor]:
    """sum_i w_i theta_i / sum_i w_i (uniform when ``weights`` is None), in fp32 for
    half types; integer buffers from ``thetas[0]``; tensors not selected by ``settings``
    (or its fields as keywords: ``include``/``exclude``) from ``thetas[keep]`` (default 0).

    Example:
        >>> soup = weighted_average([sd_a, sd_b, sd_c], [0.5, 0.25, 0.25])
    """
    settings = merge_config(settings, **options)
    weights = _weights(weights, len(thetas))
    thetas = [{k: v.detach() for k, v in t.items()} for t in thetas]
    steps = plan_merge([specs_of(t) for t in thetas], selection_of(settings, default_keep=0))
    ties = tie_map(steps, thetas)
    out = allocate(steps, thetas, ties)
    for s in steps:
        if s.op == "drop" or s.name in ties:
            continue
        if s.op == "copy":
            out[s.name].copy_(thetas[s.source][s.name])
        else:
            average_tensor([t[s.name] for t in thetas], weights, out=out[s.name])
    return out


def uniform_soup(thetas: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """The plain average of N fine-tuned models (a uniform soup)."""
    return weighted_average(thetas)


@dataclass
class GreedySoup:
    state: dict[str, torch.Tensor]
    chosen: list[int]  # ingredient indices, in the order they were added
    score: float  # held-out score of the final soup
    scores: list[float]  # held-out score of each ingredient alone


@torch.no_grad()
def greedy_soup(ingredients: Sequence[Ingredient], evaluate: Callable[[dict[str, torch.Tensor]], float], *,
                scores: Sequence[float] | None = None) -> GreedySoup:
    """Greedy soup: sort ingredients by held-out score, then add each one whose
    addition to the uniform average does not lower the held-out score.

    ``evaluate`` maps a state dict to a held-out score (higher is better; never a
    shift test set). Ingredients may be paths, loaded one at a time: memory is one fp32
    running sum, one candidate and one ingredient. The result equals
    ``uniform_soup`` of the chosen ingredients in ``chosen`` order, bit for bit.
    """
    if not ingredients:
        raise MergeError("greedy soup needs at least one ingredient")
    if scores is None:
        scores = [float(evaluate(load_state(g))) for g in ingredients]
    order = sorted(range(len(ingredients)), key=lambda i: -scores[i])
    first = load_state(ingredients[order[0]])
    steps = plan_merge([specs_of(first)])
    acc = {s.name: first[s.name].to(_acc_dtype(s.spec.dtype), copy=True) if s.op == "mix" else first[s.name]
           for s in steps}
    candidate = allocate(steps, [first], {})
    chosen, best = [order[0]], scores[order[0]]
    for j in order[1:]:
        theta = load_state(ingredients[j])
        plan_merge([specs_of(first), specs_of(theta)], make_selection(keep=0))
        _soup_into(candidate, acc, steps, len(chosen) + 1, theta)
        score = float(evaluate(candidate))
        if score >= best:
            for s in steps:
                if s.op == "mix":
                    acc[s.name].add_(theta[s.name])
            chosen.append(j)
            best = score
    _soup_into(candidate, acc, steps, len(chosen), None)
    return GreedySoup(candidate, chosen, best, list(scores))


def _soup_into(out, acc, steps, n: int, extra: StateDict | None) -> None:
    """out = (acc + extra) / n for mixed tensors (the uniform soup's arithmetic)."""
    for s in steps:
        if s.op != "mix":
            out[s.name].copy_(acc[s.name])
            continue
        total = acc[s.name] + extra[s.name] if extra is not None else acc[s.name].clone()
        if n != 1:
            total.div_(n)
        out[s.name].copy_(total)


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
    For WiSE-FT with Fisher weights use ``weights=[1 - alpha, alpha]``.
    """
    weights = _weights(weights, len(thetas))
    if len(fishers) != len(thetas):
        raise MergeError(f"{len(fishers)} Fishers for {len(thetas)} models")
    thetas = [{k: v.detach() for k, v in t.items()} for t in thetas]
    steps = plan_merge([specs_of(t) for t in thetas], make_selection(keep=0))
    out = allocate(steps, thetas, tie_map(steps, thetas))
    done = set()
    for s in steps:
        o = out[s.name]
        if id(o) in done:
            continue
        done.add(id(o))
        have = [s.name in f for f in fishers]
        if any(have) and not all(have):
            raise MergeError(f"tensor {s.name!r} has a Fisher in input {have.index(True)} "
                             f"but not in input {have.index(False)}")
        xs = [t[s.name] for t in thetas]
        live = [i for i, w in enumerate(weights) if w != 0]
        if s.op != "mix" or not any(have) or len(live) == 1:
            average_tensor(xs, weights, out=o) if s.op == "mix" else o.copy_(xs[s.source])
            continue
        _check_fisher(fishers, s.name, s.spec)
        acc = _acc_dtype(s.spec.dtype)
        num = torch.zeros(s.spec.shape, dtype=acc, device=o.device)
        den = torch.zeros(s.spec.shape, dtype=acc, device=o.device)
        for i in live:
            c = fishers[i][s.name].to(o.device, acc).clamp_min(fisher_floor).mul_(weights[i])
            num.addcmul_(c, xs[i].to(acc))
            den.add_(c)
        o.copy_(num.div_(den))
    return out


def _check_fisher(fishers, name: str, spec: TensorSpec) -> None:
    for i, f in enumerate(fishers):
        if tuple(f[name].shape) != spec.shape:
            raise MergeError(f"Fisher {i} of {name!r} has shape {tuple(f[name].shape)}, the tensor {spec.shape}")

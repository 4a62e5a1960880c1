"""``greedy_soup``: a procedure, not a plain merge. Ingredients are sorted by held-out
score and each is added to the soup when the uniform average with it scores no lower;
the result is the uniform soup of the chosen ones. It needs an ``evaluate`` callback, so
the engines refuse it and point to ``greedy_soup`` here (exported as ``wiseft.merge.greedy_soup``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from wiseft.core import MERGE_METHODS
from wiseft.io import StateDict, load_state
from wiseft.merge.interpolator import allocate
from wiseft.merge.kernels import accumulation_dtype
from wiseft.merge.method import MergeMethod, MergeParams
from wiseft.merge.methods.soup import merge_soup
from wiseft.merge.plan import MergeError, Step, make_selection, plan_merge, specs_of

Ingredient = StateDict | str | Path  # loaded with ``io.load_state``


class GreedySoupParams(MergeParams):
    """A greedy soup has no parameters: its ingredients are chosen by ``evaluate``."""


@dataclass
class GreedySoup:
    """The soup, the ingredients chosen (indices, in the order they were added), the
    held-out score of the soup and of each ingredient alone."""

    state: dict[str, torch.Tensor]
    chosen: list[int]
    score: float
    scores: list[float]


@torch.no_grad()
def greedy_soup(ingredients: Sequence[Ingredient], evaluate: Callable[[dict[str, torch.Tensor]], float], *,
                scores: Sequence[float] | None = None) -> GreedySoup:
    """Greedy soup: sort ingredients by held-out score, then add each one whose
    addition to the uniform average does not lower the held-out score.

    ``evaluate`` maps a state dict to a held-out score (higher is better; never a
    shift test set). Ingredients may be paths, loaded one at a time: memory is one fp32
    running sum, one candidate and one ingredient. The result equals
    ``uniform_soup`` of the chosen ingredients in ``chosen`` order, bit for bit.

    Example:
        >>> result = greedy_soup(["ft_0.safetensors", "ft_1.safetensors"], held_out_accuracy)
        >>> result.chosen, result.score
    """
    if not ingredients:
        raise MergeError("greedy soup needs at least one ingredient")
    if scores is None:
        scores = [float(evaluate(load_state(g))) for g in ingredients]
    order = sorted(range(len(ingredients)), key=lambda i: -scores[i])
    first = load_state(ingredients[order[0]])
    steps = plan_merge([specs_of(first)])
    acc = {s.name: first[s.name].to(accumulation_dtype(s.spec.dtype), copy=True) if s.op == "mix" else first[s.name]
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


def _soup_into(out: dict[str, torch.Tensor], acc: dict[str, torch.Tensor], steps: Sequence[Step], n: int,
               extra: StateDict | None) -> None:
    """out = (acc + extra) / n for mixed tensors (the uniform soup's arithmetic)."""
    for s in steps:
        if s.op != "mix":
            out[s.name].copy_(acc[s.name])
            continue
        total = acc[s.name] + extra[s.name] if extra is not None else acc[s.name].clone()
        if n != 1:
            total.div_(n)
        out[s.name].copy_(total)


MERGE_METHODS.add("greedy_soup", MergeMethod(
    name="greedy_soup", params=GreedySoupParams, merge_tensor=merge_soup, needs_base=False, min_models=1,
    elementwise=True, weighted=False, half_inside=True, needs=("evaluate",), procedure=greedy_soup,
    reference="Wortsman et al. 2022, Model soups: averaging weights of multiple fine-tuned models improves "
              "accuracy without increasing inference time, arXiv:2203.05482",
    description="ingredients in order of held-out score, each kept when the uniform soup with it scores no lower "
                "(a procedure: needs an evaluate callback; run wiseft.merge.greedy_soup)"))

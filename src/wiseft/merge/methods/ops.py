"""Tensor operations the task-vector methods share: task vectors, their weighted sum with
or without TIES's sign consensus, and a float64 dot product whose bits do not depend on
the thread count.

Every elementwise step here is one correctly rounded operation (a multiply, then an
add; never a fused ``add(x, alpha=w)``), so a vectorised loop and its scalar tail give
the same bits and a tensor cut into chunks merges to the same bits as the whole.
"""

from __future__ import annotations

from typing import Sequence

import torch

from wiseft.merge.method import TensorInputs

# Reductions add float64 partial sums of blocks this long, in order: torch reduces a
# block this size on one thread, so the result does not depend on torch.get_num_threads().
REDUCE_BLOCK = 1 << 15


def task_vectors(inputs: TensorInputs) -> list[torch.Tensor]:
    """theta_i - theta_0 for each fine-tuned model."""
    return [m - inputs.base for m in inputs.models]


def combine(deltas: Sequence[torch.Tensor], weights: Sequence[float], *, consensus: bool,
            normalize: bool) -> torch.Tensor:
    """sum_i w_i delta_i (divided by sum_i w_i when ``normalize``).

    With ``consensus`` (TIES): the sign of sum_i w_i delta_i is elected per element
    (+ where the sum is 0, as mergekit), and only the terms w_i delta_i of that sign
    (nonzero) are summed; ``normalize`` then divides by the sum of their weights (1
    where no term agrees): the disjoint mean.
    """
    weighted = [d * w for d, w in zip(deltas, weights)]
    total = weighted[0].clone()
    for x in weighted[1:]:
        total.add_(x)
    if not consensus:
        weight_sum = sum(weights)
        # mergekit's guard: weights summing to ~0 are not divided by
        return total.div_(weight_sum) if normalize and abs(weight_sum) >= 1e-8 else total
    elected = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    mixed = torch.zeros_like(total)
    divisor = torch.zeros_like(total)
    for x, w in zip(weighted, weights):
        agree = torch.sign(x) == elected
        mixed.add_(torch.where(agree, x, 0.0))
        divisor.add_(agree.to(total.dtype).mul_(w))
    if not normalize:
        return mixed
    return mixed.div_(torch.where(divisor == 0, 1.0, divisor))


def add_scaled(base: torch.Tensor, delta: torch.Tensor, scale: float) -> torch.Tensor:
    """base + scale * delta (a new tensor; ``delta`` is consumed)."""
    if scale != 1.0:
        delta = delta.mul_(scale)
    return delta.add_(base)


def dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum(a * b) over all elements, in float64, the same bits whatever the thread count."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for i in range(0, a.numel(), REDUCE_BLOCK):
        x = a[i:i + REDUCE_BLOCK].to(torch.float64)  # the input itself when it is float64: never written
        y = b[i:i + REDUCE_BLOCK].to(torch.float64)
        total += float(torch.mul(x, y).sum())
    return total

"""The per-tensor arithmetic of every merge: ``interpolate_tensor`` and ``average_tensor``
(pure functions, the one formula of each engine, so in-memory and out-of-core merges
give the same bits), ``keep_equal``, and ``interpolate_many``, which runs many
interpolations on a pool of single-threaded workers.

Half precision is mixed in fp32 and rounded once; results never alias the inputs.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from wiseft.io import all_finite
from wiseft.merge.plan import MergeError

# Large CPU tensors are cut into pieces of this many elements, shared out to worker threads.
PIECE_NUMEL = 1 << 20


def interpolate_tensor(a: torch.Tensor, b: torch.Tensor, alpha: float,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - alpha) * a + alpha * b into ``out``: the one formula of every engine.

    ``torch.lerp`` in one pass (``a + alpha (b - a)`` below alpha 0.5, ``b - (1 - alpha)
    (b - a)`` above); half types are computed in fp32 inside the op and rounded once.
    Exact copies at alpha 0 and 1; integer and bool tensors are copied from ``a``.
    """
    if out is None:
        out = torch.empty_like(a, memory_format=torch.contiguous_format)
    if not (a.is_floating_point() or a.is_complex()) or alpha == 0.0:
        return out.copy_(a)
    if alpha == 1.0:
        return out.copy_(b)
    if out.device != a.device:
        out.copy_(torch.lerp(a, b, alpha))
    else:
        torch.lerp(a, b, alpha, out=out)
    return keep_equal(out, [a, b])


def keep_equal(out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``out`` with every element where all ``inputs`` agree set to that value: the mix
    of -inf and -inf (an additive attention mask in both models) is -inf, not the NaN
    of ``-inf - -inf``. Costs one reduction unless ``out`` holds a NaN or Inf."""
    if not (out.is_floating_point() or out.is_complex()) or all_finite(out):
        return out
    a = inputs[0].to(out.device)
    same = torch.ones(out.shape, dtype=torch.bool, device=out.device)
    for b in inputs[1:]:
        same &= a == b.to(out.device)
    return out.copy_(torch.where(same, a.to(out.dtype), out))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float64, torch.complex128, torch.complex64):
        return dtype
    return torch.float32


def average_tensor(tensors: Sequence[torch.Tensor], weights: Sequence[float],
                   out: torch.Tensor | None = None, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i t_i / sum_i w_i into ``out``, accumulated in fp32 (fp64 for fp64).

    Zero weights are skipped, so a one-hot weight vector copies that input exactly;
    integer and bool tensors are copied from the first input. ``scratch`` (fp32, at
    least ``out.numel()`` elements) avoids an allocation for half types.
    """
    t0 = tensors[0]
    if out is None:
        out = torch.empty_like(t0, memory_format=torch.contiguous_format)
    if not (t0.is_floating_point() or t0.is_complex()):
        return out.copy_(t0)
    live = [(t, float(w)) for t, w in zip(tensors, weights) if w != 0]
    if not live:
        raise MergeError("all weights are zero")
    if len(live) == 1:
        return out.copy_(live[0][0])
    acc_dtype = accumulation_dtype(out.dtype)
    if out.dtype == acc_dtype and out.is_contiguous():
        acc = out
    elif scratch is not None and scratch.dtype == acc_dtype and scratch.numel() >= out.numel():
        acc = scratch[: out.numel()].view(out.shape)
    else:
        acc = torch.empty(out.shape, dtype=acc_dtype, device=out.device)
    (t, w), total = live[0], sum(w for _, w in live)
    acc.copy_(t)
    if w != 1.0:
        acc.mul_(w)
    for t, w in live[1:]:
        acc.add_(t, alpha=w)
    if total != 1.0:
        acc.div_(total)
    return keep_equal(out if acc is out else out.copy_(acc), [t for t, _ in live])


# --- parallel execution -------------------------------------------------------------------

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (size, pid): a forked child must not reuse its parent's pool


def _openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _workers(num_threads: int | None) -> int:
    n = torch.get_num_threads() if num_threads is None else num_threads
    return n if n > 1 and _openmp() else 1


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    if _pool is None or _pool_key != (n, os.getpid()):
        # With OpenMP the thread count is per thread: the workers run every op on one
        # core, the caller's setting is untouched.
        _pool = ThreadPoolExecutor(n, thread_name_prefix="wiseft-merge", initializer=torch.set_num_threads,
                                   initargs=(1,))
        _pool_key = (n, os.getpid())
    return _pool


def interpolate_many(items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]],
                     num_threads: int | None = None) -> None:
    """``interpolate_tensor(a, b, alpha, out=t)`` for every ``(t, a, b, alpha)``.

    Parallel across tensors, not inside each op: large CPU tensors are cut into pieces
    that single-threaded workers pull from a shared counter. On a busy machine an
    OpenMP op stalls at its end barrier whenever one of its threads is descheduled;
    one barrier per alpha instead of one per tensor keeps a sweep near the memory
    bandwidth. The elementwise kernel gives the same bits wherever a piece starts.
    """
    workers = _workers(num_threads)
    pieces = []
    for t, a, b, alpha in items:
        n = t.numel()
        if (workers > 1 and n > PIECE_NUMEL and t.device.type == "cpu" and t.device == a.device == b.device
                and t.is_contiguous() and a.is_contiguous() and b.is_contiguous()):
            tv, av, bv = t.view(-1), a.view(-1), b.view(-1)
            pieces += [(tv[i:i + PIECE_NUMEL], av[i:i + PIECE_NUMEL], bv[i:i + PIECE_NUMEL], alpha)
                       for i in range(0, n, PIECE_NUMEL)]
        else:
            pieces.append((t, a, b, alpha))
    if workers == 1 or len(pieces) < 2 or any(p[0].device.type != "cpu" for p in pieces):
        for t, a, b, alpha in pieces:
            interpolate_tensor(a, b, alpha, out=t)
        return
    counter = itertools.count()

    def work() -> None:
        with torch.no_grad():
            for i in counter:
                if i >= len(pieces):
                    return
                t, a, b, alpha = pieces[i]
                interpolate_tensor(a, b, alpha, out=t)

    pool = _get_pool(workers)
    for f in [pool.submit(work) for _ in range(workers)]:
        f.result()

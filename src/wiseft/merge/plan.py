"""The merge plan: what happens to each tensor of the inputs (mixed, copied from one
input, or dropped), decided from shapes and dtypes alone, so file headers can be
checked (and a ``--dry-run`` reported) without reading weights; and the checks every
merge makes first: alphas, weights, and the names alpha outputs are written under.

Rules (../DESIGN.md): only floating tensors are mixed; integer and bool buffers are
copied from theta_0 unchanged; keys, shapes and dtypes are checked before any work.
The arithmetic is in ``wiseft.merge.kernels``, the in-memory engine in
``wiseft.merge.interpolator``, the out-of-core one in ``wiseft.merge.files``.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from wiseft.config import MergeConfig
from wiseft.core import WiseftError
from wiseft.io import StateDict


class MergeError(WiseftError):
    """Checkpoints cannot be merged; the message names the first mismatch."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor: all the planner needs."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def mixable(self) -> bool:
        return self.dtype.is_floating_point or self.dtype.is_complex


def spec_of(t: torch.Tensor) -> TensorSpec:
    return TensorSpec(tuple(t.shape), t.dtype)


@dataclass(frozen=True)
class Selection:
    """Which tensors are merged. A name is merged when it matches an ``include`` glob
    (all names when ``include`` is None) and no ``exclude`` glob; any other name is
    taken unchanged from input number ``keep`` (dropped if that input lacks it).

    Example: interpolate the backbone but keep the fine-tuned model's new head:
        >>> Selection(exclude=("head.*",), keep=1)
    """

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    keep: int = 1

    def selects(self, name: str) -> bool:
        if self.include is not None and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


def make_selection(include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                   keep: int = 1) -> Selection:
    return Selection(tuple(include) if include is not None else None, tuple(exclude or ()), keep)


def selection_of(settings: MergeConfig, default_keep: int) -> Selection:
    """The tensors ``settings`` mixes; the others from input ``settings.keep``, or from
    ``default_keep`` (the operation's own default) when it is None."""
    keep = default_keep if settings.keep is None else settings.keep
    return make_selection(settings.include, settings.exclude, keep)


@dataclass(frozen=True)
class Step:
    """What happens to one tensor: ``mix`` the inputs, ``copy`` input ``source``, or
    ``drop`` it (excluded, and missing from the input it would be kept from)."""

    name: str
    op: str
    source: int
    spec: TensorSpec


def _side(i: int, n: int) -> str:
    if n == 2:
        return ("the first", "the second")[i] + " state dict"
    return f"input {i}"


def plan_merge(specs: Sequence[Mapping[str, TensorSpec]], selection: Selection | None = None) -> list[Step]:
    """The merge of ``specs`` tensor by tensor, in the first input's order. Raises
    MergeError naming the first key, then the first shape or dtype, that differs."""
    sel = selection or Selection(keep=min(1, len(specs) - 1))
    n = len(specs)
    if not 0 <= sel.keep < n:
        raise MergeError(f"keep={sel.keep} is not an input index (0..{n - 1})")
    names = list(dict.fromkeys(k for s in specs for k in s))
    hint = "; exclude it (exclude=[...], CLI --exclude) to take it from one input"
    for k in names:
        if sel.selects(k):
            have = [k in s for s in specs]
            if not all(have):
                i, j = have.index(True), have.index(False)
                raise MergeError(f"key {k!r} is in {_side(i, n)} but not in {_side(j, n)}{hint}")
    steps = []
    for k in names:
        if not sel.selects(k):
            src = specs[sel.keep]
            steps.append(Step(k, "copy", sel.keep, src[k]) if k in src
                         else Step(k, "drop", -1, next(s[k] for s in specs if k in s)))
            continue
        first = specs[0][k]
        for i in range(1, n):
            other = specs[i][k]
            if other.shape != first.shape:
                raise MergeError(f"tensor {k!r} has shape {first.shape} in {_side(0, n)} but {other.shape} "
                                 f"in {_side(i, n)}{hint}")
            if other.dtype != first.dtype:
                raise MergeError(f"tensor {k!r} has dtype {first.dtype} in {_side(0, n)} but {other.dtype} "
                                 f"in {_side(i, n)}")
        steps.append(Step(k, "mix", -1, first) if first.mixable else Step(k, "copy", 0, first))
    return steps


def specs_of(theta: StateDict) -> dict[str, TensorSpec]:
    return {k: spec_of(v) for k, v in theta.items()}


def check_compatible(theta_0: StateDict, theta_1: StateDict) -> None:
    """Raise MergeError naming the first key, shape or dtype that differs."""
    plan_merge([specs_of(theta_0), specs_of(theta_1)])


def check_alpha(alpha: float, allow_extrapolation: bool = False) -> None:
    """MergeError for an alpha that is not a finite number, or outside [0, 1] without an
    explicit opt-in (alphas outside extrapolate)."""
    if not math.isfinite(alpha):
        raise MergeError(f"alpha={alpha} is not a finite number; alpha must lie in [0, 1] "
                         "(any finite value with allow_extrapolation)")
    if not allow_extrapolation and not 0.0 <= alpha <= 1.0:
        raise MergeError(f"alpha={alpha} is outside [0, 1]; pass allow_extrapolation=True "
                         "(CLI: --extrapolate) to extrapolate on purpose")


def check_weights(weights: Sequence[float] | None, n: int, *, average: bool = True,
                  who: str = "") -> list[float]:
    """One weight per model (1 each when None), every one a finite number; for an average
    (``average``: a soup, a Fisher merge) each >= 0 with a positive sum. MergeError naming
    ``who`` (the method), the first weight at fault and the allowed range."""
    who = f"{who}: " if who else ""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"{who}{len(weights)} weights for {n} models; give one weight per model")
    allowed = ("each a finite number >= 0, their sum > 0 (the weights of an average)" if average
               else "each a finite number")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or (average and w < 0):
            fault = "not a finite number" if not math.isfinite(w) else "negative"
            raise MergeError(f"{who}weights[{i}] = {w} is {fault}; weights take {allowed}")
    if average and sum(weights) <= 0:
        raise MergeError(f"{who}weights {weights} sum to 0; weights take {allowed}")
    return weights


def check_average_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """The weights of an average of ``n`` models (``check_weights`` with ``average``):
    uniform when None; MergeError when there are no models."""
    if n < 1:
        raise MergeError("no models to average")
    return check_weights(weights, n, average=True)


def alpha_label(alpha: float) -> str:
    """``alpha`` as output names write it: two decimals (``0.50``), more where two decimals
    would name another float (``0.501``), so ``float(alpha_label(a)) == a`` for every
    finite alpha and distinct alphas get distinct labels."""
    alpha = float(alpha)
    for digits in range(2, 18):
        label = f"{alpha:.{digits}f}"
        if float(label) == alpha:
            return label
    return repr(alpha)  # a tiny alpha (1e-20): the shortest repr that reads back


def alpha_destinations(alphas: Sequence[float], out: str | os.PathLike, suffix: str = "") -> dict[float, Any]:
    """Where each alpha of a sweep is written: ``out`` itself for one alpha, else
    ``out/alpha_<alpha_label><suffix>`` for each; MergeError for an alpha given twice
    (two would be one file), before anything is opened."""
    from pathlib import Path

    seen: dict[float, float] = {}
    for a in alphas:
        if float(a) in seen:
            raise MergeError(f"alpha {a!r} is given twice (as {seen[float(a)]!r} and {a!r}); "
                             "each alpha is written to its own file, so give each once")
        seen[float(a)] = a
    out = Path(out)
    if len(seen) == 1:
        return {float(alphas[0]): out}
    return {a: out / f"alpha_{alpha_label(a)}{suffix}" for a in seen}

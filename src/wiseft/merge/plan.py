"""Weight-space ensembling: theta_alpha = (1 - alpha) * theta_0 + alpha * theta_1.

Rules (../DESIGN.md): only floating tensors are mixed; integer and bool buffers are
copied from theta_0 unchanged; half precision is mixed in fp32 and cast back; keys,
shapes and dtypes are checked before any work; results never alias the inputs; tied
weights are merged once and stay tied.

Every merge, in memory (here) or out of core (``merge_files``), goes through two pure
per-tensor functions, ``interpolate_tensor`` and ``average_tensor``, so both engines
produce the same bits. The planner ``plan_merge`` works on shapes and dtypes only, so
file headers can be checked (and a ``--dry-run`` reported) without reading weights.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import torch

from wiseft.config import MergeConfig
from wiseft.core import WiseftError
from wiseft.io import StateDict, all_finite

# Tensors below this many elements are merged with one foreach call per alpha rather
# than one op each: per-op overhead, not bandwidth, is their cost.
SMALL_NUMEL = 1 << 16
# Larger tensors are cut into pieces of this many elements, shared out to worker threads.
PIECE_NUMEL = 1 << 20


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


# --- the pure per-tensor functions ---------------------------------------------------

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


# --- in-memory engine ------------------------------------------------------------------

def _storage_key(t: torch.Tensor) -> tuple | None:
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def tie_map(steps: Sequence[Step], thetas: Sequence[StateDict]) -> dict[str, str]:
    """name -> earlier name it must share its output with: the same op on the same
    storage in every input that op reads (tied weights are merged once)."""
    first: dict[tuple, str] = {}
    ties = {}
    for s in steps:
        if s.op == "drop":
            continue
        srcs = range(len(thetas)) if s.op == "mix" else [s.source]
        keys = [_storage_key(thetas[i][s.name]) for i in srcs]
        if any(k is None for k in keys):
            continue
        sig = (s.op, s.source, tuple(keys))
        if sig in first:
            ties[s.name] = first[sig]
        else:
            first[sig] = s.name
    return ties


def allocate(steps: Sequence[Step], thetas: Sequence[StateDict], ties: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Fresh output tensors for ``steps`` (tied names share one tensor)."""
    out: dict[str, torch.Tensor] = {}
    for s in steps:
        if s.op == "drop":
            continue
        if s.name in ties:
            out[s.name] = out[ties[s.name]]
            continue
        src = thetas[0 if s.op == "mix" else s.source][s.name]
        out[s.name] = torch.empty(s.spec.shape, dtype=s.spec.dtype, device=src.device)
    return out


class AlphaSchedule(Protocol):
    """Alpha as a function of the parameter name: ``merging.linear.LinearParams`` (glob
    rules, a depth ramp) is one. ``alphas`` gets every name of the merge, so depths can be
    placed from the whole key set as ``merging.merge_states`` does."""

    def alphas(self, names: Sequence[str]) -> Mapping[str, float]:
        ...


Alpha = float | AlphaSchedule


class Interpolator:
    """Alpha sweeps without copies: checks once, then writes theta_alpha into a
    preallocated target (a model's own parameters, or a state dict reused across the
    sweep) for each alpha. Holds references to the inputs, never copies of them.

    An alpha is a float, or a schedule giving each parameter its own alpha (per-layer
    alpha: ``merging.linear.LinearParams`` with ``rules`` or a ``ramp``); tensors of one
    alpha are mixed together, so a schedule costs about what one global alpha costs.
    ``settings`` picks the tensors to mix (the others from input ``keep``, default 1)
    and allows extrapolation; its fields may also be given as keywords (``options``).

    Example:
        >>> interp = Interpolator(zs_state, ft_state, MergeConfig(exclude=["head.*"]))
        >>> for alpha, theta in interp.states([0.0, 0.5, 1.0]):  # one target, reused
        ...     evaluate(theta)
        >>> theta = interp.merge(LinearParams(ramp=(0.2, 0.8)))  # alpha from 0.2 (embeddings) to 0.8
    """

    def __init__(self, theta_0: StateDict, theta_1: StateDict, settings: MergeConfig | None = None, *,
                 num_threads: int | None = None):
        settings = settings if settings is not None else MergeConfig()
        self.num_threads = num_threads  # worker threads (default: torch.get_num_threads())
        self.selection = selection_of(settings, default_keep=1)
        self.steps = plan_merge([specs_of(theta_0), specs_of(theta_1)], self.selection)
        self.theta_0 = {k: v.detach() for k, v in theta_0.items()}
        self.theta_1 = {k: v.detach() for k, v in theta_1.items()}
        self.allow_extrapolation = settings.allow_extrapolation
        self.ties = tie_map(self.steps, (self.theta_0, self.theta_1))
        self._input_storages = {v.untyped_storage().data_ptr() for th in (self.theta_0, self.theta_1)
                                for v in th.values() if v.numel() and v.device.type != "meta"}
        # small mixed inputs holding NaN/Inf, which the foreach path must fix after lerp
        self._nonfinite = {id(th[s.name]) for s in self.steps if s.op == "mix" and s.spec.numel < SMALL_NUMEL
                           for th in (self.theta_0, self.theta_1)
                           if th[s.name].device.type != "meta" and not all_finite(th[s.name])}

    def new_target(self) -> dict[str, torch.Tensor]:
        """An uninitialised output state dict (tied names share a tensor)."""
        return allocate(self.steps, (self.theta_0, self.theta_1), self.ties)

    def alphas(self, alpha: Alpha) -> float | Mapping[str, float]:
        """``alpha`` checked (a float in [0, 1] unless extrapolation is allowed), or a
        schedule's alpha for every parameter name of the merge."""
        if isinstance(alpha, (int, float)):
            check_alpha(float(alpha), self.allow_extrapolation)
            return float(alpha)
        return alpha.alphas([s.name for s in self.steps])

    def merge(self, alpha: Alpha, out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """theta_alpha, written into ``out`` (a target from ``new_target``, reusable
        across alphas) or into a new state dict; ``alpha`` a float or a schedule."""
        alphas = self.alphas(alpha)
        out = out if out is not None else self.new_target()
        self._write(alphas, out, "output state dict")
        return out

    def states(self, alphas: Iterable[Alpha]) -> Iterator[tuple[Alpha, dict[str, torch.Tensor]]]:
        """(alpha, theta_alpha) for each alpha (floats or schedules); one target is reused,
        so each state dict is valid until the next step (clone it to keep it)."""
        alphas = list(alphas)
        for a in alphas:
            if isinstance(a, (int, float)):
                check_alpha(a, self.allow_extrapolation)
        target = self.new_target()
        for a in alphas:
            yield a, self.merge(a, out=target)


    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, alpha: Alpha) -> torch.nn.Module:
        """Set ``model``'s weights to theta_alpha (a float or a schedule) in place and return it."""
        self._write(self.alphas(alpha), model.state_dict(keep_vars=True), "model")
        return model

    def _targets(self, targets: Mapping[str, torch.Tensor], what: str) -> list[tuple[Step, torch.Tensor]]:
        """(step, target tensor) for every tensor to write, each storage once; MergeError
        for a target that differs from the plan or aliases an input."""
        wanted = [s for s in self.steps if s.op != "drop"]
        differ = {s.name for s in wanted} ^ set(targets)
        if differ:
            raise MergeError(f"{what} and merge output differ at key {sorted(differ)[0]!r}")
        pairs, seen = [], set()
        for s in wanted:
            t = targets[s.name].detach()
            if tuple(t.shape) != s.spec.shape or t.dtype != s.spec.dtype:
                raise MergeError(f"{what} tensor {s.name!r} is {tuple(t.shape)} {t.dtype}, but the merge "
                                 f"gives {s.spec.shape} {s.spec.dtype}")
            key = _storage_key(t)
            if key is not None:
                if key[0] in self._input_storages:
                    raise MergeError(f"{what} tensor {s.name!r} aliases an input state dict; pass copies "
                                     "(e.g. {k: v.clone()}) as theta_0/theta_1")
                if key in seen:  # tied in the target: written once
                    continue
                seen.add(key)
            pairs.append((s, t))
        return pairs

    @torch.no_grad()
    def _write(self, alphas: float | Mapping[str, float], targets: Mapping[str, torch.Tensor], what: str) -> None:
        """Write theta_alpha into ``targets``: small copies in one foreach call, small mixes
        in one foreach lerp per alpha, large tensors in pieces on the worker threads."""
        copies: tuple[list, list] = ([], [])
        small: dict[float, tuple[list, list, list]] = {}
        large = []
        for s, t in self._targets(targets, what):
            alpha = alphas if isinstance(alphas, float) else alphas[s.name]
            if s.op == "copy" or alpha in (0.0, 1.0):
                side = s.source if s.op == "copy" else int(alpha == 1.0)
                src = (self.theta_0, self.theta_1)[side][s.name]
                if t.numel() < SMALL_NUMEL:
                    copies[0].append(t)
                    copies[1].append(src)
                else:
                    large.append((t, src, src, 0.0))  # weight 0: an exact copy, on the workers
                continue
            a, b = self.theta_0[s.name], self.theta_1[s.name]
            if t.numel() < SMALL_NUMEL and t.device == a.device == b.device:
                for lst, x in zip(small.setdefault(alpha, ([], [], [])), (t, a, b)):
                    lst.append(x)
            else:
                large.append((t, a, b, alpha))
        if copies[0]:
            torch._foreach_copy_(copies[0], copies[1])
        for alpha, group in small.items():
            # lerp_ on a copy of a is the same kernel, on the same values, as lerp(a, b)
            torch._foreach_copy_(group[0], group[1])
            torch._foreach_lerp_(group[0], group[2], alpha)
            for t, a, b in zip(*group):  # inputs holding NaN/Inf (known from __init__): equal stays equal
                if id(a) in self._nonfinite or id(b) in self._nonfinite:
                    keep_equal(t, [a, b])
        interpolate_many(large, self.num_threads)


def interpolate(theta_0: StateDict, theta_1: StateDict, alpha: float, settings: MergeConfig | None = None, *,
                out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A new state dict theta_alpha (or ``out``, filled in place); the inputs are not
    modified or aliased. ``settings``: ``include``/``exclude``
    globs pick the tensors to mix; the others come from input ``keep`` (0 or 1, default 1).

    Example:
        >>> merged = interpolate(zeroshot.state_dict(), finetuned.state_dict(), 0.5)
        >>> merged = interpolate(zs, ft, 0.5, MergeConfig(exclude=["head.*"]))  # keep ft's new head
    """
    settings = settings if settings is not None else MergeConfig()
    check_alpha(alpha, settings.allow_extrapolation)
    return Interpolator(theta_0, theta_1, settings).merge(alpha, out=out)

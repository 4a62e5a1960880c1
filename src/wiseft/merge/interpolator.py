"""The in-memory engine of weight-space ensembling, theta_alpha = (1 - alpha) * theta_0 +
alpha * theta_1: ``Interpolator`` checks two state dicts once and writes theta_alpha for
each alpha (or per-parameter alpha schedule) into a reused target; ``interpolate`` is
one merge. Tied weights (``tie_map``) are merged once and stay tied; ``allocate`` makes
the output tensors.

Every tensor goes through ``wiseft.merge.kernels`` (``interpolate_tensor`` and its
batched forms), so the results are those of the out-of-core engine, bit for bit.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Protocol, Sequence

import torch

from wiseft.config import MergeConfig
from wiseft.io import StateDict, all_finite
from wiseft.merge.kernels import interpolate_many, keep_equal
from wiseft.merge.plan import MergeError, Step, check_alpha, plan_merge, selection_of, specs_of

# Tensors below this many elements are merged with one foreach call per alpha rather
# than one op each: per-op overhead, not bandwidth, is their cost.
SMALL_NUMEL = 1 << 16


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


def allocate(steps: Sequence[Step], thetas: Sequence[StateDict], ties: Mapping[str, str], *,
             rows: int | None = None, devices: Mapping[str, torch.device] | None = None) -> dict[str, torch.Tensor]:
    """Fresh output tensors for ``steps`` (tied names share one tensor), each on the device
    of the input it comes from, or on ``devices[name]`` when ``devices`` is given. With
    ``rows``, every mixed tensor gets a leading dimension of that size, ``(rows, *shape)``:
    one row per alpha of a stacked sweep (``wiseft.merge.stacked``)."""
    out: dict[str, torch.Tensor] = {}
    for s in steps:
        if s.op == "drop":
            continue
        if s.name in ties:
            out[s.name] = out[ties[s.name]]
            continue
        device = devices[s.name] if devices is not None else thetas[0 if s.op == "mix" else s.source][s.name].device
        shape = (rows, *s.spec.shape) if rows is not None and s.op == "mix" else s.spec.shape
        out[s.name] = torch.empty(shape, dtype=s.spec.dtype, device=device)
    return out


class AlphaSchedule(Protocol):
    """Alpha as a function of the parameter name: ``wiseft.merge.methods.linear.LinearParams``
    (glob rules, a depth ramp) is one. ``alphas`` gets every name of the merge, so depths can
    be placed from the whole key set as ``merge_states`` does."""

    def alphas(self, names: Sequence[str]) -> Mapping[str, float]:
        ...


Alpha = float | AlphaSchedule


class Interpolator:
    """Alpha sweeps without copies: checks once, then writes theta_alpha into a
    preallocated target (a model's own parameters, or a state dict reused across the
    sweep) for each alpha. Holds references to the inputs, never copies of them.

    An alpha is a float, or a schedule giving each parameter its own alpha (per-layer
    alpha: ``wiseft.merge.methods.linear.LinearParams`` with ``rules`` or a ``ramp``);
    tensors of one alpha are mixed together, so a schedule costs about what one global
    alpha costs. ``settings`` picks the tensors to mix (the others from input ``keep``,
    default 1) and allows extrapolation.

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

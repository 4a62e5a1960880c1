"""Several alphas per pass: the logits of theta_alpha for many alphas from one read of a batch.

An alpha sweep that loads theta_alpha into the model and runs every batch once per
alpha reads (and moves to the device) each batch once per alpha, and runs kernels
sized for one model. Here the mixed weights of every alpha are stacked once, with
``merge.Interpolator`` (so each alpha's weights are those ``merge.interpolate`` gives,
bit for bit), and ``torch.func.functional_call`` runs the model under ``torch.vmap``
over the stacked weights: a batch moves to the device once and each layer runs one
batched kernel for all the alphas of a pass.

Which model families vmap: the open_clip ViTs (``nn.MultiheadAttention``), Hugging Face
CLIP and SigLIP vision towers, and sentence-transformers/BERT text encoders, checked in
``tests/test_multi_alpha.py``. A forward that ``vmap`` cannot run (data-dependent Python
control flow on activations, an op without a batching rule that raises) falls back, in
mode ``"auto"``, to a loop over the alphas that still moves the batch to the device once;
``MultiAlpha.mode_used`` says which ran. Three things keep the vmapped forward fast, only
for the length of a call: the fused ``nn.MultiheadAttention`` path (no batching rule) is
switched off; a ``batch_first`` attention's input is handed over in sequence-major
memory, because vmap's rule for a linear layer on a non-contiguous input with batched
weights copies the weight once per sequence position; on CPU, attention runs on the math
kernel (the fused CPU kernel has no batching rule). A ``PromptClassifier`` (FLYP) is
refused: its head is re-derived from its mixed text tower at each alpha, not mixed.

Example:
    >>> logits = multi_alpha_logits(model.eval(), theta_0, theta_1, [0.0, 0.5, 1.0], images)
    >>> logits.shape  # (alphas, batch, classes)
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterator, Literal, Mapping, Sequence

import torch
from torch.func import functional_call

from wiseft.config import MergeConfig
from wiseft.core import WiseftError
from wiseft.heads import PromptClassifier
from wiseft.io import StateDict
from wiseft.merge.interpolator import Interpolator, allocate
from wiseft.merge.plan import MergeError
from wiseft.runtime import device_of, to_device

log = logging.getLogger("wiseft")

MultiAlphaMode = Literal["auto", "vmap", "loop"]
Inputs = torch.Tensor | Mapping[str, torch.Tensor]


class MultiAlphaError(WiseftError):
    """Several alphas cannot share a pass as asked (a bad setting, or a forward vmap cannot run)."""


@dataclass(frozen=True)
class MultiAlphaSettings:
    """How several alphas share a pass.

    ``mode``: ``"vmap"`` (one batched forward per pass), ``"loop"`` (one forward per
    alpha, the batch still moved once), or ``"auto"`` (vmap, and the loop where the
    model's forward cannot be vmapped). ``alphas_per_pass``: at most this many alphas
    in one vmapped forward (activation memory grows with it; None: all).
    ``max_memory``: bytes the stacked weights of one group of alphas may take
    (``split_alphas``; None: no limit). ``merge``: which tensors are mixed
    (include/exclude/keep, extrapolation), as for ``merge.Interpolator``.
    """

    mode: MultiAlphaMode = "auto"
    alphas_per_pass: int | None = None
    max_memory: int | None = None
    merge: MergeConfig = field(default_factory=MergeConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "vmap", "loop"):
            raise MultiAlphaError(f"mode must be 'auto', 'vmap' or 'loop', got {self.mode!r}")
        for name in ("alphas_per_pass", "max_memory"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MultiAlphaError(f"{name} must be at least 1 (or None), got {value}")


def stacked_bytes(theta_0: StateDict, theta_1: StateDict, settings: MultiAlphaSettings | None = None) -> int:
    """Bytes one more alpha adds to the stacked weights: the tensors that are mixed."""
    interp = Interpolator(theta_0, theta_1, (settings or MultiAlphaSettings()).merge)
    return sum(s.spec.nbytes for s in interp.steps if s.op == "mix" and s.name not in interp.ties)


def split_alphas(alphas: Sequence[float], theta_0: StateDict, theta_1: StateDict,
                 settings: MultiAlphaSettings | None = None) -> list[list[float]]:
    """``alphas`` in groups whose stacked weights fit ``settings.max_memory`` (one group
    when there is no limit), in order; each group is one ``MultiAlpha``.

    Example:
        >>> split_alphas([0.0, 0.5, 1.0], theta_0, theta_1, MultiAlphaSettings(max_memory=2 << 30))
    """
    s = settings or MultiAlphaSettings()
    alphas = list(alphas)
    if s.max_memory is None or not alphas:
        return [alphas] if alphas else []
    per_alpha = stacked_bytes(theta_0, theta_1, s)
    size = max(1, s.max_memory // per_alpha) if per_alpha else len(alphas)
    if per_alpha > s.max_memory:
        log.warning("one alpha's mixed weights take %d bytes, over max_memory=%d: one alpha per group",
                    per_alpha, s.max_memory)
    return [alphas[i:i + size] for i in range(0, len(alphas), size)]


class MultiAlpha:
    """The stacked theta_alpha of ``alphas`` for ``model``, built once; calling it on a
    batch gives every alpha's logits, ``(len(alphas), batch, classes)``, with the
    batch moved to the model's device once. The model's own weights are not touched
    and its mode is not changed: call it in eval mode (dropout draws random numbers,
    which vmap refuses; mode ``"auto"`` then loops). ``vmapped``: whether any batch's
    logits came from a vmapped forward (they equal one alpha at a time's to float
    rounding; the loop's are the same bits).

    Example:
        >>> multi = MultiAlpha(model.eval(), theta_0, theta_1, [0.0, 0.25, 0.5, 0.75, 1.0])
        >>> for images, labels in batches:
        ...     logits = multi(images)  # (5, batch, classes)
    """

    def __init__(self, model: torch.nn.Module, theta_0: StateDict, theta_1: StateDict, alphas: Sequence[float],
                 settings: MultiAlphaSettings | None = None):
        self.settings = settings or MultiAlphaSettings()
        self.alphas = [float(a) for a in alphas]
        if not self.alphas:
            raise MultiAlphaError("no alphas to evaluate")
        if isinstance(model, PromptClassifier):
            raise MultiAlphaError("a PromptClassifier's head is re-derived from its mixed text tower at every alpha "
                                  "(FLYP), not mixed: evaluate it one alpha at a time (heads.rederive_head)")
        self.model = model
        self.device = device_of(model)
        self.stacked, self.fixed = _stack_weights(model, Interpolator(theta_0, theta_1, self.settings.merge),
                                                  self.alphas)
        for name in _tied_in_model(model):  # functional_call takes one name per tied weight and ties the rest
            self.stacked.pop(name, None)
            self.fixed.pop(name, None)
        self.mode_used: Literal["vmap", "loop"] | None = None if self.settings.mode == "auto" else self.settings.mode
        self.vmapped = False

    @torch.no_grad()
    def __call__(self, inputs: Inputs) -> torch.Tensor:
        """Every alpha's logits on ``inputs`` (a tensor or a dict of tensors)."""
        x = to_device(inputs, self.device)
        if self.mode_used == "loop":
            return self._loop(x)
        try:
            return torch.cat([self._vmapped(x, i, j) for i, j in self._passes()])
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError, ValueError) as e:
            if self.settings.mode == "vmap":
                raise MultiAlphaError(f"{type(self.model).__name__}'s forward cannot run under torch.vmap "
                                      f"({_first_line(e)}); use mode 'loop' or 'auto'") from e
            log.warning("%s's forward cannot run under torch.vmap (%s); looping over the %d alphas instead",
                        type(self.model).__name__, _first_line(e), len(self.alphas))
            self.mode_used = "loop"
            return self._loop(x)

    def _passes(self) -> Iterator[tuple[int, int]]:
        n = len(self.alphas)
        size = self.settings.alphas_per_pass or n
        return ((i, min(i + size, n)) for i in range(0, n, size))

    def _vmapped(self, x: Inputs, start: int, stop: int) -> torch.Tensor:
        """Logits of alphas ``start:stop`` from one vmapped forward."""
        stacked = {k: v[start:stop] for k, v in self.stacked.items()}
        in_dims = ({**{k: 0 for k in stacked}, **{k: None for k in self.fixed}}, None)

        def forward(weights, inputs):
            return functional_call(self.model, weights, (inputs,))

        with vmap_friendly(self.model, self.device):
            out = torch.vmap(forward, in_dims=in_dims)({**stacked, **self.fixed}, x)
        if self.mode_used is None:
            self.mode_used = "vmap"
        self.vmapped = True
        return out

    def _loop(self, x: Inputs) -> torch.Tensor:
        """Logits of every alpha from one forward each, on the batch already moved."""
        return torch.stack([functional_call(self.model, {**{k: v[i] for k, v in self.stacked.items()}, **self.fixed},
                                            (x,)) for i in range(len(self.alphas))])


def multi_alpha_logits(model: torch.nn.Module, theta_0: StateDict, theta_1: StateDict, alphas: Sequence[float],
                       inputs: Inputs, settings: MultiAlphaSettings | None = None) -> torch.Tensor:
    """theta_alpha's logits on ``inputs`` for every alpha, ``(len(alphas), batch,
    classes)``, equal to ``model`` loaded with ``merge.interpolate(theta_0, theta_1,
    alpha)`` and run on ``inputs``, one alpha at a time, to float rounding. The batch
    moves to the model's device once; groups of alphas (``settings.max_memory``) are
    stacked one after another. For many batches, build ``MultiAlpha`` once instead.

    Example:
        >>> multi_alpha_logits(model.eval(), theta_0, theta_1, [0.0, 0.5, 1.0], images).shape
        torch.Size([3, 64, 1000])
    """
    x = to_device(inputs, device_of(model))
    groups = split_alphas(alphas, theta_0, theta_1, settings)
    if not groups:
        raise MultiAlphaError("no alphas to evaluate")
    return torch.cat([MultiAlpha(model, theta_0, theta_1, g, settings)(x) for g in groups])


def _stack_weights(model: torch.nn.Module, interp: Interpolator,
                   alphas: Sequence[float]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(stacked, fixed): a ``(len(alphas), *shape)`` tensor per mixed weight, row i
    holding theta_alpha_i's (tied weights share one); one tensor per weight that is not
    mixed. Each on the device where ``model`` holds that weight."""
    own = model.state_dict()
    differ = {s.name for s in interp.steps if s.op != "drop"} ^ set(own)
    if differ:
        raise MergeError(f"model and merge output differ at key {sorted(differ)[0]!r}")
    out = allocate(interp.steps, (interp.theta_0, interp.theta_1), interp.ties, rows=len(alphas),
                   devices={k: v.device for k, v in own.items()})
    mixed = {s.name for s in interp.steps if s.op == "mix"}
    stacked = {k: v for k, v in out.items() if k in mixed}
    fixed = {k: v for k, v in out.items() if k not in mixed}
    for i, alpha in enumerate(alphas):
        interp.merge(alpha, out={**{k: v[i] for k, v in stacked.items()}, **fixed})
    return stacked, fixed


def _tied_in_model(model: torch.nn.Module) -> list[str]:
    """Every name of ``model``'s state dict that holds the same tensor as an earlier name."""
    seen: set[int] = set()
    tied = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            tied.append(name)
        seen.add(id(t))
    return tied


@contextlib.contextmanager
def vmap_friendly(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """For the length of the block: no fused ``nn.MultiheadAttention`` path,
    ``batch_first`` attention inputs in sequence-major memory, and (on CPU) the math
    attention kernel; see the module's docstring for why."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    hooks = [m.register_forward_pre_hook(_sequence_major, with_kwargs=True) for m in model.modules()
             if isinstance(m, torch.nn.MultiheadAttention) and m.batch_first]
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in hooks:
            h.remove()


def _sequence_major(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """A ``batch_first`` attention's query (and the key and value that are the same
    tensor) with the same values, stored so that the module's transpose to
    (sequence, batch, dim) is contiguous."""
    query = args[0] if args else kwargs.get("query")
    if not isinstance(query, torch.Tensor) or query.dim() != 3:
        return None
    moved = query.transpose(0, 1).contiguous().transpose(0, 1)
    return (tuple(moved if a is query else a for a in args),
            {k: moved if v is query else v for k, v in kwargs.items()})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

"""Out-of-core merging of safetensors checkpoints, tensor by tensor and chunk by chunk.

Inputs are read from their headers and then with plain reads into a few fixed
buffers (no mmap, no whole tensor), so peak memory is a few chunks whatever the
model size; outputs are written as (sharded) safetensors, each file to a temporary
name and then renamed (``wiseft.merge.safetensors``). An alpha sweep reads the inputs
once and writes every alpha. The arithmetic is ``interpolate_tensor``/``average_tensor``
(``wiseft.merge.kernels``) on chunks, or a registered method's ``apply``, so the results
are bit-identical to the in-memory engines. ``plan_files`` and ``plan_method_files``
describe a merge from the headers alone (``--dry-run``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from wiseft.config import MergeConfig
from wiseft.io import check_finite
from wiseft.merge.depth import layer_depths
from wiseft.merge.engine import MergeCall, check_call, extras_for, plan_call
from wiseft.merge.kernels import average_tensor, interpolate_many
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs, apply
from wiseft.merge.plan import (
    MergeError,
    Step,
    TensorSpec,
    check_alpha,
    check_average_weights,
    plan_merge,
    selection_of,
)
from wiseft.merge.safetensors import (
    DEFAULT_SHARD_BYTES,
    CheckpointWriter,
    SafetensorsCheckpoint,
    TensorReader,
    open_checkpoint,
    shard_steps,
)


def _disk_order(steps: Sequence[Step], ckpts: Sequence[SafetensorsCheckpoint]) -> list[Step]:
    """Output order: widest dtype first (keeps every tensor aligned, as safetensors
    does), then the order of the first input that holds the tensor on disk."""
    def key(s: Step):
        i = 0 if s.op == "mix" else s.source
        loc = ckpts[i].locations[s.name]
        return (-s.spec.dtype.itemsize, str(loc.file), loc.offset)
    return sorted((s for s in steps if s.op != "drop"), key=key)


Kernel = Callable[[Mapping[int, torch.Tensor], torch.Tensor], None]


WriteStep = Callable[[Step, Sequence["CheckpointWriter"], "TensorReader"], None]


def _chunk_buffer(chunk_bytes: int) -> torch.Tensor:
    """A read buffer of about ``chunk_bytes``, whole 4 KiB pages."""
    return torch.empty(max(4096, chunk_bytes // 4096 * 4096), dtype=torch.uint8)


def _kernel_steps(ckpts: Sequence[SafetensorsCheckpoint], kernels: Sequence[Kernel], needs: Sequence[int],
                  chunk_bytes: int) -> WriteStep:
    """The interpolation engine's step: a mixed tensor chunk by chunk, what it needs read
    from the inputs, every output's chunk computed by its kernel and appended; a copied
    tensor copied. The buffers are allocated once, here."""
    bufs = {i: _chunk_buffer(chunk_bytes) for i in range(len(ckpts))}
    out_buf = _chunk_buffer(chunk_bytes)

    def write(s: Step, outputs: Sequence[CheckpointWriter], reader: TensorReader) -> None:
        if s.op != "mix":
            _copy_step(ckpts[s.source], s, outputs, reader, bufs[s.source])
            return
        size = s.spec.dtype.itemsize
        step = out_buf.numel() // (64 * size) * 64 * size  # whole elements, 64 at a time
        for start in range(0, s.spec.nbytes, step):
            n = min(step, s.spec.nbytes - start)
            for i in needs:
                reader.read(ckpts[i].locations[s.name], start, bufs[i][:n])
            ins = {i: bufs[i][:n].view(s.spec.dtype) for i in needs}
            out = out_buf[:n].view(s.spec.dtype)
            for o, kernel in zip(outputs, kernels):
                kernel(ins, out)
                check_finite({s.name: out}, f"merged checkpoint {o.dest}")
                o.write(out_buf[:n])

    return write


def _open_outputs(dests: Sequence[Path], steps: list[Step], max_shard_bytes: int | None,
                  metadata: Sequence[Mapping[str, str]]) -> list[CheckpointWriter]:
    outs = []
    for dest, meta in zip(dests, metadata):
        single = dest.suffix == ".safetensors"
        shards = shard_steps(steps, max_shard_bytes or DEFAULT_SHARD_BYTES) if not single else [steps]
        outs.append(CheckpointWriter(dest, shards, meta, single))
    if len({len(o.shards) for o in outs}) > 1:  # all outputs advance in lockstep
        for o in reversed(outs):  # the last opened first: the first one made their folder
            o.abort()
        raise MergeError("outputs that are single files and sharded directories cannot be mixed in one sweep")
    return outs


def _run(ckpts: Sequence[SafetensorsCheckpoint], steps: list[Step], dests: Sequence[str | Path],
         settings: MergeConfig, metadata: Sequence[Mapping[str, str]], write_step: WriteStep) -> list[Path]:
    """Every output written shard by shard, tensor by tensor in the inputs' disk order
    (``write_step`` writes one tensor to all of them), from one pass over the inputs;
    all committed, or all aborted."""
    ordered = _disk_order(steps, ckpts)
    outs = _open_outputs([Path(d) for d in dests], ordered, settings.shard_bytes, metadata)
    reader = TensorReader()
    try:
        for si in range(len(outs[0].shards)):
            for o in outs:
                o.start_shard(si)
            for s in outs[0].shards[si]:
                write_step(s, outs, reader)
        for o in outs:
            o.close_shard()
        reader.close()
        return [o.commit() for o in outs]
    except BaseException:
        reader.close()
        for o in reversed(outs):  # the last opened first: the first one made their folder
            o.abort()
        raise


Metadata = Mapping[str, str] | Sequence[Mapping[str, str]] | None


def _metadata_for(metadata: Metadata, n: int) -> list[dict]:
    if metadata is None or isinstance(metadata, Mapping):
        return [{"format": "pt", **(metadata or {})} for _ in range(n)]
    return [{"format": "pt", **m} for m in metadata]


def write_interpolations(path_0: str | Path, path_1: str | Path, outputs: Mapping[float, str | Path],
                         settings: MergeConfig | None = None, *, metadata: Metadata = None) -> list[Path]:
    """Write theta_alpha for every ``alpha -> destination`` in ``outputs``, reading both
    inputs once. A destination ending in ``.safetensors`` is one file; any other is a
    directory (``model.safetensors``, or shards of ``settings.max_shard_bytes`` and an
    index). ``settings`` as for ``merge.interpolate``;
    ``metadata``: the safetensors metadata of every output, or one mapping per output.

    Example:
        >>> write_interpolations("zs.safetensors", "ft/", {0.5: "out/a05.safetensors", 1.0: "out/a10"},
        ...                      MergeConfig(max_shard_bytes="5GB"))
    """
    settings = settings if settings is not None else MergeConfig()
    alphas = list(outputs)
    for a in alphas:
        check_alpha(a, settings.allow_extrapolation)
    _check_distinct(outputs)
    ckpts = [open_checkpoint(path_0), open_checkpoint(path_1)]
    steps = plan_merge([c.specs for c in ckpts], selection_of(settings, default_keep=1))
    kernels = [lambda ins, out, a=a: interpolate_many([(out, ins[0], ins[1], a)]) for a in alphas]
    return _run(ckpts, steps, list(outputs.values()), settings, _metadata_for(metadata, len(alphas)),
                _kernel_steps(ckpts, kernels, [0, 1], settings.chunk_bytes))


def _check_distinct(outputs: Mapping[float, str | Path]) -> None:
    """MergeError for two alphas written to one destination (the later would overwrite the earlier)."""
    seen: dict[Path, float] = {}
    for a, dest in outputs.items():
        where = Path(os.path.abspath(dest))
        if where in seen:
            raise MergeError(f"alphas {seen[where]!r} and {a!r} are both written to {dest}; give each its own "
                             "destination (merge.alpha_destinations names them alpha_<alpha>)")
        seen[where] = a


def interpolate_files(path_0: str | Path, path_1: str | Path, out: str | Path, alpha: float,
                      settings: MergeConfig | None = None, *, metadata: Metadata = None) -> Path:
    """One theta_alpha from two safetensors checkpoints, out of core (see write_interpolations)."""
    return write_interpolations(path_0, path_1, {alpha: out}, settings, metadata=metadata)[0]


def average_files(paths: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
                  settings: MergeConfig | None = None, *, metadata: Mapping[str, str] | None = None) -> Path:
    """A weighted average (uniform soup when ``weights`` is None) of N safetensors
    checkpoints, out of core; same arithmetic as ``weighted_average``. Tensors not
    selected by ``settings`` come from input ``keep``, default 0."""
    settings = settings if settings is not None else MergeConfig()
    weights = check_average_weights(weights, len(paths))
    ckpts = [open_checkpoint(p) for p in paths]
    steps = plan_merge([c.specs for c in ckpts], selection_of(settings, default_keep=0))
    needs = [i for i, w in enumerate(weights) if w != 0]
    kernel = _average_kernel(weights, needs, len(ckpts), settings.chunk_bytes)
    return _run(ckpts, steps, [out], settings, _metadata_for(metadata, 1),
                _kernel_steps(ckpts, [kernel], needs, settings.chunk_bytes))[0]


def _average_kernel(weights: list[float], needs: list[int], n: int, chunk_bytes: int) -> Kernel:
    """The chunk kernel of a weighted average of ``n`` inputs (``needs``: those weighted)."""
    scratch: list[torch.Tensor] = []  # fp32 accumulator for half types, made on first use

    def kernel(ins, out_t):
        if out_t.dtype.itemsize < 4 and not scratch:
            scratch.append(torch.empty(chunk_bytes // 2, dtype=torch.float32))
        average_tensor([ins.get(i, ins[needs[0]]) for i in range(n)], weights, out=out_t,
                       scratch=scratch[0] if scratch else None)
    return kernel


# --- dry run -----------------------------------------------------------------------

@dataclass
class MergePlan:
    """What a merge of checkpoint files would do, from their headers alone."""

    sources: list[SafetensorsCheckpoint]
    steps: list[Step]
    outputs: int
    chunk_bytes: int
    max_shard_bytes: int
    average: bool = False
    call: MergeCall | None = None  # a registered method's merge (``plan_method_files``)
    extras: dict[str, list[SafetensorsCheckpoint]] = field(default_factory=dict)

    @property
    def output_bytes(self) -> int:
        return sum(s.spec.nbytes for s in self.steps if s.op != "drop")

    def count(self, op: str) -> int:
        return sum(s.op == op for s in self.steps)

    @property
    def out_of_core_bytes(self) -> int:
        """Buffers of the out-of-core engine: one chunk per input, one out, and for
        averages of half types an fp32 accumulator of two chunks."""
        half = any(s.op == "mix" and s.spec.dtype.itemsize < 4 for s in self.steps)
        if self.call is None:
            return (len(self.sources) + 1 + 2 * (half and self.average)) * self.chunk_bytes
        # a method's pieces (chunks, or whole tensors): one per input and extra, fp32 copies
        # of half types, the result; and the chunk buffer copies go through
        inputs = len(self.sources) + sum(len(cs) for cs in self.extras.values())
        whole = max((s.spec.nbytes for s in self.steps if s.op == "mix"), default=0)
        piece = self.chunk_bytes if self.call.method.elementwise else whole
        return (inputs + 1) * piece * (3 if half else 1) + self.chunk_bytes

    @property
    def in_memory_bytes(self) -> int:
        """Loading every input and one output."""
        return sum(c.nbytes for c in self.sources) + self.output_bytes

    def summary(self) -> str:
        gb = _human
        mixed = [s for s in self.steps if s.op == "mix"]
        copied = [s for s in self.steps if s.op == "copy"]
        lines = self._method_lines()
        lines += [f"input {i}: {c.path} ({len(c.specs)} tensors, {gb(c.nbytes)})" for i, c in enumerate(self.sources)]
        lines += [f"{e} {i}: {c.path} ({len(c.specs)} tensors)" for e, cs in self.extras.items()
                  for i, c in enumerate(cs)]
        lines += [f"mixed:   {len(mixed)} tensors, {gb(sum(s.spec.nbytes for s in mixed))}",
                  f"copied:  {len(copied)} tensors, {gb(sum(s.spec.nbytes for s in copied))} "
                  "(integer/bool buffers from input 0; excluded tensors from the kept input)"]
        dropped = [s.name for s in self.steps if s.op == "drop"]
        if dropped:
            lines.append(f"dropped: {len(dropped)} tensors (excluded, absent from the kept input): "
                         + ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
        shards = len(shard_steps([s for s in self.steps if s.op != "drop"], self.max_shard_bytes))
        lines += [f"output:  {self.outputs} x {gb(self.output_bytes)} ({shards} shard(s) per sharded output)",
                  f"memory:  out of core ~{gb(self.out_of_core_bytes)} of buffers (+ the interpreter); "
                  f"in memory (all inputs + one output) {gb(self.in_memory_bytes)}"]
        return "\n".join(lines)

    def _method_lines(self) -> list[str]:
        """The method, its parameters (defaults filled in) and weights, for a method's plan."""
        if self.call is None:
            return []
        method, call = self.call.method, self.call
        how = "chunk by chunk" if method.elementwise else "tensor by tensor, whole"
        lines = [f"method:  {method.name} ({method.reference}); out of core {how}",
                 f"params:  {json.dumps(call.params.model_dump(mode='json'))}"]
        if method.weighted:
            lines.append(f"weights: {list(call.weights)}")
        if not method.elementwise:
            whole = max((s.spec.nbytes for s in self.steps if s.op == "mix"), default=0)
            lines.append(f"whole:   the largest mixed tensor is {_human(whole)}; the method's temporaries "
                         "(task vectors, masks) add a few tensors of that size to the buffers below")
        return lines


def plan_files(paths: Sequence[str | Path], settings: MergeConfig | None = None, *, outputs: int = 1,
               average: bool = False) -> MergePlan:
    """Check and describe a merge of checkpoint files into ``outputs`` outputs, reading
    only their headers; ``settings`` as the merge would take
    them (``keep`` unset: input 1 of two models, else input 0)."""
    settings = settings if settings is not None else MergeConfig()
    ckpts = [open_checkpoint(p) for p in paths]
    steps = plan_merge([c.specs for c in ckpts], selection_of(settings, default_keep=1 if len(paths) == 2 else 0))
    shard = settings.shard_bytes
    return MergePlan(ckpts, steps, outputs, settings.chunk_bytes, shard if shard is not None else DEFAULT_SHARD_BYTES,
                     average)


def _human(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# --- any registered merge method, out of core -------------------------------------------

@dataclass(frozen=True)
class _Sources:
    """The checkpoints of one method merge: ``ckpts`` in plan order (the base first when
    there is one, from index ``first`` the models) and the extras' checkpoints by name."""

    ckpts: list[SafetensorsCheckpoint]
    extras: dict[str, list[SafetensorsCheckpoint]]
    first: int

    def extra_specs(self) -> dict[str, list[dict[str, TensorSpec]]]:
        return {e: [c.specs for c in cs] for e, cs in self.extras.items()}


def _read_elements(reader: TensorReader, ckpt: SafetensorsCheckpoint, name: str, start: int,
                   count: int) -> torch.Tensor:
    """Elements ``start`` .. ``start + count`` of tensor ``name``, flat, in a new tensor."""
    spec = ckpt.specs[name]
    t = torch.empty(count, dtype=spec.dtype)
    if count:
        reader.read(ckpt.locations[name], start * spec.dtype.itemsize, t.view(torch.uint8))
    return t


def _pieces(spec: TensorSpec, elementwise: bool, itemsize: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """(start, count) element ranges: chunks of about ``chunk_bytes`` (at ``itemsize``
    bytes an element) for an elementwise method, else the whole tensor."""
    if not elementwise:
        return [(0, spec.numel)]
    step = max(64, chunk_bytes // (64 * itemsize) * 64)
    return [(i, min(step, spec.numel - i)) for i in range(0, spec.numel, step)]


def _mix_step(src: _Sources, s: Step, depth: float, calls: Sequence[MergeCall],
              outputs: Sequence[CheckpointWriter], reader: TensorReader, chunk_bytes: int) -> None:
    """Merge tensor ``s`` for every output: chunk by chunk for an elementwise method,
    whole otherwise; each piece through ``apply``, as the in-memory engine does."""
    method = calls[0].method
    extras = extras_for(src.extra_specs(), s.name, lambda e, i: src.extras[e][i])
    widest = max([s.spec.dtype.itemsize] + [c.specs[s.name].dtype.itemsize for cs in extras.values() for c in cs])
    for start, count in _pieces(s.spec, method.elementwise, widest, chunk_bytes):
        shape = (count,) if method.elementwise else s.spec.shape

        def read(c: SafetensorsCheckpoint) -> torch.Tensor:
            return _read_elements(reader, c, s.name, start, count).reshape(shape)

        tensors = [read(c) for c in src.ckpts]
        found = {e: tuple(read(c) for c in cs) for e, cs in extras.items()}
        for call, o in zip(calls, outputs):
            inputs = TensorInputs(s.name, depth, tensors[0] if src.first else None, tuple(tensors[src.first:]),
                                  call.weights, found)
            out = apply(call.method, inputs, call.params)
            check_finite({s.name: out}, f"merged checkpoint {o.dest}")
            o.write(out.reshape(-1).view(torch.uint8))


def _copy_step(ckpt: SafetensorsCheckpoint, s: Step, outputs: Sequence[CheckpointWriter], reader: TensorReader,
               buf: torch.Tensor) -> None:
    """Tensor ``s`` copied from ``ckpt`` into every output, ``buf`` at a time."""
    for start in range(0, s.spec.nbytes, buf.numel()):
        n = min(buf.numel(), s.spec.nbytes - start)
        reader.read(ckpt.locations[s.name], start, buf[:n])
        for o in outputs:
            o.write(buf[:n])


def _check_extras(src: _Sources, steps: Sequence[Step]) -> None:
    """MergeError naming the first mixed tensor whose extra is missing in some models or
    shaped otherwise, before anything is read or written."""
    specs = src.extra_specs()
    for s in steps:
        if s.op != "mix":
            continue
        for extra, found in extras_for(specs, s.name, lambda e, i: src.extras[e][i]).items():
            for i, c in enumerate(found):
                if c.specs[s.name].shape != s.spec.shape:
                    raise MergeError(f"{extra} {i} of {s.name!r} ({c.path}) has shape {c.specs[s.name].shape}, "
                                     f"the tensor {s.spec.shape}")


def _open_sources(call: MergeCall, base: str | Path | None, models: Sequence[str | Path],
                  extras: Mapping[str, Sequence[str | Path]] | None,
                  settings: MergeConfig) -> tuple[_Sources, list[Step]]:
    """The inputs' headers and the plan, every key, shape, dtype and extra checked."""
    paths = ([base] if base is not None else []) + list(models)
    src = _Sources([open_checkpoint(p) for p in paths],
                   {e: [open_checkpoint(p) for p in ps] for e, ps in (extras or {}).items()}, int(base is not None))
    steps = plan_call(call, [c.specs for c in src.ckpts], settings)
    _check_extras(src, steps)
    return src, steps


def plan_method_files(method: str | MergeMethod, base: str | Path | None, models: Sequence[str | Path],
                      params: MergeParams | Mapping | None = None, *, weights: Sequence[float] | None = None,
                      extras: Mapping[str, Sequence[str | Path]] | None = None,
                      settings: MergeConfig | None = None) -> MergePlan:
    """Check and describe a merge of checkpoint files by a registered method (what
    ``merge_files`` would do), reading only their headers: the method and its parameters,
    the tensors mixed, copied and dropped, the bytes, shards and buffers.

    Example:
        >>> print(plan_method_files("ties", "zs.safetensors", ["a/", "b/"], {"density": 0.2}).summary())
    """
    settings = settings or MergeConfig()
    call = check_call(method, base is not None, len(models), params, weights=weights, extras=extras,
                      settings=settings)
    src, steps = _open_sources(call, base, models, extras, settings)
    shard = settings.shard_bytes
    return MergePlan(src.ckpts, steps, 1, settings.chunk_bytes, shard if shard is not None else DEFAULT_SHARD_BYTES,
                     call=call, extras=src.extras)


def write_merges(method: str | MergeMethod, base: str | Path | None, models: Sequence[str | Path],
                 outputs: Mapping[str | Path, MergeParams | Mapping | None], *,
                 weights: Sequence[float] | None = None, extras: Mapping[str, Sequence[str | Path]] | None = None,
                 settings: MergeConfig | None = None, metadata: Metadata = None) -> list[Path]:
    """Any registered merge method, out of core: for every ``destination -> params`` in
    ``outputs`` (one method, several parameter sets), the merge of safetensors checkpoints
    ``base`` (theta_0, or None) and ``models``, reading the inputs once. ``extras``: the
    checkpoints of the per-model tensors the method declares (``{"fisher": [f_1, f_2]}``).

    Elementwise methods are read chunk by chunk (``settings.chunk_bytes``), the others
    tensor by tensor, whole; every piece goes through ``apply``, so the result is
    ``merge_states`` on the same weights, bit for bit. Destinations, shards and
    ``metadata`` as for ``write_interpolations``.

    Example:
        >>> write_merges("ties", "zs.safetensors", ["ft_a", "ft_b"], {"out/ties.safetensors": {"density": 0.2}})
    """
    settings = settings or MergeConfig()
    calls = [check_call(method, base is not None, len(models), p, weights=weights, extras=extras, settings=settings)
             for p in outputs.values()]
    src, steps = _open_sources(calls[0], base, models, extras, settings)
    depths = layer_depths(s.name for s in steps)
    buf = _chunk_buffer(settings.chunk_bytes)

    def write(s: Step, outs: Sequence[CheckpointWriter], reader: TensorReader) -> None:
        if s.op == "mix":
            _mix_step(src, s, depths[s.name], calls, outs, reader, settings.chunk_bytes)
        else:
            _copy_step(src.ckpts[s.source], s, outs, reader, buf)

    return _run(src.ckpts, steps, list(outputs), settings, _metadata_for(metadata, len(outputs)), write)


def merge_files(method: str | MergeMethod, base: str | Path | None, models: Sequence[str | Path], out: str | Path,
                params: MergeParams | Mapping | None = None, *, weights: Sequence[float] | None = None,
                extras: Mapping[str, Sequence[str | Path]] | None = None,
                settings: MergeConfig | None = None) -> Path:
    """One merge of safetensors checkpoints by any registered method, out of core (see
    ``write_merges``; the files' counterpart of ``merge_states``).

    Example:
        >>> merge_files("dare", "zs.safetensors", ["ft_a.safetensors"], "out/", {"drop_rate": 0.9})
    """
    return write_merges(method, base, models, {out: params}, weights=weights, extras=extras, settings=settings)[0]

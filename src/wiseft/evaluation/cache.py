"""The input cache: each evaluation set decoded and preprocessed once.

An eval transform is split where it turns PIL images into tensors (``split_transform``):
the PIL part runs once per input, into uint8 tensors held in memory or in a
memory-mapped scratch file when they do not fit (``build_input_cache``), and the float
conversion runs per batch on the device. Inputs that do not stack (text) are held as
collated batches. Unreadable inputs are skipped, counted and reported per set; the set
stops with a named error only when more than ``max_unreadable`` of it (default 1%)
cannot be read. Under torchrun each process decodes and reads its ``Shard`` of chunks.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wiseft.backbones import Backbone
from wiseft.core import progress_bar
from wiseft.data import LabeledDataset, check_unreadable
from wiseft.evaluation.fingerprints import data_fingerprint
from wiseft.evaluation.settings import CacheMode
from wiseft.io import release_scratch, scratch_file
from wiseft.runtime import (
    all_gather_objects,
    all_gather_rows,
    available_memory,
    check_same,
    current,
    numerics,
    processes_here,
    to_device,
)

log = logging.getLogger("wiseft")


# ---------------------------------------------------------------------------------------
# preprocessing split: PIL work once (to uint8), float conversion per batch on the device


class _ToUint8:
    """The PIL part of an eval transform, ending in a uint8 CHW tensor."""

    def __init__(self, pil_steps: Callable[[Any], Any]):
        self.pil_steps = pil_steps

    def __call__(self, x):
        img = self.pil_steps(x)
        if getattr(img, "mode", None) not in ("RGB", "L"):
            raise ValueError(f"image mode {getattr(img, 'mode', type(img).__name__)!r} cannot be cached as uint8")
        arr = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
        return (arr.unsqueeze(-1) if arr.ndim == 2 else arr).permute(2, 0, 1).contiguous()


class _Finish:
    """uint8 batch -> model input: exactly what ToTensor and the steps after it do."""

    def __init__(self, tensor_steps: Callable[[torch.Tensor], torch.Tensor]):
        self.tensor_steps = tensor_steps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.tensor_steps(x.to(torch.get_default_dtype()).div(255))


def split_transform(transform) -> tuple[Callable, Callable | None]:
    """(per-input part, per-batch part) of an eval transform. A torchvision Compose
    with a ToTensor step splits there, so the cache holds uint8 pixels; anything else
    is cached as it comes out (per-batch part None). torchvision is not imported here:
    a transform can only be its Compose if torchvision is loaded already, and text
    models (the demo's install) do not have it."""
    tv = sys.modules.get("torchvision.transforms")
    steps = getattr(transform, "transforms", None)
    if tv is not None and isinstance(transform, tv.Compose) and steps:
        for i, s in enumerate(steps):
            if type(s).__name__ in ("ToTensor", "MaybeToTensor"):
                return _ToUint8(tv.Compose(steps[:i])), _Finish(tv.Compose(steps[i + 1:]))
    return transform, None


class _Decode(Dataset):
    """(index, input or None, label, error) per sample; never raises on bad data."""

    def __init__(self, dataset: LabeledDataset, pre: Callable):
        self.dataset, self.pre = dataset, pre

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        ref, label = self.dataset.samples[i]
        try:
            x = self.dataset.load(ref) if self.dataset.load is not None else ref
            return i, self.pre(x), label, None
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input, not a crash
            return i, None, label, f"{ref}: {type(e).__name__}: {e}"


def _as_list(batch):
    return batch


# ---------------------------------------------------------------------------------------
# sharding under torchrun: each process reads every world-th chunk of a set


@dataclass(frozen=True)
class Shard:
    """The chunks of a set this process reads. A set of n inputs is cut into chunks of
    ``size`` consecutive inputs (the last one shorter); chunk k belongs to process
    ``k % world``. The chunks are the batches of a one-process run, so under torchrun
    every batch holds the inputs it holds in one process, and the outputs gathered in
    chunk order are the one-process outputs."""

    size: int
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, size: int) -> Shard:
        """This process's shard in the process group it is in (one process: every chunk)."""
        info = current()
        return cls(size, info.rank, info.world)

    def count(self, n: int) -> int:
        """The number of chunks of a set of ``n`` inputs."""
        return -(-n // self.size)

    def chunks(self, n: int) -> list[list[int]]:
        """The input indices of each chunk this process reads, in order."""
        return [list(range(k * self.size, min(n, (k + 1) * self.size))) for k in range(self.rank, self.count(n),
                                                                                        self.world)]

    def gather(self, local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Every process's rows in chunk order, from this process's rows of its own chunks
        (``local``, concatenated in order). ``sizes``: the rows of each chunk, for the first
        ``len(sizes)`` chunks (the chunks read). One process: ``local`` itself."""
        if self.world == 1:
            return local
        pieces: dict[int, torch.Tensor] = {}
        for r, part in enumerate(all_gather_rows(local)):
            own = range(r, len(sizes), self.world)
            pieces.update(zip(own, part.split([int(sizes[k]) for k in own])))
        return torch.cat([pieces[k] for k in range(len(sizes))]) if sizes else local


# ---------------------------------------------------------------------------------------
# the input cache


@dataclass
class InputCache:
    """Preprocessed inputs of one set: a stacked tensor (in memory or on a memory-mapped
    file) or, for inputs that do not stack (text), a list of collated batches (one per
    chunk of ``shard.size`` inputs with any input kept). Under torchrun a process holds
    the inputs of its shard's chunks only, and ``labels``, ``index`` and ``skipped`` of the
    whole set."""

    labels: torch.Tensor
    index: torch.Tensor  # position in dataset.samples of each kept input
    skipped: list[str]
    data: torch.Tensor | None = None
    batches_: list | None = None
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None
    path: Path | None = None
    shard: Shard | None = None  # None: every input, read in batches of any size

    def chunk_sizes(self, size: int) -> torch.Tensor:
        """The kept inputs of each chunk of ``size`` inputs of the set."""
        n = int(self.index[-1]) + 1 if len(self.index) else 0
        return torch.bincount(self.index // size, minlength=-(-n // size)) if n else torch.zeros(0, dtype=torch.long)

    def pieces(self, batch_size: int, device: torch.device | None = None) -> Iterator[tuple[int, int, int, Any]]:
        """(chunk, its first row in the set's kept inputs, its rows, model inputs) for each chunk this
        process holds, moved to ``device`` before finishing. A chunk is ``batch_size``
        consecutive inputs of the set less the skipped ones (one process), or the chunk it was
        decoded in whatever ``batch_size`` says (a sharded cache, and collated text batches)."""
        decoded = self.shard is not None and (self.shard.world > 1 or self.batches_ is not None)
        shard = self.shard if decoded else Shard(batch_size)
        sizes = self.chunk_sizes(shard.size)
        starts = torch.cumsum(sizes, 0) - sizes
        own = [k for k in range(shard.rank, len(sizes), shard.world) if sizes[k]]
        if self.batches_ is not None:  # collated at decode time, one per chunk held
            for k, (x, _) in zip(own, self.batches_):
                yield k, int(starts[k]), int(sizes[k]), (to_device(x, device) if device is not None else x)
            return
        lo = 0
        for k in own:
            x = self.data[lo:lo + int(sizes[k])]
            lo += int(sizes[k])
            if device is not None:
                x = x.to(device, non_blocking=True)
            yield k, int(starts[k]), int(sizes[k]), (self.finish(x) if self.finish is not None else x)

    def batches(self, batch_size: int, device: torch.device | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
        """(model inputs, labels) batches of the chunks this process holds (:meth:`pieces`)."""
        for _, start, rows, x in self.pieces(batch_size, device):
            yield x, self.labels[start:start + rows]

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()

    @torch.no_grad()
    def outputs(self, fn: Callable, batch_size: int, device: torch.device, precision: str,
                limit: int | None = None) -> torch.Tensor:
        """``fn``'s outputs (in fp32, on the CPU) for the set's kept inputs in order, or the first
        ``limit`` of them. Under torchrun each process runs its chunks and the rows are gathered."""
        out = []
        with numerics(precision, device):
            for _, start, _, x in self.pieces(batch_size, device):
                if limit is not None and start >= limit:
                    break
                out.append(fn(x).float().cpu())
        local = torch.cat(out) if out else torch.empty(0)
        if self.shard is None or self.shard.world == 1:
            return local[:limit]
        sizes = self.chunk_sizes(self.shard.size)
        starts = torch.cumsum(sizes, 0) - sizes
        count = len(sizes) if limit is None else int((starts < limit).sum())  # the chunks every process read
        return self.shard.gather(local, sizes[:count].tolist())[:limit]


def build_input_cache(dataset: LabeledDataset, backbone: Backbone, *, batch_size: int = 256,
                      num_workers: int | None = None, mode: CacheMode = "auto", cache_dir: str | Path | None = None,
                      max_memory: int | None = None, progress: bool = True) -> InputCache:
    """Decode and preprocess every input of ``dataset`` once. ``mode='auto'`` keeps the
    cache in memory when it takes under ``max_memory`` (default: half the available
    memory) and otherwise writes a memory-mapped uint8 file under ``cache_dir``. Under
    torchrun each process decodes its ``Shard`` of chunks of ``batch_size`` inputs, and
    the processes share which inputs were kept or skipped."""
    pre, finish = split_transform(backbone.transform_eval)
    shard = Shard.current(batch_size)
    if shard.world > 1:  # the chunks of a set must be the same inputs in every process
        check_same(f"evaluation set {dataset.name!r} (its inputs and labels)", data_fingerprint(dataset))
    chunks = shard.chunks(len(dataset))
    loader = DataLoader(_Decode(dataset, pre), batch_sampler=chunks, collate_fn=_as_list,
                        num_workers=loader_workers(num_workers, len(dataset)))
    held = sum(len(c) for c in chunks)
    kept: list[tuple[int, int]] = []  # (index, label) of each input held
    skipped: list[tuple[int, str]] = []  # (chunk, why) of each input skipped
    batches: list = []
    bar = progress_bar(total=held, desc=f"decode {dataset.name}", disable=not progress, leave=False, unit="input")
    data, path = _decode_into(loader, backbone, dataset, batch_size, held, (mode, cache_dir, max_memory),
                              (kept, skipped, batches), bar)
    bar.close()
    if data is not None:
        data = data[:len(kept)]
    kept, why = _shared(kept, skipped, shard)
    try:
        _check_skipped(dataset, why)
    except ValueError:
        release_scratch(path)
        raise
    cache = InputCache(torch.as_tensor([y for _, y in kept], dtype=torch.long),
                       torch.as_tensor([i for i, _ in kept], dtype=torch.long), why, data=data,
                       batches_=batches or None, finish=finish, path=path, shard=shard)
    if path is not None:
        weakref.finalize(cache, release_scratch, path)
    return cache


def _decode_into(loader, backbone: Backbone, dataset: LabeledDataset, batch_size: int, held: int,
                 alloc: tuple, out: tuple[list, list, list], bar) -> tuple[torch.Tensor | None, Path | None]:
    """Decode every chunk of ``loader``: stackable inputs into one tensor (in memory or a
    memory-mapped scratch file, allocated on the first), the others as collated batches;
    fills ``out`` = (kept, skipped, batches). The scratch file goes if decoding stops
    (Ctrl-C, an error)."""
    kept, skipped, batches = out
    data, path = None, None
    try:
        for chunk in loader:
            good = [(i, x, y) for i, x, y, err in chunk if err is None]
            skipped += [(i // batch_size, err) for i, x, _, err in chunk if err is not None]
            bar.update(len(chunk))
            if not good:
                continue
            if not isinstance(good[0][1], torch.Tensor) or batches:  # inputs that do not stack: keep batches
                batches.append(backbone.collate([(x, y) for _, x, y in good]))
                kept += [(i, y) for i, _, y in good]
                continue
            if data is None:
                data, path = _allocate(good[0][1], held, *alloc, dataset.name)
            for i, x, y in good:
                if x.shape != data.shape[1:]:
                    skipped.append((i // batch_size, f"{dataset.samples[i][0]}: preprocessed shape "
                                    f"{tuple(x.shape)} differs from {tuple(data.shape[1:])}"))
                    continue
                data[len(kept)] = x
                kept.append((i, y))
    except BaseException:
        data = None  # the mapping, before its file
        release_scratch(path)
        raise
    return data, path


def _shared(kept: list[tuple[int, int]], skipped: list[tuple[int, str]],
            shard: Shard) -> tuple[list[tuple[int, int]], list[str]]:
    """The whole set's kept (index, label) pairs in order and its skipped inputs in chunk
    order, from every process's (one process: its own)."""
    if shard.world > 1:
        parts = all_gather_objects((kept, skipped))
        kept = sorted(pair for part, _ in parts for pair in part)
        skipped = sorted((s for _, part in parts for s in part), key=lambda s: s[0])  # stable: order within a chunk
    return kept, [why for _, why in skipped]


def _check_skipped(dataset: LabeledDataset, skipped: list[str]) -> None:
    """Skipped inputs are counted (records: provenance.skipped_inputs), unless too many to score the set."""
    if not skipped:
        return
    n = len(dataset)
    if current().main:
        log.warning("%s: %d of %d inputs unreadable, skipped (first: %s)", dataset.name, len(skipped), n, skipped[0])
    check_unreadable(len(skipped), n, getattr(dataset, "max_unreadable", None), f"evaluation set {dataset.name!r}",
                     skipped[0])


def loader_workers(num_workers: int | None, n: int) -> int:
    """Loader processes: as asked, else none for a small set and up to 8 above 512 inputs,
    within this process's share of the machine's cores (torchrun: cores / local processes)."""
    if num_workers is not None:
        return num_workers
    return 0 if n < 512 else max(1, min(8, (os.cpu_count() or 1) // processes_here()))


def _allocate(example: torch.Tensor, n: int, mode: CacheMode, cache_dir, max_memory, name: str):
    nbytes = n * example.numel() * example.element_size()
    # half the available memory, shared by the processes of a torchrun launch on this machine
    budget = max_memory if max_memory is not None else available_memory() // 2 // processes_here()
    if mode == "memory" or (mode == "auto" and nbytes <= budget):
        return torch.empty((n, *example.shape), dtype=example.dtype), None
    # named for this process (a later run removes one a killed run left), removed when the cache
    # goes, at exit and on SIGTERM (files.scratch_file); default folder: $TMPDIR/wiseft-scratch
    file = scratch_file(f"inputs-{name or 'set'}.u8", cache_dir)
    log.info("input cache for %s: %.1f GiB memory-mapped at %s", name, nbytes / 2**30, file)
    dtype = torch.empty(0, dtype=example.dtype).numpy().dtype
    try:
        arr = np.memmap(file, dtype=dtype, mode="w+", shape=(n, *example.shape))
    except BaseException:
        release_scratch(file)
        raise
    return torch.from_numpy(arr), file

"""Evaluation engine for alpha sweeps.

Each evaluation set is decoded and preprocessed once, into an input cache (uint8
tensors in memory, or in a memory-mapped file when they do not fit), and every alpha
runs over that cache; with a linear head (frozen encoder) features are computed once
and every alpha is scored from them, which is exact because the mixed head's logits
are the mix of the two heads' logits. Unreadable inputs are skipped, counted and
reported per set; a sweep stops with a named error only when more than
``max_unreadable`` of a set (default 1%) cannot be read. How to evaluate (batch size,
precision, cache, loader workers, ...) travels as one ``EvalSettings``; a sweep's
``SweepSettings`` adds how to mix and name its records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wiseft.backbones import Backbone
from wiseft.config import MergeConfig
from wiseft.core import (
    MERGE,
    NOT_PRIMARY,
    OUTPUT_ENSEMBLE,
    PRIMARY,
    SEARCH,
    TEST,
    Record,
    Score,
    alpha_rank,
    expected_calibration_error,
    fit_temperature,
    output_ensemble_name,
    progress_bar,
    select_metric,
)
from wiseft.data import LabeledDataset, Projection, check_unreadable
from wiseft.evaluation.ensemble import class_restricted_scores, output_ensemble_scores
from wiseft.heads import Classifier, PromptClassifier, rederive_head
from wiseft.io import release_scratch, scratch_file
from wiseft.merge import Interpolator, MultiAlpha, MultiAlphaSettings, interpolate, interpolator_for, split_alphas
from wiseft.runtime import (
    all_gather_objects,
    all_gather_rows,
    check_same,
    choose_precision,
    current,
    deterministic_numerics,
    device_of,
    processes_here,
    to_device,
)

if TYPE_CHECKING:
    from wiseft.config import EvalConfig, MergeRun

log = logging.getLogger("wiseft")

CacheMode = Literal["auto", "memory", "disk"]


# ---------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate, as one object from the config to every helper (``EvalConfig``, the
    config's ``evaluation`` section, holds the same fields).

    ``cache``: True/'auto', 'memory', 'disk' (decode each input once), or False (the naive
    loop: decode again on every pass). ``cache_dir``: where a memory-mapped cache goes
    (default: the temp dir); ``max_memory``: the in-memory budget of 'auto' (default: half
    the available memory). ``num_workers``: loader processes (default 0 for small sets, up
    to 8 above 512 inputs). ``fp32_check``: in bf16, inputs per set also run in fp32 to
    report the difference. ``alphas_per_pass``: how many alphas of a sweep share one read
    of each batch (``multi_alpha``): 1, one at a time; N, up to N; 'auto', as many as
    half the free memory of a CUDA device holds (1 on CPU).

    Example:
        >>> settings = EvalSettings.from_config(cfg.evaluation, progress=False)
        >>> records = evaluate_records(model, sets, backbone, model_name="export", settings=settings)
    """

    batch_size: int = 256
    precision: str = "auto"
    cache: bool | CacheMode = True
    cache_dir: str | Path | None = None
    num_workers: int | None = None
    fp32_check: int = 512
    max_memory: int | None = None
    progress: bool = True
    alphas_per_pass: int | Literal["auto"] = 1

    @classmethod
    def from_config(cls, cfg: EvalConfig, *, progress: bool = True) -> EvalSettings:
        """The settings a config's ``evaluation`` section describes."""
        return cls(**cfg.model_dump(), progress=progress)

    @property
    def cache_mode(self) -> CacheMode:
        """The input cache's mode where one is built (``cache`` True or False: 'auto')."""
        return "auto" if self.cache in (True, False) else self.cache


@dataclass(frozen=True)
class SweepSettings(EvalSettings):
    """A sweep's settings: how to evaluate, plus how to mix and name its records.
    ``linear``: score every alpha from features computed once, when the two encoders are
    equal; ``allow_extrapolation``: alphas outside [0, 1]; ``provenance``: added to every
    record.

    Example:
        >>> sweep(model, theta_0, theta_1, sets, alphas, backbone,
        ...       settings=SweepSettings(model_name="lp", linear=True, precision="bf16"))
    """

    model_name: str = "finetuned"
    linear: bool = False
    allow_extrapolation: bool = False
    provenance: Mapping[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: EvalConfig, *, progress: bool = True, model_name: str = "finetuned",
                    linear: bool = False, allow_extrapolation: bool = False,
                    provenance: Mapping[str, Any] | None = None) -> SweepSettings:
        """The settings of one sweep of a run: the config's ``evaluation`` section and these."""
        return cls(**cfg.model_dump(), progress=progress, model_name=model_name, linear=linear,
                   allow_extrapolation=allow_extrapolation, provenance=provenance)

    @classmethod
    def of(cls, settings: EvalSettings | None) -> SweepSettings:
        """``settings`` as sweep settings (the sweep's own fields at their defaults)."""
        if isinstance(settings, SweepSettings):
            return settings
        return cls(**{f.name: getattr(settings, f.name) for f in fields(settings)}) if settings else cls()


_Settings = TypeVar("_Settings", bound=EvalSettings)


def _resolved(settings: _Settings, device: torch.device) -> _Settings:
    """``settings`` with the precision this device runs (``auto`` resolved: ``resolve_precision``)."""
    return replace(settings, precision=resolve_precision(settings.precision, device))


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


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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
        check_same(f"evaluation set {dataset.name!r} (its inputs and labels)", _data_fingerprint(dataset))
    chunks = shard.chunks(len(dataset))
    loader = DataLoader(_Decode(dataset, pre), batch_sampler=chunks, collate_fn=_as_list,
                        num_workers=_workers(num_workers, len(dataset)))
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


def _data_fingerprint(dataset: LabeledDataset) -> str:
    """A digest of a set's samples: paths, texts or archive members, and labels (inputs held
    as objects count by position only)."""
    import hashlib

    plain = (str, int, Path, tuple)
    rows = "\n".join(f"{r if isinstance(r, plain) else ''}\t{y}" for r, y in dataset.samples)
    return hashlib.sha256(rows.encode()).hexdigest()


def _weights_fingerprint(*states: Mapping[str, torch.Tensor]) -> list[float]:
    """The float64 sum of each floating tensor of ``states``: equal weights give equal lists."""
    return [float(v.detach().double().sum()) for state in states for v in state.values() if v.is_floating_point()]


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


def _workers(num_workers: int | None, n: int) -> int:
    """Loader processes: as asked, else none for a small set and up to 8 above 512 inputs,
    within this process's share of the machine's cores (torchrun: cores / local processes)."""
    if num_workers is not None:
        return num_workers
    return 0 if n < 512 else max(1, min(8, (os.cpu_count() or 1) // processes_here()))


def _allocate(example: torch.Tensor, n: int, mode: CacheMode, cache_dir, max_memory, name: str):
    nbytes = n * example.numel() * example.element_size()
    # half the available memory, shared by the processes of a torchrun launch on this machine
    budget = max_memory if max_memory is not None else _available_memory() // 2 // processes_here()
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


# ---------------------------------------------------------------------------------------
# evaluation sets


@dataclass
class EvalSet:
    """A dataset scored under a role (reference, shift, validation), with the
    projection from reference logits onto its classes when they differ (default: the
    dataset's own, e.g. ImageNet-R's 200 classes of ImageNet)."""

    name: str
    role: str
    dataset: LabeledDataset
    projection: Projection | None = None
    _cache: InputCache | None = field(default=None, repr=False)

    @property
    def skipped(self) -> list[str]:
        """Inputs skipped as unreadable (file and reason), once decoded."""
        return [] if self._cache is None else self._cache.skipped

    def inputs(self, backbone: Backbone, batch_size: int = 256, *, num_workers: int | None = None,
               mode: CacheMode = "auto", cache_dir: str | Path | None = None, max_memory: int | None = None,
               progress: bool = False) -> InputCache:
        """The set's input cache, built on first use."""
        if self._cache is None:
            self._cache = build_input_cache(self.dataset, backbone, batch_size=batch_size,
                                            num_workers=num_workers, mode=mode, cache_dir=cache_dir,
                                            max_memory=max_memory, progress=progress)
            if self._cache.skipped and current().main:
                log.warning("%s: skipped %d unreadable inputs, e.g. %s", self.name, len(self._cache.skipped),
                            self._cache.skipped[0])
        return self._cache

    def batches(self, backbone: Backbone, batch_size: int, cache: bool = True, *,
                num_workers: int | None = None) -> Iterable:
        """Collated (inputs, labels) batches with eval preprocessing (decoded once when
        ``cache`` is set; otherwise re-read on every pass), loaded by ``num_workers``
        processes either way."""
        if not cache:  # under torchrun, this process's chunks (Shard)
            return DataLoader(self.dataset.with_transform(backbone.transform_eval),
                              batch_sampler=Shard.current(batch_size).chunks(len(self.dataset)),
                              collate_fn=backbone.collate, num_workers=_workers(num_workers, len(self.dataset)))
        return list(self.inputs(backbone, batch_size, num_workers=num_workers).batches(batch_size))

    def project(self, logits: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return logits if self.projection.is_identity and logits.shape[1] == len(self.projection.groups) \
                else self.projection(logits)
        return self.dataset.project_logits(logits)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, Score]:
        """Every metric the dataset declares (its primary metric first) for reference-space logits."""
        if index is None:
            index = torch.arange(len(labels))
        return self.dataset.metrics(self.project(logits), self.dataset.project_labels(labels), index)


def _inputs(es: EvalSet, backbone: Backbone, settings: EvalSettings) -> InputCache:
    """``es``'s input cache, built as ``settings`` say on first use."""
    return es.inputs(backbone, settings.batch_size, num_workers=settings.num_workers, mode=settings.cache_mode,
                     cache_dir=settings.cache_dir, max_memory=settings.max_memory, progress=settings.progress)


# ---------------------------------------------------------------------------------------
# numerics


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision evaluation runs in on ``device`` (``runtime.choose_precision``; evaluation
    runs fp32 or bf16)."""
    return choose_precision(precision, device, allowed=("fp32", "bf16")).precision


def numerics(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast, or deterministic fp32 (no TF32, deterministic kernels where torch has
    them, a warning where it has not; the flags restored afterwards)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return deterministic_numerics()


@torch.no_grad()
def predict_logits(model: Classifier, batches: Iterable, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) in fp32 and labels (N,) for every batch."""
    model.eval()
    device = device_of(model)
    precision = resolve_precision(precision, device)
    out, labels = [], []
    with numerics(precision, device):
        for inputs, y in batches:
            out.append(model(to_device(inputs, device)).float().cpu())
            labels.append(y)
    if not out:  # a process of a torchrun launch with no chunk of this set
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(out), torch.cat(labels)


@torch.no_grad()
def _cached_outputs(fn: Callable, cache: InputCache, batch_size: int, device: torch.device, precision: str,
                    limit: int | None = None) -> torch.Tensor:
    """``fn``'s outputs (in fp32, on the CPU) for the set's kept inputs in order, or the first
    ``limit`` of them. Under torchrun each process runs its chunks and the rows are gathered."""
    out = []
    with numerics(precision, device):
        for _, start, _, x in cache.pieces(batch_size, device):
            if limit is not None and start >= limit:
                break
            out.append(fn(x).float().cpu())
    local = torch.cat(out) if out else torch.empty(0)
    if cache.shard is None or cache.shard.world == 1:
        return local[:limit]
    sizes = cache.chunk_sizes(cache.shard.size)
    starts = torch.cumsum(sizes, 0) - sizes
    count = len(sizes) if limit is None else int((starts < limit).sum())  # the chunks every process read
    return cache.shard.gather(local, sizes[:count].tolist())[:limit]


# ---------------------------------------------------------------------------------------
# evaluation and sweeps


def evaluate(model: Classifier, evalsets: Sequence[EvalSet], backbone: Backbone, *, batch_size: int = 256,
             precision: str = "fp32", cache: bool | CacheMode = True, num_workers: int | None = None,
             progress: bool = False) -> dict[str, tuple[int, int]]:
    """(correct, total) top-1 counts per evaluation set for one model (``evaluate_records``
    gives every metric, its options as one ``EvalSettings``)."""
    settings = _resolved(EvalSettings(batch_size=batch_size, precision=precision, cache=cache,
                                      num_workers=num_workers, progress=progress), device_of(model))
    counts = {}
    for es in evalsets:
        top1 = _evaluate_set(model, es, backbone, settings)[0]["top1"]
        counts[es.name] = (top1.correct, top1.total)
    return counts


def evaluate_records(model: Classifier, evalsets: Sequence[EvalSet], backbone: Backbone, *, model_name: str,
                     alpha: float | None = None, provenance: dict[str, Any] | None = None,
                     settings: EvalSettings | None = None) -> list[Record]:
    """Records of every metric each set declares, for one model (e.g. an exported one);
    ``settings`` default to ``EvalSettings(progress=False)``."""
    settings = _resolved(settings or EvalSettings(progress=False), device_of(model))
    if current().enabled:
        check_same(f"the weights of {model_name}", _weights_fingerprint(model.state_dict()))
    scores = {es.name: _evaluate_set(model, es, backbone, settings)[0] for es in evalsets}
    return _records({alpha: scores}, evalsets, [alpha], model_name, dict(provenance or {}), {})


def _evaluate_set(model: Classifier, es: EvalSet, backbone: Backbone,
                  settings: EvalSettings) -> tuple[dict[str, Score], torch.Tensor, torch.Tensor]:
    """(scores, logits, labels) of one set, in ``settings.precision`` as resolved for the model's device."""
    model.eval()
    if settings.cache is False:  # the naive path: decode again, as the reference implementation does
        batches = es.batches(backbone, settings.batch_size, cache=False, num_workers=settings.num_workers)
        logits, labels = predict_logits(model, batches, settings.precision)
        shard = Shard.current(settings.batch_size)
        if shard.world > 1:  # every process's chunks, in order
            n, size = len(es.dataset), settings.batch_size
            sizes = [min(size, n - start) for start in range(0, n, size)]
            logits, labels = shard.gather(logits, sizes), shard.gather(labels, sizes)
        return es.scores(logits, labels), logits, labels
    c = _inputs(es, backbone, settings)
    logits = _cached_outputs(model, c, settings.batch_size, device_of(model), settings.precision)
    return es.scores(logits, c.labels, c.index), logits, c.labels


def _validation_first(evalsets: Sequence[EvalSet]) -> list[EvalSet]:
    """The sets in the order calibration needs: the held-out split that fits each alpha's
    temperature before the sets scored with it."""
    return sorted(evalsets, key=lambda es: es.role != "validation")


def _score_more(es: EvalSet, scores: dict[str, Score], logits: torch.Tensor, labels: torch.Tensor,
                temperatures: dict[float, float], alpha: float, evalsets: Sequence[EvalSet]) -> None:
    """What a sweep adds to a set's own metrics: calibration, and on the reference set its
    accuracy restricted to each subset shift's classes (the x axis of that shift's
    effective robustness, as the robustness testbed scores it)."""
    _calibrate(es, scores, logits, labels, temperatures, alpha)
    if es.role == "reference":
        scores.update(class_restricted_scores(logits, labels, evalsets))


def _calibrate(es: EvalSet, scores: dict[str, Score], logits: torch.Tensor, labels: torch.Tensor,
               temperatures: dict[float, float], alpha: float) -> None:
    """Temperature scaling per alpha: the first validation set fits alpha's temperature
    (recorded as metric ``temperature``); every set gets its ``ece`` under that temperature
    (1, uncalibrated, when the run holds out no validation data)."""
    logits, labels = es.project(logits), es.dataset.project_labels(labels)
    if es.role == "validation" and alpha not in temperatures:
        temperatures[alpha] = fit_temperature(logits, labels)
        scores["temperature"] = Score(temperatures[alpha])
    scores["ece"] = expected_calibration_error(logits, labels, temperatures.get(alpha, 1.0))


def sweep(model: Classifier, theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor],
          evalsets: Sequence[EvalSet], alphas: Sequence[float], backbone: Backbone, *,
          settings: EvalSettings | None = None, zeroshot: dict | None = None) -> list[Record]:
    """Records of every metric for every (alpha, evaluation set). ``model`` is used as the
    workspace: its weights are overwritten with each theta_alpha in turn. ``settings``
    (``SweepSettings``, or ``EvalSettings`` with the sweep's own fields at their defaults)
    say how: inputs are decoded once per set unless ``cache`` is False (the naive
    re-decoding loop); with ``precision='bf16'`` the first alpha is also run in fp32 on up
    to ``fp32_check`` inputs per set and the top-1 difference is logged and stored in the
    records' provenance (``bf16_check``). ``zeroshot`` is a dict shared by sweeps against
    the same theta_0 and sets (e.g. several fine-tunes of one model): alpha = 0, theta_0
    itself, is scored by the first of them and reused by the rest.

    Example:
        >>> records = sweep(model, zs_state, ft_state, [test, sketch], [0, 0.5, 1], backbone)
        >>> records = sweep(model, zs_state, ft_state, [test], [0, 0.5, 1], backbone,
        ...                 settings=SweepSettings(batch_size=64, precision="bf16", linear=True))
    """
    s = _resolved(SweepSettings.of(settings), device_of(model))
    if current().enabled:  # every process must mix the same two models, or the gathered rows mix models
        check_same(f"the weights swept ({s.model_name})", _weights_fingerprint(theta_0, theta_1))
    linear = s.linear and _same_encoder(theta_0, theta_1)
    # the same model, inputs and numerics give the same alpha-0 scores: keyed by what shapes them
    key = (linear, s.precision, s.batch_size, s.alphas_per_pass, tuple(es.name for es in evalsets))
    known = zeroshot.get(key) if zeroshot is not None and 0.0 in alphas else None
    todo = [a for a in alphas if known is None or a != 0.0]
    if known is not None:
        s = replace(s, fp32_check=0)  # the zero-shot sweep's check stands for this one
    ends: dict[float, dict[str, tuple]] = {}  # alpha 0 and 1 logits, for the output-space ensemble
    how: dict[str, Any] = {}  # what several alphas per pass adds to the provenance (_sweep_full)
    if linear:  # there the output-space ensemble is WiSE-FT itself
        scores, checks = _sweep_linear(model, theta_0, theta_1, evalsets, todo, backbone, s)
    else:
        scores, checks, how = _sweep_full(model, theta_0, theta_1, evalsets, todo, backbone, s, ends)
    if known is not None:
        scores[0.0], checks, zeroshot_ends = known
        if zeroshot_ends:
            ends[0.0] = zeroshot_ends
    elif zeroshot is not None and 0.0 in alphas:
        zeroshot[key] = (scores[0.0], checks, ends.get(0.0))
    provenance = {**(s.provenance or {}), **how}
    records = _records(scores, evalsets, alphas, s.model_name, provenance, checks)
    if 0.0 in ends and 1.0 in ends:
        records += _ensemble_records(ends, evalsets, alphas, s.model_name, provenance)
    return records


def _ensemble_records(ends: dict[float, dict[str, tuple]], evalsets, alphas, model_name: str,
                      provenance: dict) -> list[Record]:
    """Records of the output-space ensemble (1 - alpha) f_0(x) + alpha f_1(x) over the same
    alphas, from the two end points' logits (the paper's weight- vs output-space comparison)."""
    names = [es.name for es in evalsets]
    logits_0, logits_1 = ({n: ends[a][n][0] for n in names} for a in (0.0, 1.0))
    labels = {n: ends[1.0][n][1] for n in names}
    index = {n: ends[1.0][n][2] for n in names} if all(ends[1.0][n][2] is not None for n in names) else None
    scores = output_ensemble_scores(evalsets, logits_0, logits_1, labels, alphas, index)
    return _records(scores, evalsets, alphas, output_ensemble_name(model_name),
                    {**provenance, "method": OUTPUT_ENSEMBLE}, {})


def _sweep_full(model: Classifier, theta_0, theta_1, evalsets: Sequence[EvalSet], alphas: Sequence[float],
                backbone: Backbone, s: SweepSettings, ends: dict[float, dict[str, tuple]]):
    """Every alpha's weights loaded in turn and every set scored with them; the end points'
    logits go into ``ends``. With ``alphas_per_pass`` over 1, a group of alphas is scored
    from one read of each batch (``_group_outputs``), each alpha scored as it would be alone;
    the third value is what the records' provenance adds: ``alphas_per_pass``, the group
    size, where vmap batched the forward (its logits agree to float rounding, not bit for
    bit; the loop fallback gives the same bits and adds nothing)."""
    interp = interpolator_for(theta_0, theta_1, allow_extrapolation=s.allow_extrapolation)  # LoRA: scales B A
    if s.cache is not False:  # decode everything before the first alpha, once
        for es in evalsets:
            _inputs(es, backbone, s)
    scores: dict[float, dict[str, dict[str, Score]]] = {}
    checks: dict[str, dict] = {}
    temperatures: dict[float, float] = {}
    how: dict[str, Any] = {}
    bar = progress_bar(total=len(alphas), desc=f"alpha sweep ({s.model_name})", disable=not s.progress, unit="alpha")
    for k, group in enumerate(_alpha_groups(model, interp, alphas, s)):
        interp.load_into(model, group[0])  # a group of several: for the bf16 check only
        rederive_head(model)  # FLYP: the head of the mixed text tower
        multi = _multi_alpha(model, theta_0, theta_1, group, s) if len(group) > 1 else None
        for alpha in group:
            scores[alpha] = {}
        for es in _validation_first(evalsets):
            outputs = _group_outputs(model, multi, es, backbone, s)
            for alpha, (scored, logits, labels) in zip(group, outputs):
                scores[alpha][es.name] = scored
                _score_more(es, scored, logits, labels, temperatures, alpha, evalsets)
                if float(alpha) in (0.0, 1.0):
                    index = None if s.cache is False else es._cache.index
                    ends.setdefault(float(alpha), {})[es.name] = (logits, labels, index)
            if k == 0 and s.precision == "bf16" and s.fp32_check and s.cache is not False:
                c, logits = es._cache, outputs[0][1]  # the first alpha, loaded into the model
                ref = _cached_outputs(model, c, s.batch_size, device_of(model), "fp32", limit=s.fp32_check)
                checks[es.name] = _compare(es, logits[:len(ref)], ref, c, group[0])
        if multi is not None and multi.vmapped:
            how["alphas_per_pass"] = max(how.get("alphas_per_pass", 0), len(group))
        bar.update(len(group))
    bar.close()
    return scores, checks, how


def _alpha_groups(model: Classifier, interp, alphas: Sequence[float], s: SweepSettings) -> list[list[float]]:
    """``alphas`` in order, in the groups that share a pass: ``s.alphas_per_pass`` at a time
    ('auto': as many as half a CUDA device's free memory holds stacked, one on CPU), or one
    at a time, with a log line saying why, where a model mixes otherwise than by stacking
    weights (a FLYP head re-derived per alpha, a LoRA adapter scaled) or inputs are not cached."""
    want = s.alphas_per_pass
    if want != "auto" and (isinstance(want, bool) or not isinstance(want, int) or want < 1):
        raise ValueError(f"alphas_per_pass must be a positive integer or 'auto', got {want!r}")
    size = 1 if want == 1 or len(alphas) < 2 else _group_size(model, interp, alphas, s)
    return [list(alphas[i:i + size]) for i in range(0, len(alphas), size)]


def _group_size(model: Classifier, interp, alphas: Sequence[float], s: SweepSettings) -> int:
    """How many alphas share a pass (``_alpha_groups``), for ``alphas_per_pass`` over 1 or 'auto'."""
    why = ("a PromptClassifier (FLYP) re-derives its head from each alpha's text tower"
           if isinstance(model, PromptClassifier) else
           "a LoRA fine-tune is mixed by scaling its adapter" if not isinstance(interp, Interpolator) else
           "inputs are not cached (cache: false)" if s.cache is False else None)
    if why is not None:  # a warning where a number was asked for, a note where 'auto' was
        log.log(logging.INFO if s.alphas_per_pass == "auto" else logging.WARNING,
                "alphas_per_pass=%s: one alpha at a time, as %s", s.alphas_per_pass, why)
        return 1
    if s.alphas_per_pass != "auto":
        return int(s.alphas_per_pass)
    device = device_of(model)
    if device.type != "cuda":
        return 1
    free = torch.cuda.mem_get_info(device)[0]
    fits = replace(_multi_settings(s), max_memory=free // 2)  # the stacked weights within half the free memory
    size = len(split_alphas(alphas, interp.theta_0, interp.theta_1, fits)[0])
    log.info("alphas_per_pass=auto: %d alphas per pass (%.1f GiB free on %s)", size, free / 2**30, device)
    return size


def _multi_settings(s: SweepSettings) -> MultiAlphaSettings:
    """How a sweep's alphas share a pass: vmap (a loop where the forward cannot), mixed as the sweep mixes."""
    return MultiAlphaSettings(merge=MergeConfig(allow_extrapolation=s.allow_extrapolation))


def _multi_alpha(model: Classifier, theta_0, theta_1, group: Sequence[float], s: SweepSettings) -> MultiAlpha:
    """The stacked weights of ``group`` for ``model`` (``multi_alpha.MultiAlpha``, vmap with
    a loop fallback), in eval mode as ``_evaluate_set`` runs it."""
    return MultiAlpha(model.eval(), theta_0, theta_1, group, _multi_settings(s))


def _group_outputs(model: Classifier, multi: MultiAlpha | None, es: EvalSet, backbone: Backbone,
                   s: SweepSettings) -> list[tuple[dict[str, Score], torch.Tensor, torch.Tensor]]:
    """(scores, logits, labels) of ``es`` for each alpha of a group: the model as loaded
    (``multi`` None, ``_evaluate_set``), or every alpha of ``multi`` from one read of each
    batch, the logits (batch, alphas, classes) so the batch stays on dim 0."""
    if multi is None:
        return [_evaluate_set(model, es, backbone, s)]
    c = _inputs(es, backbone, s)
    out = _cached_outputs(lambda x: multi(x).transpose(0, 1).contiguous(), c, s.batch_size, device_of(model),
                          s.precision)
    per_alpha = [out[:, i].contiguous() if out.dim() == 3 else out for i in range(len(multi.alphas))]
    return [(es.scores(logits, c.labels, c.index), logits, c.labels) for logits in per_alpha]


def _compare(es: EvalSet, low: torch.Tensor, ref: torch.Tensor, c: InputCache, alpha: float) -> dict:
    labels, index = c.labels[:len(ref)], c.index[:len(ref)]
    top_low, top_ref = es.scores(low, labels, index)["top1"], es.scores(ref, labels, index)["top1"]
    check = {"alpha": float(alpha), "n": len(ref), "top1_bf16": top_low.value, "top1_fp32": top_ref.value,
             "top1_diff": top_low.value - top_ref.value,
             "agreement": float((es.project(low).argmax(1) == es.project(ref).argmax(1)).float().mean())}
    log.info("%s: bf16 vs fp32 on %d inputs: top-1 %+.4f, prediction agreement %.4f", es.name, len(ref),
             check["top1_diff"], check["agreement"])
    return check


def _records(scores, evalsets, alphas, model_name, provenance, checks) -> list[Record]:
    """One record per (alpha, set, metric). The first metric a set's dataset declares,
    calibration aside (``ece``, ``temperature``), is its primary one: that record's
    provenance says ``"primary": true`` (docs/results-format.md)."""
    records = []
    for a in alphas:
        for es in evalsets:
            prov = dict(provenance)
            if es.skipped:
                prov["skipped_inputs"] = len(es.skipped)
            if es.name in checks:
                prov["bf16_check"] = checks[es.name]
            primary = _primary(scores[a][es.name])
            for metric, s in scores[a][es.name].items():
                records.append(Record(model=model_name, alpha=None if a is None else float(a),
                                      dataset=es.name, role=es.role,
                                      metric=metric, value=s.value, correct=s.correct, total=s.total,
                                      provenance={**prov, "primary": True} if metric == primary else prov))
    return records


def _primary(scores: Mapping[str, Score]) -> str | None:
    """A set's primary metric: the first it declares, calibration and x axes aside."""
    return next((m for m in scores if m not in NOT_PRIMARY and not m.startswith("top1_on_")), None)


def _same_encoder(theta_0, theta_1) -> bool:
    return all(torch.equal(theta_0[k], theta_1[k]) for k in theta_0 if not k.startswith("head."))


def _sweep_linear(model: Classifier, theta_0, theta_1, evalsets: Sequence[EvalSet], alphas: Sequence[float],
                  backbone: Backbone, s: SweepSettings):
    """Features once per set, then every alpha from the mixed head."""
    head_0 = {k[5:]: v for k, v in theta_0.items() if k.startswith("head.")}
    head_1 = {k[5:]: v for k, v in theta_1.items() if k.startswith("head.")}
    heads = {a: interpolate(head_0, head_1, a, MergeConfig(allow_extrapolation=s.allow_extrapolation)) for a in alphas}
    scores: dict[float, dict[str, dict[str, Score]]] = {a: {} for a in alphas}
    checks: dict[str, dict] = {}
    temperatures: dict[float, float] = {}
    Interpolator(theta_0, theta_1).load_into(model, 0.0)  # the shared encoder
    model.eval()
    device = device_of(model)
    encode = lambda x: F.normalize(model.encoder(x).float(), dim=-1)  # noqa: E731
    for es in _validation_first(evalsets):
        c = _inputs(es, backbone, s)
        feats = _cached_outputs(encode, c, s.batch_size, device, s.precision)
        for a in alphas:
            head = heads[a]
            logits = feats @ head["weight"].float().cpu().T + head["bias"].float().cpu()
            scores[a][es.name] = es.scores(logits, c.labels, c.index)
            _score_more(es, scores[a][es.name], logits, c.labels, temperatures, a, evalsets)
        if s.precision == "bf16" and s.fp32_check:
            ref = _cached_outputs(encode, c, s.batch_size, device, "fp32", limit=s.fp32_check)
            h = heads[alphas[0]]
            mix = lambda f: f @ h["weight"].float().cpu().T + h["bias"].float().cpu()  # noqa: E731
            checks[es.name] = _compare(es, mix(feats[:len(ref)]), mix(ref), c, alphas[0])
    return scores, checks


# ---------------------------------------------------------------------------------------
# merge methods: a grid searched on the validation split, the chosen point on the test sets


def search_merge(model: Classifier, theta_0: dict[str, torch.Tensor], finetuned: Mapping[str, dict[str, torch.Tensor]],
                 evalsets: Sequence[EvalSet], backbone: Backbone, merge: MergeRun, *,
                 settings: EvalSettings | None = None) -> list[Record]:
    """Records of one ``merges:`` entry (``MergeRun``): each grid point's weights, merged by
    ``merging.merge_states`` from ``theta_0`` and the fine-tunes ``finetuned[name]`` it
    names, scored on the validation sets only (stage ``search``); the point with the best
    mean primary metric there (``choose_point``) scored on the reference and shift sets
    (stage ``test``), under the temperature its validation scores fitted. Shift sets are
    never read before the choice. Without a validation set the entry's one point is
    scored on the test sets. ``model`` is the workspace, its weights overwritten; records
    carry ``settings.provenance`` and ``provenance["merge"]`` (docs/results-format.md).

    Example:
        >>> merge = parse_config(raw).merge_runs()[0]
        >>> records = search_merge(model, zs_state, {"finetuned": ft_state}, sets, backbone, merge)
    """
    s = _resolved(SweepSettings.of(settings), device_of(model))
    if current().enabled:
        check_same(f"the weights merged ({merge.name})", _weights_fingerprint(theta_0, *finetuned.values()))
    validation = [es for es in evalsets if es.role == "validation"]
    points = merge.points() if validation else merge.points()[:1]
    temperatures: dict[int, float] = {}
    found: list[dict[str, dict[str, Score]]] = []
    for i, point in enumerate(progress_bar(points if validation else [], desc=f"search ({merge.name})",
                                           disable=not s.progress, unit="point")):
        _load_merge(model, theta_0, finetuned, merge, point)
        found.append(_score_sets(model, validation, evalsets, backbone, s, temperatures, i))
    chosen = choose_point([_mean_primary(scores) for scores in found], points) if validation else 0
    _load_merge(model, theta_0, finetuned, merge, points[chosen])
    tests = [es for es in evalsets if es.role != "validation"]
    scores = _score_sets(model, tests, evalsets, backbone, s, temperatures, chosen)
    base = dict(s.provenance or {})
    records = [r for i in range(len(found)) for r in _records(
        {None: found[i]}, validation, [None], merge.name, merge_provenance(base, merge, points, i, SEARCH, chosen), {})]
    return records + _records({None: scores}, tests, [None], merge.name,
                              merge_provenance(base, merge, points, chosen, TEST, chosen), {})


def _load_merge(model: Classifier, theta_0, finetuned, merge: MergeRun, point: dict[str, Any]) -> None:
    """Merge ``merge``'s weights at ``point`` (on the model's device) and load them into ``model``."""
    from wiseft.merge import get_method, merge_states

    method = get_method(merge.method)
    device = device_of(model)
    on = lambda state: {k: v.to(device) for k, v in state.items()}  # noqa: E731 - a no-op where they are already
    base = on(theta_0) if method.needs_base else None
    state = merge_states(method, base, [on(finetuned[n]) for n in merge.models], merge.params_at(point))
    model.load_state_dict(state)
    rederive_head(model)  # FLYP: the head of the merged text tower


def _score_sets(model: Classifier, sets: Sequence[EvalSet], evalsets: Sequence[EvalSet], backbone: Backbone,
                s: EvalSettings, temperatures: dict, key: int) -> dict[str, dict[str, Score]]:
    """Every metric of each of ``sets`` for the model as it is, as a sweep scores one alpha:
    calibration under ``temperatures[key]`` (fitted by a validation set), and on the
    reference set its accuracies on each subset shift's classes (``evalsets`` says which)."""
    scores = {}
    for es in _validation_first(sets):
        scores[es.name], logits, labels = _evaluate_set(model, es, backbone, s)
        _score_more(es, scores[es.name], logits, labels, temperatures, key, evalsets)
    return scores


def _mean_primary(scores: Mapping[str, Mapping[str, Score]]) -> float:
    """The mean over sets of each set's primary metric (several validation sets count equally)."""
    values = [s[_primary(s)].value for s in scores.values()]
    return sum(values) / len(values)


def choose_point(values: Sequence[float], points: Sequence[Mapping[str, Any]]) -> int:
    """The index of the best validation value. Ties go, for a search over alpha alone, to
    the alpha closest to 0.5 and then the smaller (``robustness.select_alpha``'s rule),
    else to the first point of the grid.

    Example:
        >>> choose_point([0.8, 0.9, 0.9], [{"alpha": 0.0}, {"alpha": 0.4}, {"alpha": 0.5}])
        2
    """
    if not values:
        raise ValueError("no grid point was scored")
    alphas = all(list(p) == ["alpha"] for p in points)

    def key(i: int) -> tuple:
        return alpha_rank(values[i], float(points[i]["alpha"])) if alphas else (-round(values[i], 12), i)

    return min(range(len(values)), key=key)


def merge_provenance(base: Mapping[str, Any], merge: MergeRun, points: Sequence[dict[str, Any]], index: int,
                     stage: str, chosen: int) -> dict[str, Any]:
    """What the records of ``merge``'s grid point ``index`` carry: ``base`` (the run's
    provenance), ``method``, and ``merge``: the label, method, models, the point's full
    parameters (defaults included), the point, its index, the search space, the stage and
    whether it is the chosen point."""
    from wiseft.merge import get_method

    params = get_method(merge.method).make_params(merge.params_at(points[index])).model_dump(mode="json")
    info = {"name": merge.name, "method": merge.method, "models": list(merge.models), "params": params,
            "point": _jsonable(points[index]), "point_index": index,
            "search": {k: [_jsonable(v) for v in vs] for k, vs in merge.search.items()},
            "stage": stage, "chosen": index == chosen}
    return {**base, "method": merge.method, MERGE: info}


def _jsonable(value: Any) -> Any:
    """Tuples as lists, so a point reads back from JSON as it was recorded."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def reuse_sweep(merge: MergeRun, records: Sequence[Record]) -> list[Record] | None:
    """A linear entry searching a global alpha (``MergeRun.alpha_search``) is WiSE-FT
    itself: its records are copies of its fine-tune's sweep records, relabelled (the
    validation records of the searched alphas as the search, the chosen alpha's test
    records as the test), with ``merge.from_sweep`` naming the fine-tune. None when the
    sweep did not score every searched alpha on validation (then search it afresh).
    """
    if not merge.alpha_search:
        return None
    source = merge.models[0]
    points = merge.points()
    alphas = [float(p["alpha"]) for p in points]
    own = [r for r in records if r.model == source and r.alpha is not None and float(r.alpha) in alphas]
    val: dict[float, list[float]] = {}
    for r in select_metric(own, PRIMARY):
        if r.role == "validation":
            val.setdefault(float(r.alpha), []).append(r.value)
    if not val or set(val) != set(alphas):
        return None
    chosen = choose_point([sum(val[a]) / len(val[a]) for a in alphas], points)
    out = []
    for r in own:
        stage = SEARCH if r.role == "validation" else TEST
        if stage == TEST and float(r.alpha) != alphas[chosen]:
            continue
        prov = merge_provenance(r.provenance, merge, points, alphas.index(float(r.alpha)), stage, chosen)
        prov[MERGE]["from_sweep"] = source
        out.append(replace(r, model=merge.name, alpha=None, provenance=prov))
    return out

"""Training data: k-shot subsets, per-sample seeded augmentation, and the global-batch plan.

Every optimizer step consumes one global batch taken in order from a per-epoch
permutation seeded by ``(seed, epoch)``. The batch is split into ``world x accum``
micro-batches; rank ``r`` takes micro-batches ``r*accum ... r*accum+accum-1``. A
sample's augmentation is seeded by ``(seed, epoch, index)`` through torch's generator
(which torchvision and open_clip transforms use). So the data a step sees depends only
on the step number, never on the number of processes, workers, or where a run was
resumed. Python's ``random`` (used by some transforms, e.g. timm's RandAugment) is
seeded once per micro-batch, by its first sample: exact on resume with the same
number of processes, and seeding it per sample would cost more than a small model's step.
Seeding is skipped for data that draws no random numbers (no random transform, or the
linear head's features): :func:`draws_random_numbers` probes a few samples first, so
such data runs exactly as a plain loop would. The model's own draws (dropout) are seeded
per micro-batch by its first sample (:func:`micro_batch_seed`), so they too depend on
which samples a micro-batch holds, never on the process that runs it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from wiseft.data import DataError, LabeledDataset, per_class_permutations

log = logging.getLogger("wiseft")


def kshot_subset(dataset: LabeledDataset, shots: int, seed: int = 0) -> LabeledDataset:
    """``shots`` samples per class, drawn with a fixed seed (the same seed gives the same subset).

    Example:
        >>> train_16 = kshot_subset(train, 16, seed=0)
    """
    perms = per_class_permutations(dataset.labels, seed)
    keep: list[int] = []
    for y, name in enumerate(dataset.classnames):
        perm = perms.get(y, [])
        if len(perm) < shots:
            raise DataError(f"dataset {dataset.name!r}: class {name!r} has {len(perm)} "
                            f"samples, fewer than shots_per_class={shots}")
        keep += perm[:shots]
    return dataset.subset(sorted(keep))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 2_147_483_629 + index) % (2 ** 63)


def micro_batch_seed(seed: int, epoch: int, mb: "MicroBatch") -> int:
    """The seed of a micro-batch's forward pass (dropout): set by its first sample, so the
    masks depend on which samples a micro-batch holds, never on the process that runs it
    (one process accumulating two micro-batches draws what two processes draw)."""
    first = mb.indices[0] if mb.indices else -1
    return sample_seed(seed, epoch, first) ^ 0x2545F4914F6CDD1D  # a stream apart from the samples' own


def draws_random_numbers(dataset: Dataset, probes: int = 3) -> bool:
    """Whether loading a sample draws from torch's default generator or Python's ``random``
    (a random transform such as RandomResizedCrop), probed on ``probes`` samples spread
    over the dataset. Every RNG state is left as it was. Draws from NumPy's global RNG
    are not seeded per sample; they get a warning, since resume is then not exact.

    Example:
        >>> draws_random_numbers(train.with_transform(backbone.transform_train))
        True
    """
    n = len(dataset)
    gen = torch.default_generator
    torch_state, py_state, np_state = gen.get_state(), random.getstate(), np.random.get_state()
    draws = np_draws = False
    try:
        for i in sorted({round(k * (n - 1) / max(1, probes - 1)) for k in range(probes)} if n else ()):
            try:
                dataset[i]
            except Exception:  # noqa: BLE001 - an unreadable sample: training skips it, the probe too
                continue
            draws = draws or not torch.equal(gen.get_state(), torch_state) or random.getstate() != py_state
            _, keys, pos, *_ = np.random.get_state()
            np_draws = np_draws or pos != np_state[2] or not np.array_equal(keys, np_state[1])
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)
    if np_draws:
        log.warning("the training data's transform draws from NumPy's global RNG, which is not seeded per "
                    "sample: a resumed run will not repeat the augmentation of an uninterrupted one exactly")
    return draws


class SeededSamples(Dataset):
    """``base[i]`` with torch's RNG seeded per sample by ``(seed, epoch, i)`` for the
    duration of the call (the caller's torch RNG state is restored). Python's ``random``
    is seeded once per micro-batch, by its first sample, and left so (cheaper than
    restoring it)."""

    def __init__(self, base: Dataset, seed: int, seeded: bool = True):
        self.base, self.seed, self.seeded = base, seed, seeded

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        """One sample, keyed ``(epoch, i)``: a micro-batch of one."""
        epoch, i = key
        return self.__getitems__((epoch, (i,)))[0]

    def __getitems__(self, key: tuple[int, tuple[int, ...]]) -> list:
        """A micro-batch at once, keyed ``(epoch, indices)`` (what :class:`PlanSampler` yields
        to the DataLoader's batched fetch): torch's generator is saved and restored once and
        seeded per sample; Python's ``random`` is seeded once, by the first sample."""
        epoch, indices = key
        out = Samples()
        if not self.seeded:
            for i in indices:
                self._load(i, out)
            return self._never_empty(out, indices)
        gen = torch.default_generator
        state = gen.get_state()
        random.seed(sample_seed(self.seed, epoch, indices[0]))
        try:
            for i in indices:
                # not torch.manual_seed: that also queues CUDA seeding, 100x slower
                gen.manual_seed(sample_seed(self.seed, epoch, i))
                self._load(i, out)
            return self._never_empty(out, indices)
        finally:
            gen.set_state(state)

    def _load(self, i: int, out: "Samples") -> None:
        """Append sample ``i``, or note it as unreadable (the decoding policy of
        :func:`wiseft.data.folders.load_image`: any decoder failure is a bad input)."""
        try:
            out.append(self.base[i])
        except Exception as e:  # noqa: BLE001 - a bad input, skipped and counted, not a crash
            out.unreadable.append((i, f"{_ref(self.base, i)}: {type(e).__name__}: {e}"))

    def _never_empty(self, out: "Samples", indices: tuple[int, ...]) -> "Samples":
        """A micro-batch whose every sample is unreadable still runs (ranks stay in step):
        it takes the next readable sample with label -100, which the loss ignores."""
        if out or not len(self.base):
            return out
        n = len(self.base)
        for k in range(1, min(n, 1000)):
            probe = Samples()
            self._load((indices[-1] + k) % n, probe)
            if probe:
                x, _ = probe[0]
                out.append((x, IGNORE_LABEL))
                return out
        raise DataError(f"no readable sample near index {indices[-1]} of the training set; first error: "
                        f"{out.unreadable[0][1]}")


IGNORE_LABEL = -100  # cross_entropy's ignore_index: a placeholder sample that adds nothing to the loss


class Samples(list):
    """A micro-batch's loaded samples, and the ``(index, reason)`` of those skipped as unreadable."""

    def __init__(self, *args):
        super().__init__(*args)
        self.unreadable: list[tuple[int, str]] = []


def _ref(dataset, i: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[i][0]) if samples is not None else f"sample {i}"


class SkipUnreadable:
    """A collate function that also returns the micro-batch's unreadable samples:
    ``(inputs, labels, [(index, reason), ...])``."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, batch):
        return (*self.collate(list(batch)), list(getattr(batch, "unreadable", ())))


class TensorSamples(Dataset):
    """(features[i], labels[i]) pairs: the linear head's training set."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor):
        self.feats, self.labels = feats, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.feats[i], self.labels[i]


def stack_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batch)
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys]).long()


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward of one rank: sample indices and the loss weight per sample
    (``world / global batch size``; 0 for a placeholder that keeps ranks in step)."""

    indices: tuple[int, ...]
    weight: float


@dataclass(frozen=True)
class BatchPlan:
    """Which samples every step of every epoch uses, for one rank."""

    num_samples: int
    batch_size: int
    micro_batches: int  # world * accum
    rank: int
    accum: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g).tolist()

    def step(self, perm: list[int], step_in_epoch: int) -> list[MicroBatch]:
        """This rank's ``accum`` micro-batches of one step of an epoch: the global batch is
        cut into ``micro_batches`` nearly equal chunks, the larger ones first."""
        batch = perm[step_in_epoch * self.batch_size:(step_in_epoch + 1) * self.batch_size]
        size, larger = divmod(len(batch), self.micro_batches)
        world = self.micro_batches // self.accum
        out = []
        for c in range(self.rank * self.accum, (self.rank + 1) * self.accum):
            start = c * size + min(c, larger)
            chunk = batch[start:start + size + (c < larger)]
            if chunk:
                out.append(MicroBatch(tuple(chunk), world / len(batch)))
            else:  # a short last batch: run one sample with weight 0 so every rank syncs
                out.append(MicroBatch((batch[0],), 0.0))
        return out

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[list[MicroBatch]]:
        perm = self.permutation(epoch)
        for s in range(start_step, self.steps_per_epoch):
            yield self.step(perm, s)


class PlanSampler(Sampler):
    """Batch sampler for one epoch of a :class:`BatchPlan`: yields one ``(epoch, indices)``
    key per micro-batch, which the DataLoader hands whole to :meth:`SeededSamples.__getitems__`."""

    def __init__(self, plan: BatchPlan, epoch: int, start_step: int = 0):
        self.plan, self.epoch_, self.start = plan, epoch, start_step

    def __iter__(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        for micro in self.plan.epoch(self.epoch_, self.start):
            for mb in micro:
                yield self.epoch_, mb.indices

    def __len__(self) -> int:
        return (self.plan.steps_per_epoch - self.start) * self.plan.accum


def resolve_batch(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(per-device micro-batch, accumulation steps) with micro x world x accum = batch_size."""
    micro = micro_batch_size or batch_size // world
    if micro < 1 or batch_size % (micro * world):
        raise ValueError(f"batch_size {batch_size} is not micro_batch_size {micro} x {world} devices x "
                         "an integer number of accumulation steps; change batch_size or micro_batch_size")
    return micro, batch_size // (micro * world)

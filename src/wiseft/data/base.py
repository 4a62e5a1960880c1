"""Labelled datasets, the dataset registry, held-out splits and class projection."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch.utils.data import Dataset

from wiseft.config import DatasetSpec, FieldError
from wiseft.core import DATASETS, Score, WiseftError, accuracy


class DataError(WiseftError):
    """Bad dataset input; the message names the file, folder or field."""


# A builder annotates each option it takes (``split: TrainOrTest``); the one check of a
# dataset spec, in a config or in build_dataset, reads the allowed values from there.
TrainOrTest = Literal["train", "test"]


@runtime_checkable
class EvalHooks(Protocol):
    """What an evaluation set may declare about scoring; ``LabeledDataset`` gives the
    defaults (its own projection or none, labels unchanged, top-1 accuracy).

    ``index`` holds each scored row's position in ``dataset.samples``, so metrics that
    need per-sample metadata (a region, a video frame) still line up when unreadable
    inputs were skipped.
    """

    def project_logits(self, logits: torch.Tensor) -> torch.Tensor: ...

    def project_labels(self, labels: torch.Tensor) -> torch.Tensor: ...

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> dict[str, Score]: ...


class ReferencedDataset(Dataset):
    """Samples that hold a reference to each input (an image path, image bytes, or the text
    itself) and its target; ``load`` turns a reference into a raw input (a PIL image, a
    string) and ``transform`` into a model input. ``dataset[i]`` is ``(input, target)``.
    The one base of LabeledDataset (target: a class index) and PairDataset (a caption)."""

    def __init__(self, samples: Sequence[tuple[Any, Any]], *, load: Callable[[Any], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None, name: str = ""):
        self.samples = list(samples)
        self.load = load
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        ref, target = self.samples[i]
        x = self.load(ref) if self.load is not None else ref
        return (self.transform(x) if self.transform is not None else x), target

    def _copy(self, samples=None, transform=None):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        if samples is not None:
            new.samples = list(samples)
        if transform is not None:
            new.transform = transform
        return new

    def with_transform(self, transform: Callable[[Any], Any]):
        """The same samples with another transform (the input is not copied)."""
        return self._copy(transform=transform)

    def subset(self, indices: Sequence[int]):
        return self._copy(samples=[self.samples[i] for i in indices])


class LabeledDataset(ReferencedDataset):
    """(input, label) pairs over an ordered class-name list.

    ``samples`` hold a reference to each input (an image path, or the text itself) and
    an integer label; ``load`` turns a reference into a raw input (a PIL image, a
    string) and ``transform`` into a model input. A dataset scored with another
    model's classes (ImageNet-R under a 1000-class ImageNet head) carries that
    ``projection``; ``templates`` names its prompt set.
    """

    def __init__(self, samples: Sequence[tuple[Any, int]], classnames: Sequence[str], *,
                 load: Callable[[Any], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None, name: str = "",
                 projection: "Projection | None" = None, templates: str | None = None):
        super().__init__(samples, load=load, transform=transform, name=name)
        self.classnames = list(classnames)
        self.projection = projection
        self.templates = templates

    # EvalHooks defaults -------------------------------------------------------------
    def project_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.projection is None else self.projection(logits)

    def project_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> dict[str, Score]:
        return {"top1": accuracy(logits.argmax(dim=1), labels)}

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.samples]


def per_class_permutations(labels: Sequence[int], seed: int) -> dict[int, list[int]]:
    """Indices of each class (in label order) in a seeded random order: the one draw
    behind every seeded split and subset (validation hold-out, k-shot, fixed test splits)."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    return {y: [by_class[y][j] for j in torch.randperm(len(by_class[y]), generator=g).tolist()]
            for y in sorted(by_class)}


def split_holdout(dataset: LabeledDataset, fraction: float, seed: int = 0
                  ) -> tuple[LabeledDataset, LabeledDataset]:
    """(train, validation): a seeded, class-stratified hold-out of ``fraction`` of each
    class (at least one sample per class that has two or more)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    train, val = [], []
    for perm in per_class_permutations(dataset.labels, seed).values():
        k = max(1, round(fraction * len(perm))) if len(perm) > 1 else 0
        val += perm[:k]
        train += perm[k:]
    return dataset.subset(sorted(train)), dataset.subset(sorted(val))


@dataclass(frozen=True)
class Projection:
    """Scores a dataset whose classes are a subset (or a grouping) of the reference
    classes: output class j takes the max over the reference logits in ``groups[j]``;
    a class with an empty group (YTBB-Robust's 'none') scores -inf, never predicted."""

    groups: tuple[tuple[int, ...], ...]

    @property
    def is_identity(self) -> bool:
        return all(g == (i,) for i, g in enumerate(self.groups))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if all(len(g) == 1 for g in self.groups):
            return logits[:, [g[0] for g in self.groups]]
        empty = logits.new_full((logits.shape[0],), float("-inf"))
        return torch.stack([logits[:, list(g)].amax(dim=1) if g else empty for g in self.groups], dim=1)


def build_projection(reference: Sequence[str], classnames: Sequence[str],
                     class_map: dict[str, str | int | list[str | int]] | None = None, *,
                     name: str = "") -> Projection:
    """Map each of a dataset's classes to reference classes: through ``class_map``
    (dataset class -> one or more reference class names, or integer reference class
    indices where names repeat, as two ImageNet names do) or else by equal name."""
    index = {c: i for i, c in enumerate(reference)}
    groups = []
    for c in classnames:
        targets = (class_map or {}).get(c, c)
        targets = [targets] if isinstance(targets, (str, int)) else list(targets)
        missing = [t for t in targets if not (t in index or (isinstance(t, int) and 0 <= t < len(reference)))]
        if missing:
            raise DataError(f"dataset {name!r}: class {c!r} maps to {missing[0]!r}, which is not a "
                            "reference class; give a class_map onto the reference class names")
        groups.append(tuple(t if isinstance(t, int) else index[t] for t in targets))
    return Projection(tuple(groups))


# decorator: a builder ``fn(**options) -> LabeledDataset`` for a kind. A kind whose class list
# may name classes no sample has (a user's folder or manifest with its own class list)
# declares ``declared_classes=True``, so a set missing reference classes is caught.
register_dataset = DATASETS.register
list_datasets = DATASETS.names


def build_dataset(spec: Mapping[str, Any], *, name: str = "", base_dir: str | Path | None = None) -> LabeledDataset:
    """Build a dataset from ``{"kind": ..., **options}``, checked first as a config's
    datasets are (``DatasetSpec``, against the kind's builder): an unknown kind or option,
    a missing option or a value the builder does not take is a DataError naming the
    dataset, the field and what is allowed. Relative paths resolve against ``base_dir``.

    Example:
        >>> test = build_dataset({"kind": "cifar10", "root": "data", "split": "test"})
    """
    try:
        spec = DatasetSpec.check(spec)
    except FieldError as e:
        where = ".".join(e.loc) + ": " if e.loc else ""
        raise DataError(f"{_dataset_label(name, spec)}: {where}{e.message}") from None
    fn = DATASETS.get(spec.kind)
    options = spec.options
    if "base_dir" in inspect.signature(fn).parameters:
        options["base_dir"] = base_dir
    ds = fn(**options)
    ds.name = name or ds.name
    return ds


def _dataset_label(name: str, spec: object) -> str:
    """``dataset 'train' (cifar10)``, ``dataset 'cifar10'``: the name a build error gives."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    kind = kind if isinstance(kind, str) and kind in DATASETS else ""
    if name and kind and name != kind:
        return f"dataset {name!r} ({kind})"
    return f"dataset {name or kind!r}" if name or kind else "dataset"


def resource(*parts: str) -> Path:
    """A file shipped under ``wiseft/resources/datasets``."""
    return Path(str(resources.files("wiseft").joinpath("resources", "datasets", *parts)))


def find_root(root: str | Path, base_dir, *names: str, what: str) -> Path:
    """``root`` itself or the first of ``root/<name>`` that exists (users point at
    either the folder a download unpacks to, or its parent)."""
    path = resolve(root, base_dir)
    for n in names:
        if (path / n).is_dir():
            return path / n
    if path.is_dir():
        return path
    raise DataError(f"{what}: folder {path} does not exist")


def resolve(path: str | Path, base_dir: str | Path | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def read_classnames(classnames: Sequence[str] | str | Path | None, base_dir=None) -> list[str] | None:
    """A class-name list given inline, or a text file with one name per line. A name
    given twice is an error naming it and where (two head rows would be identical)."""
    if classnames is None:
        return None
    if isinstance(classnames, (list, tuple)):
        check_unique(classnames, "the class-name list")
        return list(classnames)
    path = resolve(classnames, base_dir)
    if not path.is_file():
        raise DataError(f"class-name file {path} does not exist")
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    names = [c for _, c in lines if c]
    check_unique(names, f"class-name file {path}", [n for n, c in lines if c], "line")
    return names


def check_unique(classnames: Sequence[str], where: str, positions: Sequence[int] | None = None,
                 unit: str = "entry") -> None:
    """Raise DataError naming the first class listed twice in ``classnames`` and ``where``
    it came from (``positions``: each name's line or entry number, default 0-based index)."""
    first: dict[str, int] = {}
    for i, c in enumerate(classnames):
        if c in first:
            pos = positions or range(len(classnames))
            raise DataError(f"{where}: class {c!r} is listed twice ({unit} {pos[first[c]]} and {pos[i]}); "
                            "identical names give identical head rows: rename or remove one")
        first[c] = i

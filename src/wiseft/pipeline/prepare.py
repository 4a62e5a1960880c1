"""The run's data: every dataset built and checked against the reference class list
(errors name the config file and field) before any model loads, the prompts chosen, the
validation split held out; and ``--quick``'s slices of each set."""

from __future__ import annotations

from dataclasses import dataclass

from wiseft.config import ConfigError, DatasetSpec, RunConfig
from wiseft.core import DATASETS, get_templates
from wiseft.data import (
    DataError,
    LabeledDataset,
    PairDataset,
    build_dataset,
    build_projection,
    per_class_permutations,
    read_classnames,
    split_holdout,
    split_pairs,
)
from wiseft.evaluation import EvalSet


@dataclass
class PreparedData:
    """Datasets built and checked against the class list, before any model loads. Any
    set may be a ``PairDataset`` (scored by retrieval, trained on contrastively); the class
    list is then that of the labelled sets, empty when every set is a pair set."""

    classnames: list[str]
    templates: tuple[str, ...]
    train: LabeledDataset | PairDataset
    evalsets: list[EvalSet]


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Build every dataset and check class lists; errors name the config file and field.

    With ``data.templates`` unset, the prompts are the reference dataset's own set (the
    test set's, else the training set's), else ``openai_imagenet``. The classes are
    ``data.classnames``, else the training set's, else (a pair training set) the first
    labelled evaluation set's. A pair training set's validation split is a seeded share
    of its pairs (``split_pairs``): the set alpha is chosen on, by retrieval."""
    d = cfg.data

    def build(spec: dict, name: str, field: str) -> LabeledDataset | PairDataset:
        try:
            ds = build_dataset(spec, name=name, base_dir=cfg.base_dir)
        except DataError as e:
            raise cfg.error(field, e) from None
        ds.max_unreadable = d.max_unreadable  # read by training and evaluation when they skip inputs
        return ds

    try:
        classnames = read_classnames(d.classnames, cfg.base_dir)
    except DataError as e:
        raise cfg.error("data.classnames", e) from None
    for name in d.shifts:  # records are keyed by set name: two sets of one name would overwrite each other
        if name in (d.name, f"{d.name}-val"):
            raise cfg.error(f"data.shifts.{name}", f"a shift may not be named {name!r}, the name of the "
                            f"{'reference test set' if name == d.name else 'validation split'} (data.name); "
                            "rename it")
    train = build(d.train, f"{d.name}-train", "data.train")
    _check_objective(cfg, train)
    test = build(d.test, d.name, "data.test")
    shifts = {name: build(spec, name, f"data.shifts.{name}") for name, spec in d.shifts.items()}
    sets = [(d.name, "reference", test, d.test, "data.test")]
    sets += [(name, "shift", shifts[name], spec, f"data.shifts.{name}") for name, spec in d.shifts.items()]
    for _, _, ds, spec, where in sets:
        if isinstance(ds, PairDataset) and ("class_map" in spec or "subset" in spec):
            raise cfg.error(where, f"{ds.name!r} is a pair set, scored by retrieval over its captions: "
                            "class_map and subset apply to labelled sets only; remove them")
    try:
        classnames = classnames or _reference_classes(train, [s[2] for s in sets])
        train = train if isinstance(train, PairDataset) else _relabel(train, classnames)
        evalsets = [EvalSet(name, role, ds, None if isinstance(ds, PairDataset)
                            else _projection(classnames, ds, spec, where)) for name, role, ds, spec, where in sets]
    except ConfigError as e:
        raise ConfigError(f"{cfg.source}: {e}" if cfg.source else str(e)) from None
    own = getattr(test, "templates", None) or getattr(train, "templates", None)
    try:
        templates = get_templates(d.templates if d.templates is not None else own or "openai_imagenet")
    except (KeyError, ValueError) as e:
        why = "" if d.templates is not None else f"unset, and the reference dataset's own set {own!r} fails: "
        raise cfg.error("data.templates", why + e.args[0]) from None
    if d.validation_fraction > 0:
        split = split_pairs if isinstance(train, PairDataset) else split_holdout
        train, val = split(train, d.validation_fraction, d.seed)
        val.name = f"{d.name}-val"
        evalsets.append(EvalSet(f"{d.name}-val", "validation", val))
    return PreparedData(list(classnames), templates, train, evalsets)


def _reference_classes(train: LabeledDataset | PairDataset, evaluated: list) -> list[str]:
    """The class list when ``data.classnames`` is unset: the training set's, else (pairs)
    the first labelled evaluation set's, else none (every set is a pair set)."""
    labelled = [ds for ds in (train, *evaluated) if not isinstance(ds, PairDataset)]
    return list(labelled[0].classnames) if labelled else []


def _check_objective(cfg: RunConfig, train: LabeledDataset | PairDataset) -> None:
    """A pair training set trains only contrastively (its captions are the targets): any
    other objective of any fine-tune (the main one or a variant) is a ConfigError naming it."""
    if not isinstance(train, PairDataset):
        return
    for name, ft in cfg.finetune_runs().items():
        if ft.objective != "contrastive":
            field = "finetune.objective" if name == "finetuned" else f"variants.{name}.objective"
            raise cfg.error(field, f"{ft.objective!r} needs class labels, but data.train ({train.name}) is a pair "
                            "set (captions, no labels): set 'objective: contrastive' to fine-tune on its pairs, "
                            "or train on a labelled set")


def _relabel(train: LabeledDataset, classnames: list[str]) -> LabeledDataset:
    """Training labels indexed into the reference class list (the head's row order)."""
    if list(train.classnames) == list(classnames):
        return train
    unknown = [c for c in train.classnames if c not in classnames]
    if unknown or len(train.classnames) != len(classnames):
        raise ConfigError(f"data.train has {len(train.classnames)} classes but data.classnames has "
                          f"{len(classnames)}" + (f"; {unknown[:5]} are not in data.classnames" if unknown else ""))
    index = [classnames.index(c) for c in train.classnames]
    out = train.subset(range(len(train)))
    out.samples = [(ref, index[y]) for ref, y in train.samples]
    out.classnames = list(classnames)
    return out


def _projection(classnames, ds: LabeledDataset, spec: DatasetSpec, where: str):
    """None where the dataset scores reference logits itself: same classes, or a
    projection of its own (ImageNet-R/A subsets, ObjectNet's grouped classes).

    A set must cover every reference class unless its spec says ``subset: true``: a
    set whose classes (its folders, or a user set's declared classes that no sample
    has) lack some reference classes is an error, not a silent subset score."""
    if ds.projection is not None and spec.class_map is None:
        return None  # the dataset's own projection: a subset by design
    if not spec.subset:
        present = set(ds.classnames)
        if DATASETS.info(spec["kind"]).get("declared_classes"):  # a class the user listed that no sample has is missing
            labels = {y for _, y in ds.samples}
            present = {c for i, c in enumerate(ds.classnames) if i in labels}
        class_map = spec.class_map or {}
        targets = set()
        for c in present:
            m = class_map.get(c, c)
            targets.update([m] if isinstance(m, (str, int)) else m)
        missing = [c for i, c in enumerate(classnames) if c not in targets and i not in targets]
        if missing:
            raise ConfigError(f"{where}: {len(missing)} of the {len(classnames)} reference classes have no "
                              f"samples in this set ({', '.join(map(repr, missing[:5]))}"
                              f"{', ...' if len(missing) > 5 else ''}); add the missing class folders or "
                              "records, or set 'subset: true' on this dataset to score it on the classes "
                              "it has")
    if spec.class_map is None and list(ds.classnames) == list(classnames):
        return None
    try:
        return build_projection(classnames, ds.classnames, spec.class_map, name=where)
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None


# --quick: the same pipeline on a slice of every set, to check a config end to end in minutes
QUICK_TRAIN = 48  # examples of the training set


QUICK_EVAL = 48  # examples of each evaluation set


QUICK_BATCH = 16


QUICK_ALPHAS = (0.0, 0.5, 1.0)


def quick_slice(dataset: LabeledDataset | PairDataset, n: int, seed: int = 0) -> LabeledDataset | PairDataset:
    """At most ``n`` samples, drawn class by class in turn (seeded), so every class
    appears while there is room; of a pair set, a seeded draw of ``n`` pairs."""
    if isinstance(dataset, PairDataset):
        return split_pairs(dataset, n / len(dataset), seed)[1] if len(dataset) > n else dataset
    perms = list(per_class_permutations(dataset.labels, seed).values())
    keep: list[int] = []
    for rank in range(max((len(p) for p in perms), default=0)):
        keep += [p[rank] for p in perms if rank < len(p)]
        if len(keep) >= n:
            break
    return dataset.subset(sorted(keep[:n]))


def quick_data(data: PreparedData, seed: int) -> PreparedData:
    evalsets = [EvalSet(e.name, e.role, quick_slice(e.dataset, QUICK_EVAL, seed), e.projection)
                for e in data.evalsets]
    return PreparedData(data.classnames, data.templates, quick_slice(data.train, QUICK_TRAIN, seed), evalsets)

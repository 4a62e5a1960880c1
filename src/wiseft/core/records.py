"""Results as append-only JSON lines: one record per (model, alpha, dataset, metric).

Every table, plot and report is rebuilt from these records alone; see
``docs/results-format.md`` for the schema.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

ROLES = ("reference", "shift", "validation")
# Metric selector: each dataset's primary metric (the record flagged ``provenance["primary"]``).
PRIMARY = "primary"
# Metrics that are never a dataset's primary one: calibration error (lower is better) and the
# fitted temperature (not a score at all).
NOT_PRIMARY = ("ece", "temperature")
QUICK_BANNER = ("QUICK RUN (--quick): a few dozen examples per set and a few steps per fine-tune, to check "
                "the config end to end. These numbers are not results.")
# The paper's default mixing coefficient: the answer when nothing was measured to choose
# by, and where ties between equally good alphas go.
DEFAULT_ALPHA = 0.5


def alpha_rank(value: float, alpha: float) -> tuple[float, float, float]:
    """The sort key of the one rule that picks an alpha (smallest first): the highest
    ``value``, ties to the alpha closest to 0.5, then to the smaller alpha. Rounding keeps
    float noise (0.6 - 0.5 against 0.5 - 0.4) from deciding a tie.

    Example:
        >>> min([(0.9, 0.4), (0.9, 0.6), (0.8, 0.5)], key=lambda t: alpha_rank(*t))
        (0.9, 0.4)
    """
    return (-round(value, 12), round(abs(alpha - DEFAULT_ALPHA), 9), alpha)


def best_alpha(scores: Mapping[float, float]) -> float:
    """The alpha of ``scores`` (alpha -> value) that :func:`alpha_rank` puts first."""
    return min(scores, key=lambda a: alpha_rank(scores[a], a))


@dataclass(frozen=True)
class Record:
    """One measured number.

    ``model`` names the fine-tuning run the alpha belongs to (e.g. ``"finetuned"``
    or ``"aggressive"``); alpha 0 is the zero-shot model and alpha 1 the fine-tuned one.
    ``role`` says whether ``dataset`` is the reference test set, a distribution shift,
    or the held-out validation split used to choose alpha.
    """

    model: str
    alpha: float | None
    dataset: str
    role: str
    metric: str
    value: float
    correct: int | None = None
    total: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"record role must be one of {ROLES}, got {self.role!r}")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result, for provenance."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("wiseft", "torch", "open_clip_torch", "transformers", "sentence-transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


# provenance["method"] of output-space-ensemble records (WiSE-FT's own carry no method).
OUTPUT_ENSEMBLE = "output_ensemble"


def output_ensemble_name(model: str) -> str:
    """The model name output-ensemble records carry: ``"finetuned (output ensemble)"``."""
    return f"{model} (output ensemble)"


# provenance["merge"] of the records of a run's ``merges:`` entries (docs/results-format.md):
# stage "search" (a grid point on the validation split) or "test" (the chosen point on the
# reference and shift sets).
MERGE, SEARCH, TEST = "merge", "search", "test"


def merge_of(record: Record) -> dict[str, Any] | None:
    """The ``merges:`` entry a record belongs to (its ``provenance["merge"]``), or None."""
    return record.provenance.get(MERGE)


def merge_stage(record: Record) -> str | None:
    """The stage of a ``merges:`` entry's record (``SEARCH`` or ``TEST``), or None for other records."""
    merge = merge_of(record)
    return None if merge is None else merge["stage"]


def merge_names(records: Iterable[Record]) -> list[str]:
    """The labels of the run's ``merges:`` entries, in the order their records come."""
    return list(dict.fromkeys(r.model for r in records if merge_of(r) is not None))


# The name of the reference-set metric for accuracy on one shift's classes only.
_RESTRICTED_PREFIX, _RESTRICTED_SUFFIX = "top1_on_", "_classes"


def restricted_metric(shift: str) -> str:
    """The reference-set metric for accuracy on ``shift``'s classes only:
    ``top1_on_imagenet-r_classes`` (the x axis of ImageNet-R's effective robustness)."""
    return f"{_RESTRICTED_PREFIX}{shift}{_RESTRICTED_SUFFIX}"


def is_restricted_metric(metric: str) -> bool:
    """Whether ``metric`` is a :func:`restricted_metric` name (an x axis, never a dataset's score).

    Example:
        >>> is_restricted_metric(restricted_metric("imagenet-r")), is_restricted_metric("top1")
        (True, False)
    """
    return (metric.startswith(_RESTRICTED_PREFIX) and metric.endswith(_RESTRICTED_SUFFIX)
            and len(metric) > len(_RESTRICTED_PREFIX) + len(_RESTRICTED_SUFFIX))


def primary_metrics(records: Iterable[Record]) -> dict[str, str]:
    """dataset -> its primary metric: the metric of the records flagged
    ``provenance["primary"]`` (the first metric the dataset declares); ``top1`` for
    datasets whose records carry no flag (files written before it existed)."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for r in records:
        seen.add(r.dataset)
        if r.provenance.get("primary") and r.metric not in NOT_PRIMARY:
            out.setdefault(r.dataset, r.metric)
    return {d: out.get(d, "top1") for d in seen}


def select_metric(records: Iterable[Record], metric: str = PRIMARY) -> list[Record]:
    """The records of one metric per dataset: each dataset's primary metric (``"primary"``),
    or the named metric for every dataset that has it (the others keep their primary one,
    so ``pm10`` still has an ImageNet reference to plot against)."""
    records = list(records)
    chosen = primary_metrics(records)
    if metric != PRIMARY:
        chosen.update({r.dataset: metric for r in records if r.metric == metric})
    return [r for r in records if r.metric == chosen[r.dataset]]


def summary_table(records: Iterable[Record], metric: str = PRIMARY, model: str | None = None) -> str:
    """A Markdown table: one row per (model, alpha), one column per dataset, plus the
    average over shift datasets, in percent. Each column shows its dataset's primary
    metric (named in the header when it is not top1), or ``metric`` when one is named. A
    pair shift's retrieval recall stays out of the average."""
    rows: dict[tuple[str, float], dict[str, float]] = {}
    datasets: dict[str, str] = {}
    names: dict[str, str] = {}
    for r in select_metric(records, metric):
        if r.alpha is None or (model is not None and r.model != model):
            continue
        rows.setdefault((r.model, r.alpha), {})[r.dataset] = r.value
        datasets.setdefault(r.dataset, r.role)
        names.setdefault(r.dataset, r.metric)
    order = {"reference": 0, "shift": 1, "validation": 2}
    cols = sorted(datasets, key=lambda d: (order[datasets[d]], list(datasets).index(d)))
    shifts = [d for d in cols if datasets[d] == "shift" and not is_retrieval_metric(names[d])]  # accuracies only
    header = ["model", "alpha", *(column_name(d, names[d]) for d in cols)] + (["avg shifts"] if shifts else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, alpha), vals in sorted(rows.items()):
        cells = [name, f"{alpha:.2f}"] + [f"{100 * vals[d]:.2f}" if d in vals else "" for d in cols]
        if shifts:
            present = [vals[d] for d in shifts if d in vals]
            cells.append(f"{100 * sum(present) / len(present):.2f}" if len(present) == len(shifts) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# A pair set's primary metric: recall@1, the mean of its two directions (core.retrieval_metrics).
RETRIEVAL_PRIMARY = "r@1"


def is_retrieval_metric(metric: str) -> bool:
    """Whether a metric name is a retrieval recall@k (``r@1``, ``r@5_t2i``, ...) of a pair set."""
    return metric.startswith("r@")


def column_name(dataset: str, metric: str) -> str:
    """A table column: the dataset, with its metric when that is not top-1 accuracy."""
    return dataset if metric == "top1" else f"{dataset} ({metric})"


def is_quick(records: Iterable[Record]) -> bool:
    """Whether the records come from a quick check (``wiseft run --quick``), not a real run."""
    return any(r.provenance.get("quick") for r in records)


# dataset (or the reference set's class-restricted metric, ``top1_on_<shift>_classes``) -> its record
Points = dict[str, Record]


@dataclass(frozen=True)
class RecordView:
    """A run's records as every stage of the report reads them: one metric per dataset
    (:func:`select_metric` of ``metric``), grouped once by :func:`record_view`.

    The three kinds of point (``curves``, ``merges``, ``baselines``) map each dataset to
    its record, plus the reference set's class-restricted accuracies under their metric
    name (``top1_on_imagenet-r_classes``: x axes, never a column).
    """

    records: list[Record]  # every record of the run, in file order
    metric: str  # PRIMARY, or the one metric named for every dataset that has it
    chosen: list[Record]  # select_metric(records, metric)
    reference: str | None  # the reference test set: the first not named *-clean; None when there is none
    shifts: list[str]  # the shift test sets the models with an alpha were scored on, in run order
    validation: list[str]  # every validation set (the sweeps' and the merges' searches'), in run order
    models: list[str]  # every model with an alpha, in run order (output ensembles included)
    output_ensembles: frozenset[str]  # the models that are output-space ensembles (provenance["method"])
    curves: dict[str, dict[float, Points]]  # model -> alpha -> points (validation sets included)
    merge_names: list[str]  # the labels of the run's merges: entries, in run order
    merges: dict[str, Points]  # label -> its chosen point on the test sets (stage TEST)
    searches: dict[str, dict[int, list[Record]]]  # label -> grid point index -> its validation records (SEARCH)
    baselines: dict[str, Points]  # other models scored on the test sets (alpha None, no merge)

    def is_output_ensemble(self, model: str) -> bool:
        """Whether ``model``'s records are an output-space ensemble's."""
        return model in self.output_ensembles


def record_view(records: Iterable[Record], metric: str = PRIMARY) -> RecordView:
    """Group ``records`` once for the report (see :class:`RecordView`); never raises.

    Example:
        >>> view = record_view(read_records("runs/demo"))
        >>> view.reference, view.shifts, sorted(view.curves["finetuned"])[:3]
        ('bbc-articles', ['bbc-headlines'], [0.0, 0.1, 0.2])
    """
    records = list(records)
    chosen = select_metric(records, metric)
    with_alpha = [r for r in chosen if r.alpha is not None]
    reference = _reference(with_alpha)
    curves: dict[str, dict[float, Points]] = {}
    merges: dict[str, Points] = {}
    baselines: dict[str, Points] = {}

    def points(r: Record) -> Points | None:
        """The points ``r`` belongs to, or None (a merge's search, a baseline's validation)."""
        if r.alpha is not None:
            return curves.setdefault(r.model, {}).setdefault(float(r.alpha), {})
        if merge_stage(r) == TEST:
            return merges.setdefault(r.model, {})
        return baselines.setdefault(r.model, {}) if merge_of(r) is None and r.role != "validation" else None

    for r in chosen:
        if (into := points(r)) is not None:
            into[r.dataset] = r
    for r in records:  # the reference set's class-restricted accuracies, under their metric name
        restricted = r.role == "reference" and r.dataset == reference and is_restricted_metric(r.metric)
        if restricted and (into := points(r)) is not None:
            into[r.metric] = r
    searches: dict[str, dict[int, list[Record]]] = {}
    for r in chosen:
        if merge_stage(r) == SEARCH:
            searches.setdefault(r.model, {}).setdefault(merge_of(r)["point_index"], []).append(r)
    return RecordView(
        records, metric, chosen, reference,
        shifts=list(dict.fromkeys(r.dataset for r in with_alpha if r.role == "shift")),
        validation=list(dict.fromkeys(r.dataset for r in chosen if r.role == "validation")),
        models=list(dict.fromkeys(r.model for r in with_alpha)),
        output_ensembles=frozenset(r.model for r in records if r.provenance.get("method") == OUTPUT_ENSEMBLE),
        curves=curves, merge_names=merge_names(records), merges=merges, searches=searches, baselines=baselines)


def _reference(records: list[Record]) -> str | None:
    """The first ``reference`` dataset with an alpha not named ``*-clean`` (or the first
    of any name), or None."""
    names = list(dict.fromkeys(r.dataset for r in records if r.role == "reference" and r.alpha is not None))
    main = [d for d in names if not d.endswith("-clean")] or names
    return main[0] if main else None

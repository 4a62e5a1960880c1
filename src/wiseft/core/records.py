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


def restricted_metric(shift: str) -> str:
    """The reference-set metric for accuracy on ``shift``'s classes only:
    ``top1_on_imagenet-r_classes`` (the x axis of ImageNet-R's effective robustness)."""
    return f"top1_on_{shift}_classes"


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
    metric (named in the header when it is not top1), or ``metric`` when one is named."""
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
    shifts = [d for d in cols if datasets[d] == "shift"]
    header = ["model", "alpha", *(column_name(d, names[d]) for d in cols)] + (["avg shifts"] if shifts else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, alpha), vals in sorted(rows.items()):
        cells = [name, f"{alpha:.2f}"] + [f"{100 * vals[d]:.2f}" if d in vals else "" for d in cols]
        if shifts:
            present = [vals[d] for d in shifts if d in vals]
            cells.append(f"{100 * sum(present) / len(present):.2f}" if len(present) == len(shifts) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def column_name(dataset: str, metric: str) -> str:
    """A table column: the dataset, with its metric when that is not top-1 accuracy."""
    return dataset if metric == "top1" else f"{dataset} ({metric})"


def is_quick(records: Iterable[Record]) -> bool:
    """Whether the records come from a quick check (``wiseft run --quick``), not a real run."""
    return any(r.provenance.get("quick") for r in records)

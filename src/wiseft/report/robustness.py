"""Effective robustness, exact confidence intervals, and alpha selection.

Effective robustness (Taori et al. 2020; WiSE-FT section 2) measures how far a
model's accuracy under a distribution shift lies above what its reference accuracy
predicts. The prediction ``beta`` is a line fitted in logit space over a set of
baseline models: ``logit(acc_shift) = slope * logit(acc_ref) + intercept``, so
``beta(acc_ref) = sigmoid(slope * logit(acc_ref) + intercept)`` and
``rho(f) = acc_shift(f) - beta(acc_ref(f))``. For a shift scored on a subset of the
reference classes (ImageNet-R, -A, ObjectNet) the x axis is the reference accuracy on
those classes (measured, metric ``top1_on_<shift>_classes``); the average over shifts
has its own line, fitted on the baseline models' averaged shift accuracies.

Alpha selection looks only at records with ``role == "validation"`` (held out of the
reference training data); shift test sets are never used to choose alpha.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from scipy import stats

from wiseft.config import DEFAULT_BASELINES
from wiseft.core import DEFAULT_ALPHA, PRIMARY, Record, RecordView, best_alpha, restricted_metric, select_metric

# Accuracies are clipped this far from 0 and 1 before taking logits, so a perfect or
# zero score still has a finite place on the axis (99.99% is the largest shown).
EPS = 1e-4
AVG = "avg"  # the average over shifts, as a "shift" name in fits and rows
DEFAULT_BASELINE_REFERENCE = "imagenet"


@dataclass(frozen=True)
class PackagedBaselines:
    """A baseline set shipped in ``resources/baselines`` (see the README there)."""

    file: str
    source: str
    model_types: tuple[str, ...] = ()  # rows kept by their model_type column; empty: all


PACKAGED_BASELINES = {
    "testbed": PackagedBaselines(
        "imagenet_testbed.csv",
        "robustness testbed (Taori et al. 2020, modestyachts/imagenet-testbed @ 0170eec6), standard ImageNet models",
        ("STANDARD",),
    ),
    "timm": PackagedBaselines(
        "imagenet_in1k.csv",
        "timm results/ (huggingface/pytorch-image-models @ aa4b5850), ImageNet-1k-only models",
    ),
}
# Non-accuracy columns of a baseline CSV.
META_COLUMNS = ("model", "img_size", "model_type")

BaselineTable = dict[str, dict[str, float]]  # baseline model -> column -> accuracy in [0, 1]


def logit(p: float | np.ndarray, eps: float = EPS) -> float | np.ndarray:
    """log(p / (1 - p)), with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    out = np.log(p) - np.log1p(-p)
    return float(out) if out.ndim == 0 else out


def sigmoid(z: float | np.ndarray) -> float | np.ndarray:
    """The inverse of ``logit``."""
    out = 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class BaselineFit:
    """``logit(acc_shift) = slope * logit(acc_x) + intercept`` over baseline models.

    ``x_dataset`` names the accuracy on the x axis: the reference set, or the reference
    accuracy on the shift's classes (``top1_on_imagenet-r_classes``). For the average
    over shifts (``shift == "avg"``), ``parts`` lists the shifts averaged.
    """

    shift: str
    slope: float
    intercept: float
    x: tuple[float, ...]
    y: tuple[float, ...]
    x_dataset: str
    source: str = ""
    parts: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        """Number of baseline models in the fit."""
        return len(self.x)

    def predict(self, acc_x: float | np.ndarray) -> float | np.ndarray:
        """beta(acc_x): the shift accuracy the baseline predicts at x accuracy ``acc_x``."""
        return sigmoid(self.slope * logit(acc_x) + self.intercept)


def fit_baseline(
    x: Iterable[float], y: Iterable[float], shift: str = "", x_dataset: str = "", source: str = ""
) -> BaselineFit:
    """Least-squares line from logit(x) to logit(y); accuracies are fractions in [0, 1].

    Example:
        >>> fit = fit_baseline([0.7, 0.8, 0.9], [0.5, 0.6, 0.75], shift="imagenet-v2")
        >>> round(fit.predict(0.85), 3)
        0.671
    """
    x = np.asarray(list(x), dtype=float)
    y = np.asarray(list(y), dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"baseline fit for {shift or 'shift'!r} needs at least 2 (x, y) pairs, got {x.size}")
    lx, ly = logit(x), logit(y)
    if np.ptp(lx) == 0:
        raise ValueError(f"baseline fit for {shift or 'shift'!r}: all baseline models have the same x accuracy")
    slope, intercept = np.polyfit(lx, ly, 1)
    return BaselineFit(shift, float(slope), float(intercept), tuple(x), tuple(y), x_dataset, source)


def effective_robustness(acc_ref: float, acc_shift: float, fit: BaselineFit) -> float:
    """rho(f) = acc_shift - beta(acc_ref), with ``acc_ref`` on the fit's x axis."""
    return float(acc_shift - fit.predict(acc_ref))


def clopper_pearson(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for an accuracy of ``correct / total``."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {correct}/{total}")
    tail = (1 - confidence) / 2
    low = 0.0 if correct == 0 else float(stats.beta.ppf(tail, correct, total - correct + 1))
    high = 1.0 if correct == total else float(stats.beta.ppf(1 - tail, correct + 1, total - correct))
    return low, high


def record_interval(record: Record, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Clopper-Pearson interval of a record, or None when it has no counts."""
    if record.correct is None or not record.total:
        return None
    return clopper_pearson(record.correct, record.total, confidence)


def _column(col: str) -> str:
    """A baseline CSV column in wiseft's names: timm's ``imagenet-r-clean`` (ImageNet val
    on ImageNet-R's classes) is ``top1_on_imagenet-r_classes``."""
    return restricted_metric(col[: -len("-clean")]) if col.endswith("-clean") else col


def load_baseline_table(path: str | Path | None = None, *, packaged: str = DEFAULT_BASELINES) -> BaselineTable:
    """Read a baseline CSV: a ``model`` column and one column per dataset, in percent.

    An ``img_size`` column, when present, is joined to the model name (timm lists some
    models at two resolutions); a ``model_type`` column is metadata. Empty cells are
    skipped; ``<shift>-clean`` columns are read as ``top1_on_<shift>_classes``. Without
    ``path``, the packaged set ``packaged`` is read (``"testbed"``: the robustness
    testbed's standard models; ``"timm"``: timm's ImageNet-1k models; see
    ``resources/baselines/README.md``).
    """
    keep: tuple[str, ...] = ()
    if path is None:
        if packaged not in PACKAGED_BASELINES:
            raise ValueError(f"unknown packaged baselines {packaged!r}; choose from {sorted(PACKAGED_BASELINES)}")
        spec = PACKAGED_BASELINES[packaged]
        text = resources.files("wiseft").joinpath(f"resources/baselines/{spec.file}").read_text()
        name, keep = f"packaged {spec.file}", spec.model_types
    else:
        text, name = Path(path).read_text(encoding="utf-8"), str(path)
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "model" not in rows[0]:
        raise ValueError(f"{name}: a baseline CSV needs a 'model' column and one column per dataset")
    table: BaselineTable = {}
    for i, row in enumerate(rows, 2):
        if keep and row.get("model_type") not in keep:
            continue
        key = row["model"] + (f"@{row['img_size']}" if row.get("img_size") else "")
        accs = {}
        for col, cell in row.items():
            if col in META_COLUMNS or cell in (None, ""):
                continue
            try:
                accs[_column(col)] = float(cell) / 100.0
            except ValueError:
                raise ValueError(f"{name}:{i}: column {col!r} is not a number: {cell!r}") from None
        table[key] = accs
    return table


def fit_baselines(
    table: Mapping[str, Mapping[str, float]], reference: str, shifts: Iterable[str], source: str = ""
) -> dict[str, BaselineFit]:
    """One fit per shift that at least 2 baseline models cover, and one for the average
    over ``shifts`` (key ``"avg"``) when at least 2 models cover them all.

    The x axis for shift ``S`` is ``top1_on_S_classes`` (the reference accuracy on S's
    classes) when the table has it, else ``reference``. The average's line is fitted on
    each model's mean accuracy over every shift in ``shifts`` against its reference
    accuracy; shifts left out of ``shifts`` play no part.
    """
    shifts = list(shifts)
    fits = {}
    for shift in shifts:
        restricted = restricted_metric(shift)
        x_col = restricted if sum(restricted in r and shift in r for r in table.values()) >= 2 else reference
        pairs = [(r[x_col], r[shift]) for r in table.values() if x_col in r and shift in r]
        if len(pairs) >= 2:
            fits[shift] = fit_baseline(*zip(*pairs), shift=shift, x_dataset=x_col, source=source)
    if shifts:
        pairs = [(r[reference], float(np.mean([r[s] for s in shifts])))
                 for r in table.values() if reference in r and all(s in r for s in shifts)]
        if len(pairs) >= 2:
            fit = fit_baseline(*zip(*pairs), shift=AVG, x_dataset=reference, source=source)
            fits[AVG] = BaselineFit(**{**fit.__dict__, "parts": tuple(shifts)})
    return fits


def build_baselines(
    view: RecordView,
    shifts: Iterable[str] | None = None,
    extra: str | Path | None = None,
    use_default: bool = True,
    default: str = DEFAULT_BASELINES,
) -> dict[str, BaselineFit]:
    """Fit the baseline for each of ``shifts`` (default: the view's), and the average
    over them, on the view's reference set, from every source that applies.

    Sources, pooled: the view's ``baselines`` (records with ``alpha`` None that belong
    to no ``merges:`` entry: other models scored on the same test sets, under the same
    metric); the CSV ``extra``; and, when ``use_default`` and the reference is
    ``imagenet``, the packaged set ``default``: ``"testbed"`` (the robustness testbed's
    standard ImageNet models, on all five shifts, with class-restricted ImageNet
    accuracies) or ``"timm"`` (timm's ImageNet-1k models; no ObjectNet).
    """
    if default not in PACKAGED_BASELINES:
        raise ValueError(f"unknown default baselines {default!r}; choose from {sorted(PACKAGED_BASELINES)}")
    reference, shifts = view.reference, list(view.shifts if shifts is None else shifts)
    table: BaselineTable = {}
    sources = []
    own = {model: {name: r.value for name, r in points.items()} for model, points in view.baselines.items()}
    if own:
        table.update({f"results:{k}": v for k, v in own.items()})
        sources.append(f"{len(own)} baseline models from results.jsonl")
    if extra is not None:
        user = load_baseline_table(extra)
        table.update({f"user:{k}": v for k, v in user.items()})
        sources.append(f"{len(user)} models from {extra}")
    if use_default and reference == DEFAULT_BASELINE_REFERENCE:
        table.update({f"{default}:{k}": v for k, v in load_baseline_table(packaged=default).items()})
        sources.append(PACKAGED_BASELINES[default].source)
    return fit_baselines(table, reference, shifts, source="; ".join(sources))


@dataclass(frozen=True)
class RobustnessRow:
    """Effective robustness of one (model, alpha) on one shift (or ``"avg"``); alpha is
    None for the chosen point of a ``merges:`` entry."""

    model: str
    alpha: float | None
    shift: str
    acc_x: float
    acc_shift: float
    predicted: float
    rho: float
    x_dataset: str


def robustness_rows(view: RecordView, fits: Mapping[str, BaselineFit]) -> list[RobustnessRow]:
    """rho for every (model, alpha) of the view's curves and every shift with a baseline,
    plus the average.

    The x accuracy is the point of the fit's ``x_dataset``: the reference set's value,
    or its class-restricted accuracy (metric ``restricted_metric(shift)`` on the
    reference set); a (model, alpha) without that record gets no rho on that shift. The
    ``"avg"`` row compares the mean accuracy over the average fit's shifts with that
    fit's prediction at the reference accuracy, and appears only when every one was measured.
    """
    rows = []
    for model, alpha in sorted((m, a) for m, by_alpha in view.curves.items() for a in by_alpha):
        rows += point_robustness(model, alpha, point_values(view.curves[model][alpha]), fits, view.reference)
    return rows


def merge_robustness_rows(view: RecordView, fits: Mapping[str, BaselineFit]) -> list[RobustnessRow]:
    """rho of the chosen point of each ``merges:`` entry (the view's ``merges``; alpha
    None in the rows), on every shift with a baseline and the average, as ``robustness_rows``."""
    return [row for model, points in view.merges.items()
            for row in point_robustness(model, None, point_values(points), fits, view.reference)]


def point_values(points: Mapping[str, Record]) -> dict[str, float]:
    """dataset (or class-restricted metric) -> value of a point's test-set records."""
    return {name: r.value for name, r in points.items() if r.role != "validation"}


def point_robustness(model: str, alpha: float | None, vals: Mapping[str, float], fits: Mapping[str, BaselineFit],
                     reference: str | None) -> list[RobustnessRow]:
    """The rows of one model point: rho on each shift whose fit's x the point has, and on
    the average when every one of its shifts was measured; none without ``reference``."""
    if reference not in vals:
        return []
    rows = []
    for shift, fit in fits.items():
        if shift != AVG and shift in vals and fit.x_dataset in vals:
            pred = float(fit.predict(vals[fit.x_dataset]))
            rows.append(RobustnessRow(model, alpha, shift, vals[fit.x_dataset], vals[shift], pred,
                                      vals[shift] - pred, fit.x_dataset))
    avg = fits.get(AVG)
    if avg is not None and all(s in vals for s in avg.parts):
        y = float(np.mean([vals[s] for s in avg.parts]))
        pred = float(avg.predict(vals[reference]))
        rows.append(RobustnessRow(model, alpha, AVG, vals[reference], y, pred, y - pred, reference))
    return rows


def select_alpha(
    records: Iterable[Record], model: str, metric: str = PRIMARY, fixed: float | None = None
) -> float:
    """The mixing coefficient alpha to use for ``model``.

    The rule: among the ``validation`` records of ``model`` for ``metric`` (by default
    each validation set's primary metric; never ``ece`` or ``temperature``), the alpha
    with the highest value wins; ties go to the alpha closest to 0.5 (the paper's
    default), then to the smaller alpha. Reference and shift test records are never
    read. With no validation records the answer is 0.5. ``fixed`` overrides the rule.

    Raises ValueError if ``model`` has no records at all, or ``fixed`` is outside [0, 1].

    Example:
        >>> select_alpha(read_records("runs/demo"), "finetuned")
        0.6
    """
    records = list(records)
    if not any(r.model == model for r in records):
        known = sorted({r.model for r in records})
        raise ValueError(f"no records for model {model!r} (models present: {known})")
    if fixed is not None:
        fixed = float(fixed)
        if not 0.0 <= fixed <= 1.0:
            raise ValueError(f"fixed alpha must be in [0, 1], got {fixed}")
        return fixed
    scores: dict[float, list[float]] = {}
    for r in select_metric(records, metric):
        if r.model == model and r.role == "validation" and r.alpha is not None:
            scores.setdefault(float(r.alpha), []).append(r.value)
    if not scores:
        return DEFAULT_ALPHA
    # Several validation sets for one alpha are averaged, so each alpha has one score.
    mean = {a: sum(v) / len(v) for a, v in scores.items()}
    return best_alpha(mean)

"""Effective robustness, exact confidence intervals, and alpha selection.

Effective robustness (Taori et al. 2020; WiSE-FT section 2) measures how far a
model's accuracy under a distribution shift lies above what its reference accuracy
predicts. The prediction ``beta`` is a line fitted in logit space over a set of
baseline models: ``logit(acc_shift) = slope * logit(acc_ref) + intercept``, so
``beta(acc_ref) = sigmoid(slope * logit(acc_ref) + intercept)`` and
``rho(f) = acc_shift(f) - beta(acc_ref(f))``.

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

from wiseft.results import Record

DEFAULT_ALPHA = 0.5
# Accuracies are clipped this far from 0 and 1 before taking logits, so a perfect or
# zero score still has a finite place on the axis (99.99% is the largest shown).
EPS = 1e-4
DEFAULT_BASELINE_REFERENCE = "imagenet"
DEFAULT_BASELINE_SOURCE = (
    "timm results/ (huggingface/pytorch-image-models @ aa4b5850), ImageNet-1k-only models"
)
# ImageNet shifts the packaged baseline covers; objectnet has none (timm publishes none).
DEFAULT_BASELINE_SHIFTS = ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a")

BaselineTable = dict[str, dict[str, float]]  # baseline model -> dataset -> accuracy in [0, 1]


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

    ``x_dataset`` names the accuracy on the x axis: the reference set, or its
    class-restricted version (``imagenet-r-clean``). When it is not the reference,
    ``x_from_reference`` maps reference accuracy to it with a second logit-linear fit
    over the same baseline models, for runs that did not measure it.
    """

    shift: str
    slope: float
    intercept: float
    x: tuple[float, ...]
    y: tuple[float, ...]
    x_dataset: str
    source: str = ""
    x_from_reference: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        """Number of baseline models in the fit."""
        return len(self.x)

    def predict(self, acc_x: float | np.ndarray) -> float | np.ndarray:
        """beta(acc_x): the shift accuracy the baseline predicts at x accuracy ``acc_x``."""
        return sigmoid(self.slope * logit(acc_x) + self.intercept)

    def x_of_reference(self, acc_ref: float | np.ndarray) -> float | np.ndarray:
        """The x-axis accuracy estimated from reference accuracy (identity if the same)."""
        if self.x_from_reference is None:
            return acc_ref
        a, b = self.x_from_reference
        return sigmoid(a * logit(acc_ref) + b)


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


def load_baseline_table(path: str | Path | None = None) -> BaselineTable:
    """Read a baseline CSV: a ``model`` column and one column per dataset, in percent.

    An ``img_size`` column, when present, is joined to the model name (timm lists some
    models at two resolutions). Empty cells are skipped. Without ``path``, the packaged
    ImageNet-1k baseline (see ``resources/baselines/README.md``) is read.
    """
    if path is None:
        text = resources.files("wiseft").joinpath("resources/baselines/imagenet_in1k.csv").read_text()
        name = "packaged imagenet_in1k.csv"
    else:
        text, name = Path(path).read_text(encoding="utf-8"), str(path)
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "model" not in rows[0]:
        raise ValueError(f"{name}: a baseline CSV needs a 'model' column and one column per dataset")
    table: BaselineTable = {}
    for i, row in enumerate(rows, 2):
        key = row["model"] + (f"@{row['img_size']}" if row.get("img_size") else "")
        accs = {}
        for col, cell in row.items():
            if col in ("model", "img_size") or cell in (None, ""):
                continue
            try:
                accs[col] = float(cell) / 100.0
            except ValueError:
                raise ValueError(f"{name}:{i}: column {col!r} is not a number: {cell!r}") from None
        table[key] = accs
    return table


def baseline_table_from_records(records: Iterable[Record], metric: str = "top1") -> BaselineTable:
    """Baseline models found in a results file: records with ``alpha`` None.

    Such records are other models evaluated on the same test sets (a user's own
    baselines); they are not part of any WiSE-FT curve.
    """
    table: BaselineTable = {}
    for r in records:
        if r.alpha is None and r.metric == metric and r.role != "validation":
            table.setdefault(r.model, {})[r.dataset] = r.value
    return table


def fit_baselines(
    table: Mapping[str, Mapping[str, float]], reference: str, shifts: Iterable[str], source: str = ""
) -> dict[str, BaselineFit]:
    """One fit per shift that at least 2 baseline models cover; other shifts are left out.

    The x axis for shift ``S`` is column ``S-clean`` when the table has it (the reference
    set restricted to the shift's classes), else ``reference``.
    """
    fits = {}
    for shift in shifts:
        x_col = f"{shift}-clean" if sum(f"{shift}-clean" in r for r in table.values()) >= 2 else reference
        pairs = [(r[x_col], r[shift]) for r in table.values() if x_col in r and shift in r]
        if len(pairs) < 2:
            continue
        fit = fit_baseline(*zip(*pairs), shift=shift, x_dataset=x_col, source=source)
        if x_col != reference:
            ref_pairs = [(r[reference], r[x_col]) for r in table.values() if reference in r and x_col in r]
            if len(ref_pairs) >= 2:
                m = fit_baseline(*zip(*ref_pairs))
                fit = BaselineFit(**{**fit.__dict__, "x_from_reference": (m.slope, m.intercept)})
        fits[shift] = fit
    return fits


def build_baselines(
    records: Iterable[Record],
    reference: str,
    shifts: Iterable[str],
    extra: str | Path | None = None,
    use_default: bool = True,
    metric: str = "top1",
) -> dict[str, BaselineFit]:
    """Fit the baseline for each shift from every source that applies.

    Sources, pooled: records with ``alpha`` None in ``records``; the CSV ``extra``;
    and, when ``use_default`` and ``reference`` is ``imagenet``, the packaged timm
    ImageNet-1k models (covering imagenet-v2, -sketch, -r and -a; not objectnet).
    """
    table: BaselineTable = {}
    sources = []
    own = baseline_table_from_records(records, metric)
    if own:
        table.update({f"results:{k}": v for k, v in own.items()})
        sources.append(f"{len(own)} baseline models from results.jsonl")
    if extra is not None:
        user = load_baseline_table(extra)
        table.update({f"user:{k}": v for k, v in user.items()})
        sources.append(f"{len(user)} models from {extra}")
    if use_default and reference == DEFAULT_BASELINE_REFERENCE:
        table.update({f"timm:{k}": v for k, v in load_baseline_table().items()})
        sources.append(DEFAULT_BASELINE_SOURCE)
    return fit_baselines(table, reference, list(shifts), source="; ".join(sources))


@dataclass(frozen=True)
class RobustnessRow:
    """Effective robustness of one (model, alpha) on one shift (or ``"avg"``)."""

    model: str
    alpha: float
    shift: str
    acc_x: float
    acc_shift: float
    predicted: float
    rho: float
    x_dataset: str
    x_estimated: bool


def robustness_rows(
    records: Iterable[Record], fits: Mapping[str, BaselineFit], reference: str, metric: str = "top1"
) -> list[RobustnessRow]:
    """rho for every (model, alpha) and every shift with a baseline, plus their average.

    The x accuracy is the record of the fit's ``x_dataset`` when the run measured it,
    else it is estimated from the reference accuracy (``x_estimated`` True). The
    ``"avg"`` row averages accuracies, predictions and rho over the shifts with a
    baseline, and only appears when every one of them was measured.
    """
    acc: dict[tuple[str, float], dict[str, float]] = {}
    for r in records:
        if r.alpha is not None and r.metric == metric and r.role != "validation":
            acc.setdefault((r.model, float(r.alpha)), {})[r.dataset] = r.value
    rows = []
    for (model, alpha), vals in sorted(acc.items()):
        if reference not in vals:
            continue
        these = []
        for shift, fit in fits.items():
            if shift not in vals:
                continue
            estimated = fit.x_dataset not in vals
            acc_x = float(fit.x_of_reference(vals[reference])) if estimated else vals[fit.x_dataset]
            pred = float(fit.predict(acc_x))
            these.append(
                RobustnessRow(model, alpha, shift, acc_x, vals[shift], pred, vals[shift] - pred, fit.x_dataset, estimated)
            )
        rows.extend(these)
        if these and len(these) == len(fits):
            mean = lambda xs: float(sum(xs) / len(xs))  # noqa: E731
            rows.append(
                RobustnessRow(
                    model, alpha, "avg", vals[reference], mean([t.acc_shift for t in these]),
                    mean([t.predicted for t in these]), mean([t.rho for t in these]),
                    reference, any(t.x_estimated for t in these),
                )
            )
    return rows




def select_alpha(
    records: Iterable[Record], model: str, metric: str = "top1", fixed: float | None = None
) -> float:
    """The mixing coefficient alpha to use for ``model``.

    The rule: among the ``validation`` records of ``model`` for ``metric``, the alpha
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
    for r in records:
        if r.model == model and r.role == "validation" and r.metric == metric and r.alpha is not None:
            scores.setdefault(float(r.alpha), []).append(r.value)
    if not scores:
        return DEFAULT_ALPHA
    # Several validation sets for one alpha are averaged, so each alpha has one score.
    mean = {a: sum(v) / len(v) for a, v in scores.items()}
    # Rounding keeps float noise (0.6 - 0.5 vs 0.5 - 0.4) from deciding ties.
    return min(mean, key=lambda a: (-round(mean[a], 12), round(abs(a - DEFAULT_ALPHA), 9), a))

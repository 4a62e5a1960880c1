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

from typing import Iterable

from wiseft.results import Record

DEFAULT_ALPHA = 0.5


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

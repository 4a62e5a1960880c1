"""What a report shows, worked out once from a run's records: the record view, the
selected alphas and how each was chosen, the baseline fits and effective robustness."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wiseft.config import ReportConfig
from wiseft.core import (
    DEFAULT_ALPHA,
    NOT_PRIMARY,
    PRIMARY,
    Record,
    RecordView,
    column_name,
    is_quick,
    output_ensemble_name,
    record_view,
)
from wiseft.report.robustness import (
    PACKAGED_BASELINES,
    BaselineFit,
    RobustnessRow,
    build_baselines,
    merge_robustness_rows,
    robustness_rows,
    select_alpha,
)


@dataclass(frozen=True)
class Analysis:
    """What a report shows, worked out from the records once."""

    run_dir: Path
    settings: ReportConfig
    view: RecordView  # the records under the settings' metric, grouped once for every stage
    models: list[str]  # the WiSE-FT curves: the view's models less the output ensembles
    ensembles: dict[str, str]  # model -> its output ensemble, where the run has one
    selected: dict[str, float]  # every model of the view -> its alpha
    notes: dict[str, str]  # every model of the view -> how its alpha was chosen
    fits: dict[str, BaselineFit]
    rho: list[RobustnessRow]
    merge_rho: list[RobustnessRow]  # rho of the chosen points of the run's merges: entries

    @property
    def quick(self) -> bool:
        """Whether the records come from ``wiseft run --quick`` (the report says so on top)."""
        return is_quick(self.view.records)


def check_settings(settings: ReportConfig) -> None:
    """A metric to tabulate and a packaged baseline set that exists, before anything is read."""
    if settings.metric in NOT_PRIMARY:
        raise ValueError(f"metric {settings.metric!r} is not an accuracy to tabulate or choose alpha on; "
                         "calibration has its own table (calibration.md)")
    if settings.default_baselines not in PACKAGED_BASELINES:
        raise ValueError(f"unknown default baselines {settings.default_baselines!r}; "
                         f"choose from {sorted(PACKAGED_BASELINES)}")


def analyse(run_dir: Path, records: list[Record], settings: ReportConfig) -> Analysis:
    """The view, models, selected alphas, baseline fits and rho of a run; ValueError
    when it has no records of ``settings.metric`` with an alpha, or no reference set."""
    metric = settings.metric
    view = record_view(records, metric)
    if metric != PRIMARY and not any(r.metric == metric for r in records):
        raise ValueError(f"{run_dir}: no records of metric {metric!r} "
                         f"(metrics present: {sorted({r.metric for r in records})})")
    if not view.models:
        raise ValueError(f"{run_dir}: no records with an alpha for metric {metric!r} "
                         f"(metrics present: {sorted({r.metric for r in records})})")
    if view.reference is None:
        raise ValueError("no records with role 'reference': cannot place models on the x axis")
    models = [m for m in view.models if not view.is_output_ensemble(m)]
    ensembles = {m: output_ensemble_name(m) for m in models if output_ensemble_name(m) in view.models}
    selected = {m: select_alpha(records, m, metric, fixed=settings.alpha) for m in view.models}
    notes = {m: selection_note(view, m, settings.alpha) for m in view.models}
    fits = build_baselines(view, extra=settings.baselines, use_default=settings.use_default_baselines,
                           default=settings.default_baselines)
    rho = robustness_rows(view, fits)
    merge_rho = merge_robustness_rows(view, fits) if view.merge_names else []
    return Analysis(run_dir, settings, view, models, ensembles, selected, notes, fits, rho, merge_rho)


def selection_note(view: RecordView, model: str, alpha: float | None) -> str:
    """How ``model``'s alpha was chosen: fixed (``alpha``), on validation, or the default."""
    if alpha is not None:
        grid = {float(r.alpha) for r in view.records if r.model == model and r.alpha is not None}
        return "fixed by the user" + ("" if float(alpha) in grid else "; not evaluated in this run")
    val = [r for r in view.chosen if r.model == model and r.role == "validation"]
    if not val:
        return f"default {DEFAULT_ALPHA} (no validation records)"
    sets = sorted({column_name(r.dataset, r.metric) for r in val})
    named = "" if view.metric == PRIMARY else f"{view.metric} "
    return f"highest {named}value on held-out validation ({', '.join(sets)}); ties toward 0.5"

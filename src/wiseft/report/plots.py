"""Scatter plots on logit axes and accuracy-vs-alpha curves, drawn from a run's
:class:`~wiseft.core.RecordView` (its records only).

Every function returns a matplotlib ``Figure`` built without pyplot, so it is never shown
and matplotlib's backend stays as the user set it; ``save_figure`` writes it as PNG and
SVG. Scatter plots draw in logit coordinates on linear axes and label the ticks in
percent, so accuracies from 0.01% to 99.99% have a place.
Each artist carries a label (``"zero-shot"``, ``"WiSE-FT finetuned"``, ``"baseline fit"``,
...) so callers and tests can find its data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from wiseft.core import PRIMARY, Record, RecordView, merge_of
from wiseft.io import write_with
from wiseft.report.robustness import AVG, BaselineFit, logit, record_interval, sigmoid
from wiseft.report.tables import finetuned_label, point_text

# Candidate tick positions (percent), roundest first; ``set_logit_ticks`` takes them in
# this order, skipping any that would crowd one already taken.
TICKS = (
    50, 10, 90, 1, 99, 99.9, 0.1, 20, 80, 30, 70, 5, 95, 40, 60, 2, 98, 99.5, 0.5, 99.99,
    99.8, 25, 75, 15, 85, 35, 65, 45, 55,
)


def set_logit_ticks(ax, axis: str, lo: float, hi: float, max_ticks: int = 9) -> None:
    """Percent tick labels on ``axis`` ("x" or "y") spanning logit range [lo, hi]."""
    gap = (hi - lo) / max_ticks
    chosen: list[float] = []
    for t in TICKS:
        z = logit(t / 100, eps=1e-6)
        if lo <= z <= hi and all(abs(z - logit(c / 100, eps=1e-6)) >= gap for c in chosen):
            chosen.append(t)
    chosen.sort()
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator([logit(t / 100, eps=1e-6) for t in chosen]))
    target.set_major_formatter(FixedFormatter([f"{t:g}%" for t in chosen]))
    target.set_minor_locator(NullLocator())


def _point(vals: Mapping[str, Record], x_ds: str, y_ds: str | list[str]):
    """(x, y, xerr interval, yerr interval) in fractions, or None when a value is missing."""
    if x_ds not in vals:
        return None
    if isinstance(y_ds, list):  # the average over shifts: no exact interval exists
        if not y_ds or any(d not in vals for d in y_ds):
            return None
        return vals[x_ds].value, float(np.mean([vals[d].value for d in y_ds])), None, None
    if y_ds not in vals:
        return None
    return vals[x_ds].value, vals[y_ds].value, record_interval(vals[x_ds]), record_interval(vals[y_ds])


def _errorbar(ax, pts, **kw):
    """Points in logit coordinates with asymmetric Clopper-Pearson error bars."""
    x = logit(np.array([p[0] for p in pts]))
    y = logit(np.array([p[1] for p in pts]))

    def err(centres, intervals):
        if not any(intervals):
            return None
        rows = [[c - logit(iv[0]), logit(iv[1]) - c] if iv else [0.0, 0.0] for c, iv in zip(centres, intervals)]
        return np.clip(np.array(rows).T, 0, None)

    xerr, yerr = err(x, [p[2] for p in pts]), err(y, [p[3] for p in pts])
    return ax.errorbar(x, y, xerr=xerr, yerr=yerr, elinewidth=0.8, capsize=0, **kw)


def plot_scatter(
    view: RecordView,
    shift: str,
    fits: Mapping[str, BaselineFit] | None = None,
    selected: Mapping[str, float] | None = None,
) -> Figure:
    """Reference vs shift accuracy on logit axes: zero-shot, fine-tuned, the WiSE-FT curve
    over alpha for each model (and the output-space ensemble's, dashed, where the run has
    one), baseline models and fit, and 95% Clopper-Pearson bars.

    The x axis is the fit's: for ImageNet-R, -A and ObjectNet the reference accuracy on
    the shift's classes (when the run measured it; otherwise the reference accuracy, with
    no baseline drawn). ``shift`` may be ``"avg"``: the mean over the view's shifts (no
    error bars; the baseline is the fit on the baseline models' averaged accuracies).
    ``selected`` marks the chosen alpha of each model; each ``merges:`` entry's chosen
    point is a labelled marker of its own.
    """
    fits = dict(fits or {})
    reference, data = view.reference, view.curves
    shifts = sorted(view.shifts)  # the average is taken in name order
    fig = Figure(figsize=(5.5, 4.5), dpi=120)
    ax = fig.subplots()
    # x axis: the fit's own x (e.g. top1_on_imagenet-r_classes) when the run measured it, else the reference.
    fit = fits.get(shift)
    present = {d for m in data.values() for v in m.values() for d in v}
    x_ds = fit.x_dataset if fit is not None and fit.x_dataset in present else reference
    y_ds: str | list[str] = shifts if shift == AVG else shift
    xs, ys = _draw_curves(ax, view, x_ds, y_ds, selected)
    if view.merges:  # one labelled point per merges: entry, at its chosen setting
        mx, my = _draw_merges(ax, view.merges, x_ds, y_ds, len(data))
        xs, ys = xs + mx, ys + my
    if not xs:
        raise ValueError(f"no (model, alpha) has both {x_ds!r} and {y_ds!r} records to plot")
    baseline_label = _set_scatter_limits(ax, xs, ys, fit, x_ds)
    ax.set_xlabel(f"{reference} accuracy" + (f" on {shift}'s classes" if x_ds != reference else "")
                  + f" ({_metric_of(data, x_ds) if x_ds == reference else 'top1'})")
    ax.set_ylabel(f"{'average over shifts' if shift == AVG else shift} accuracy"
                  + ("" if shift == AVG else f" ({_metric_of(data, shift)})"))
    ax.set_title(f"{'Average over ' + str(len(shifts)) + ' shifts' if shift == AVG else shift}" + baseline_label,
                 fontsize=10)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _draw_curves(ax, view: RecordView, x_ds: str, y_ds: str | list[str],
                 selected: Mapping[str, float] | None) -> tuple[list[float], list[float]]:
    """Each model's curve over alpha (an output-space ensemble's dashed), its end points
    and its alpha 0.5 and selected alpha; returns the x and y values drawn (fractions)."""
    xs: list[float] = []
    ys: list[float] = []
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (model, by_alpha) in enumerate(sorted(view.curves.items())):
        pts = [(a, _point(by_alpha[a], x_ds, y_ds)) for a in sorted(by_alpha)]
        pts = [(a, p) for a, p in pts if p is not None]
        if not pts:
            continue
        c = colors[(i + 2) % len(colors)]
        curve = [p for _, p in pts]
        if view.is_output_ensemble(model):  # same end points as its WiSE-FT curve
            _errorbar(ax, curve, fmt="--^", ms=3, color=c, label=model, zorder=3)
        else:
            _errorbar(ax, curve, fmt="-o", ms=3, color=c, label=f"WiSE-FT {model}", zorder=3)
            _mark_points(ax, pts, model, c, colors[0] if i == 0 else None, (selected or {}).get(model))
        xs += [p[0] for p in curve]
        ys += [p[1] for p in curve]
    return xs, ys


MERGE_MARKERS = ("P", "X", "v", "^", "<", ">", "p", "h", "8")


def _draw_merges(ax, merges: dict[str, dict[str, Record]], x_ds: str, y_ds: str | list[str],
                 offset: int) -> tuple[list[float], list[float]]:
    """Each merge's chosen point, a marker of its own labelled with its name, with 95%
    Clopper-Pearson bars; returns the x and y values drawn. Colours continue the cycle
    after the ``offset`` curves."""
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    xs: list[float] = []
    ys: list[float] = []
    for j, (label, vals) in enumerate(merges.items()):
        p = _point(vals, x_ds, y_ds)
        if p is None:
            continue
        _errorbar(ax, [p], fmt=MERGE_MARKERS[j % len(MERGE_MARKERS)], ms=8, mec="k", mew=0.6,
                  color=colors[(offset + 2 + j) % len(colors)], label=f"merge: {label}", zorder=6)
        xs.append(p[0])
        ys.append(p[1])
    return xs, ys


def _mark_points(ax, pts: list, model: str, color: str, zeroshot_color: str | None, selected: float | None) -> None:
    """Zero-shot (drawn for the first model only: ``zeroshot_color``), fine-tuned, alpha 0.5
    and the selected alpha on one model's curve."""
    for a, p in pts:
        if a == 0.0 and zeroshot_color is not None:
            _errorbar(ax, [p], fmt="*", ms=13, color=zeroshot_color, label="zero-shot", zorder=4)
        if a == 1.0:
            _errorbar(ax, [p], fmt="s", ms=7, color=color, mec="k", label=finetuned_label(model), zorder=4)
        if a == 0.5 and a != selected:
            ax.plot(logit(p[0]), logit(p[1]), "D", ms=6, mfc="none", mec=color, label=f"alpha=0.5 {model}", zorder=5)
        if selected is not None and a == selected:
            ax.plot(logit(p[0]), logit(p[1]), "D", ms=8, mfc="none", mec="k", label=f"selected alpha={a:g} {model}",
                    zorder=5)


def _set_scatter_limits(ax, xs: list[float], ys: list[float], fit: BaselineFit | None, x_ds: str) -> str:
    """Draw the baseline and set logit-axis limits and percent ticks that hold the models
    and the baseline line under them; returns the title's baseline suffix."""
    lx = logit(np.array(xs))
    lo, hi = lx.min(), lx.max()
    pad = max(0.35, 0.15 * (hi - lo))
    grid = np.linspace(lo - pad, hi + pad, 200)
    baseline_label, line = _draw_baseline(ax, fit, x_ds, grid)
    ax.set_xlim(grid[0], grid[-1])
    under = line[(grid >= lo) & (grid <= hi)] if line.size else line
    ly = np.concatenate([logit(np.array(ys)), under])
    ylo, yhi = ly.min(), ly.max()
    ypad = max(0.35, 0.15 * (yhi - ylo))
    ax.set_ylim(ylo - ypad, yhi + ypad)
    set_logit_ticks(ax, "x", *ax.get_xlim())
    set_logit_ticks(ax, "y", *ax.get_ylim())
    return baseline_label


def _metric_of(data, dataset: str) -> str:
    """The metric a dataset's points show (its primary metric, or the one asked for)."""
    return next((v[dataset].metric for m in data.values() for v in m.values() if dataset in v), "top1")


def _draw_baseline(ax, fit: BaselineFit | None, x_ds: str, grid) -> tuple[str, np.ndarray]:
    """Draw the baseline models and fit line; returns a title suffix and the line's y."""
    if fit is None:
        return " (no baseline)", np.array([])
    if fit.x_dataset != x_ds:  # the run did not measure the fit's x (class-restricted accuracy)
        return f" (no baseline: the run has no {fit.x_dataset} records)", np.array([])
    bx, by = np.array(fit.x), np.array(fit.y)
    keep = (logit(bx) >= grid[0]) & (logit(bx) <= grid[-1])
    ax.plot(logit(bx[keep]), logit(by[keep]), ".", ms=2, color="0.6", alpha=0.5, label=f"baseline models (n={fit.n})", zorder=1)
    line = logit(fit.predict(sigmoid(grid)))
    ax.plot(grid, line, "--", color="0.3", lw=1.2, label="baseline fit", zorder=2)
    return f" (baseline slope {fit.slope:.2f})", line


def plot_alpha_curves(view: RecordView, model: str, selected: float | None = None,
                      ensemble: str | None = None) -> Figure:
    """Accuracy (percent) vs alpha for the reference, each shift, their average and the
    validation set (dashed), with 95% Clopper-Pearson bands; alpha 0.5 and the
    selected alpha are marked. ``ensemble`` names the output-space ensemble of ``model``,
    whose reference and average-over-shifts curves are drawn dotted for comparison."""
    by_alpha = view.curves.get(model)
    if not by_alpha:
        raise ValueError(f"no records with an alpha for model {model!r}")
    roles = {r.dataset: r.role for v in by_alpha.values() for r in v.values()}
    order = {"reference": 0, "shift": 1, "validation": 2}
    datasets = sorted(roles, key=lambda d: (order[roles[d]], d))
    alphas = sorted(by_alpha)
    fig = Figure(figsize=(6, 4.2), dpi=120)
    ax = fig.subplots()
    for d in datasets:
        pts = [(a, by_alpha[a][d]) for a in alphas if d in by_alpha[a]]
        a = np.array([p[0] for p in pts])
        y = np.array([p[1].value for p in pts]) * 100
        style = {"reference": "-o", "shift": "-", "validation": "--"}[roles[d]]
        (line,) = ax.plot(a, y, style, ms=3, lw=2 if roles[d] == "reference" else 1.2, label=f"{d} ({roles[d]})")
        ci = [record_interval(p[1]) for p in pts]
        if all(ci):
            ax.fill_between(a, [c[0] * 100 for c in ci], [c[1] * 100 for c in ci], color=line.get_color(), alpha=0.15, lw=0)
    shifts = [d for d in datasets if roles[d] == "shift"]
    avg = [(a, np.mean([by_alpha[a][d].value for d in shifts])) for a in alphas if shifts and all(d in by_alpha[a] for d in shifts)]
    if avg:
        ax.plot([p[0] for p in avg], [p[1] * 100 for p in avg], "-", color="k", lw=2, label="avg shifts")
    ens = view.curves.get(ensemble) if ensemble else None
    if ens:
        ref = next((d for d in datasets if roles[d] == "reference"), None)
        e_alphas = sorted(ens)
        if ref is not None:
            pts = [(a, ens[a][ref].value) for a in e_alphas if ref in ens[a]]
            ax.plot([p[0] for p in pts], [p[1] * 100 for p in pts], ":", color="C0", lw=2,
                    label=f"{ref} (output ensemble)")
        e_avg = [(a, np.mean([ens[a][d].value for d in shifts])) for a in e_alphas
                 if shifts and all(d in ens[a] for d in shifts)]
        if e_avg:
            ax.plot([p[0] for p in e_avg], [p[1] * 100 for p in e_avg], ":", color="k", lw=2,
                    label="avg shifts (output ensemble)")
    ax.axvline(0.5, color="0.5", lw=0.8, ls=":", label="alpha=0.5")
    if selected is not None:
        ax.axvline(selected, color="k", lw=1, ls="-.", label=f"selected alpha={selected:g}")
    ax.set_xlabel("alpha (0 = zero-shot, 1 = fine-tuned)")
    ax.set_ylabel("accuracy (%)" if view.metric == PRIMARY else f"accuracy (%, {view.metric})")
    ax.set_title(f"Accuracy vs alpha: {model}", fontsize=10)
    ax.set_xlim(min(alphas), max(alphas))
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def plot_search(view: RecordView, name: str) -> Figure:
    """The validation curve of a ``merges:`` entry: each grid point's validation value
    (percent; the mean over validation sets, with its 95% Clopper-Pearson band when there
    is one set), the chosen point marked. The x axis is the searched parameter when one
    number is searched, else the grid points in order, labelled."""
    points = view.searches.get(name)
    if not points:
        raise ValueError(f"no search records for merge {name!r}")
    order = sorted(points)
    first = {i: merge_of(points[i][0]) for i in order}
    keys = list(first[order[0]]["point"])
    numeric = len(keys) == 1 and all(isinstance(first[i]["point"][keys[0]], (int, float)) for i in order)
    x = np.array([float(first[i]["point"][keys[0]]) if numeric else float(i) for i in order])
    y = np.array([np.mean([r.value for r in points[i]]) * 100 for i in order])
    fig = Figure(figsize=(6, 4.2), dpi=120)
    ax = fig.subplots()
    (line,) = ax.plot(x, y, "-o", ms=4, label=f"{next(iter(points.values()))[0].dataset} (validation)")
    ci = [record_interval(points[i][0]) if len(points[i]) == 1 else None for i in order]
    if all(ci):
        ax.fill_between(x, [c[0] * 100 for c in ci], [c[1] * 100 for c in ci], color=line.get_color(), alpha=0.15, lw=0)
    best = next(k for k, i in enumerate(order) if first[i]["chosen"])
    ax.plot(x[best], y[best], "D", ms=9, mfc="none", mec="k", label="chosen", zorder=5)
    if not numeric:
        ax.set_xticks(x, [point_text(first[i]["point"]) for i in order], rotation=30, ha="right", fontsize=7)
    ax.set_xlabel(keys[0] if numeric else "grid point")
    ax.set_ylabel("validation accuracy (%)" if view.metric == PRIMARY else f"validation accuracy (%, {view.metric})")
    ax.set_title(f"Search on validation: {name} ({first[order[0]]['method']})", fontsize=10)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plotted_data(fig: Figure) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Label -> (x, y) of every labelled line and error-bar series in a figure's first axes.

    Scatter plots hold logit coordinates; alpha curves hold alpha and percent.
    """
    ax = fig.axes[0]
    out = {ln.get_label(): ln.get_data() for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    for c in ax.containers:
        if c.get_label() and not c.get_label().startswith("_") and hasattr(c, "lines"):
            out[c.get_label()] = c.lines[0].get_data()
    return {k: (np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for k, (x, y) in out.items()}


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    # through the one I/O layer (temporary file, fsync, rename): the format is named, as the
    # temporary file's suffix does not say it
    write_with(paths[0], lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    write_with(paths[1], lambda tmp: fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None}))
    return paths

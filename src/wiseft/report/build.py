"""`wiseft report RUN_DIR`: tables, plots and one offline HTML page from results.jsonl alone.

Writes into ``RUN_DIR/report/`` (or ``out_dir``):

- ``index.html``: everything below on one page, PNGs embedded (opens offline)
- ``scatter_<shift>.png|svg`` and ``scatter_avg.png|svg``: reference vs shift, logit axes
- ``alpha_<model>.png|svg``: accuracy vs alpha
- ``table.md|csv|tex``: Table-1-style accuracies (zero-shot, fine-tuned, alpha 0.5,
  selected alpha, the output-space ensemble where the run has one, per-column oracle alpha)
- ``robustness.md|csv``: effective robustness rho for every model, alpha and shift
- ``points.csv``: every accuracy with its 95% Clopper-Pearson interval
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from wiseft.config import ReportConfig
from wiseft.core import (
    DEFAULT_ALPHA,
    NOT_PRIMARY,
    PRIMARY,
    QUICK_BANNER,
    SEARCH,
    Record,
    alpha_rank,
    column_name,
    is_quick,
    merge_names,
    merge_of,
    merge_stage,
    output_ensemble_name,
    select_metric,
)
from wiseft.io import read_records
from wiseft.report.plots import (
    finetuned_label,
    is_output_ensemble,
    plot_alpha_curves,
    plot_scatter,
    plot_search,
    point_text,
    save_figure,
)
from wiseft.report.robustness import (
    AVG,
    PACKAGED_BASELINES,
    BaselineFit,
    RobustnessRow,
    build_baselines,
    merge_robustness_rows,
    record_interval,
    robustness_rows,
    select_alpha,
)

Cell = tuple[float | None, float | None]  # (value as a fraction, alpha it was taken at)


@dataclass
class Table:
    """One model's Table-1-style block: column names and labelled rows of cells."""

    model: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]


def _write(path: Path, text: str) -> None:
    """Write text atomically, through the I/O layer (temporary, fsync, rename)."""
    from wiseft.io import atomic_write

    atomic_write(path, text)


def _datasets(records: list[Record], role: str) -> list[str]:
    return list(dict.fromkeys(r.dataset for r in records if r.role == role and r.alpha is not None))


def reference_dataset(records: Iterable[Record]) -> str:
    """The run's reference test set: the first ``reference`` dataset not named ``*-clean``."""
    names = _datasets(list(records), "reference")
    main = [d for d in names if not d.endswith("-clean")] or names
    if not main:
        raise ValueError("no records with role 'reference': cannot place models on the x axis")
    return main[0]


AVG_SHIFTS, AVG_REF_SHIFTS, AVG_RHO = "avg shifts", "avg ref., shifts", "avg rho"


def build_tables(
    records: Iterable[Record], selected: dict[str, float], rho: list[RobustnessRow], metric: str = PRIMARY
) -> list[Table]:
    """Per model: zero-shot, fine-tuned, WiSE-FT at 0.5, at the selected alpha, the
    output-space ensemble of the same end points at 0.5 and at its selected alpha (when
    ``selected`` has ``output_ensemble_name(model)``), and the per-column best alpha (an
    oracle: it looks at the test sets, so it is not a method).

    Columns: the reference and each shift under their primary metric (or ``metric``;
    named in the header when not top1), ``avg shifts`` (their mean), ``avg ref., shifts``
    (the mean of the reference value and ``avg shifts``, as in the paper's Table 1) and
    ``avg rho`` (effective robustness on the average over shifts)."""
    records = [r for r in select_metric(records, metric) if r.alpha is not None and r.role != "validation"]
    reference = reference_dataset(records)
    shifts = _datasets(records, "shift")
    names = {r.dataset: column_name(r.dataset, r.metric) for r in records}
    columns = ([names[reference], *(names[s] for s in shifts)] + ([AVG_SHIFTS, AVG_REF_SHIFTS] if shifts else [])
               + ([AVG_RHO] if rho else []))
    values = {m: _table_values(records, m, names, [reference, *shifts], rho) for m in selected}
    tables = []
    for model in selected:  # in the run's order: the main fine-tune, then its variants
        if any(output_ensemble_name(m) == model for m in selected):
            continue  # an output ensemble: rows in its fine-tune's block
        tables.append(Table(model, columns, _table_rows(model, selected, columns, values)))
    return tables


Values = dict[float, dict[str, float]]  # alpha -> column -> value


def _table_values(records: list[Record], model: str, names: dict[str, str], datasets: list[str],
                  rho: list[RobustnessRow]) -> Values:
    """``model``'s value in every column at every alpha; ``names``: dataset -> column,
    ``datasets``: the reference, then each shift."""
    reference, shifts = names[datasets[0]], [names[d] for d in datasets[1:]]
    vals: Values = {}
    for r in records:
        if r.model == model:
            vals.setdefault(float(r.alpha), {})[names[r.dataset]] = r.value
    for v in vals.values():
        if shifts and all(s in v for s in shifts):
            v[AVG_SHIFTS] = sum(v[s] for s in shifts) / len(shifts)
            if reference in v:
                v[AVG_REF_SHIFTS] = (v[reference] + v[AVG_SHIFTS]) / 2
    for row in rho:
        if row.model == model and row.shift == AVG:
            vals.setdefault(row.alpha, {})[AVG_RHO] = row.rho
    return vals


def _table_rows(model: str, selected: dict[str, float], columns: list[str],
                values: dict[str, Values]) -> list[tuple[str, list[Cell]]]:
    """The labelled rows of ``model``'s block (see ``build_tables``)."""
    vals = values[model]

    def at(v: Values, alpha: float) -> list[Cell]:
        return [(v.get(alpha, {}).get(c), alpha) for c in columns]

    def oracle(col: str) -> Cell:
        have = [(v[col], a) for a, v in vals.items() if col in v]
        return min(have, key=lambda t: alpha_rank(*t)) if have else (None, None)  # select_alpha's rule

    sel = selected[model]
    rows = [
        ("zero-shot (alpha=0)", at(vals, 0.0)),
        (f"{finetuned_label(model)} (alpha=1)", at(vals, 1.0)),
        ("WiSE-FT, alpha=0.5", at(vals, 0.5)),
        (f"WiSE-FT, selected alpha={sel:g}", at(vals, sel)),
    ]
    ens = output_ensemble_name(model)
    if ens in selected:
        rows += [("output-space ensemble, alpha=0.5", at(values[ens], 0.5)),
                 (f"output-space ensemble, selected alpha={selected[ens]:g}", at(values[ens], selected[ens]))]
    rows.append(("WiSE-FT, best alpha per column (oracle)", [oracle(c) for c in columns]))
    return rows


def _fmt(cell: Cell, with_alpha: bool, col: str) -> str:
    value, alpha = cell
    if value is None:
        return ""
    text = f"{100 * value:+.2f}" if col == AVG_RHO else f"{100 * value:.2f}"
    return f"{text} (alpha={alpha:g})" if with_alpha else text


def table_markdown(tables: list[Table]) -> str:
    """Table 1 in Markdown, one block per model; accuracies and rho in percent."""
    out = []
    for t in tables:
        out += [f"### {t.model}", "", "| | " + " | ".join(t.columns) + " |", "|---" * (len(t.columns) + 1) + "|"]
        for label, cells in t.rows:
            oracle = "oracle" in label
            out.append(f"| {label} | " + " | ".join(_fmt(c, oracle, col) for c, col in zip(cells, t.columns)) + " |")
        out.append("")
    return "\n".join(out)


def table_csv(tables: list[Table]) -> str:
    """Table 1 as CSV: ``model,row,alpha`` then one column per dataset (percent); the
    oracle row is followed by an ``oracle alpha`` row holding each column's alpha."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "row", "alpha", *tables[0].columns] if tables else ["model", "row", "alpha"])
    for t in tables:
        for label, cells in t.rows:
            oracle = "oracle" in label
            alpha = "" if oracle else f"{cells[0][1]:g}"
            w.writerow([t.model, label, alpha, *("" if v is None else f"{100 * v:.2f}" for v, _ in cells)])
            if oracle:
                w.writerow([t.model, "oracle alpha", "", *("" if a is None else f"{a:g}" for _, a in cells)])
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        s = s.replace(a, b)
    return s.replace("alpha", r"$\alpha$")


def table_latex(tables: list[Table]) -> str:
    """Table 1 as LaTeX tabulars (booktabs), one per model."""
    out = []
    for t in tables:
        out += [
            r"\begin{tabular}{l" + "r" * len(t.columns) + "}",
            r"\toprule",
            " & ".join([_tex(t.model), *map(_tex, t.columns)]) + r" \\",
            r"\midrule",
        ]
        for label, cells in t.rows:
            oracle = "oracle" in label
            if oracle:
                out.append(r"\midrule")
            out.append(" & ".join([_tex(label), *(_tex(_fmt(c, oracle, col)) for c, col in zip(cells, t.columns))]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def robustness_table(rho: list[RobustnessRow]) -> tuple[list[str], list[list[str]]]:
    """rho in percentage points: one row per (model, alpha), one column per shift and avg."""
    shifts = list(dict.fromkeys(r.shift for r in rho if r.shift != AVG)) + ([AVG] if any(r.shift == AVG for r in rho) else [])
    by: dict[tuple[str, float], dict[str, float]] = {}
    for r in rho:
        by.setdefault((r.model, r.alpha), {})[r.shift] = r.rho
    rows = [[m, f"{a:g}", *(f"{100 * v[s]:+.2f}" if s in v else "" for s in shifts)] for (m, a), v in sorted(by.items())]
    return ["model", "alpha", *shifts], rows


def calibration_table(records: Iterable[Record]) -> tuple[list[str], list[list[str]]]:
    """Expected calibration error (percent) of every (model, alpha) on every set, under the
    temperature fitted for that alpha on held-out validation: how calibration holds under shift."""
    order = {"reference": 0, "shift": 1, "validation": 2}
    ece = [r for r in records if r.metric == "ece" and r.alpha is not None]
    sets = sorted(dict.fromkeys(r.dataset for r in ece), key=lambda d: order[next(r.role for r in ece if r.dataset == d)])
    temps = {(r.model, r.alpha): r.value for r in records if r.metric == "temperature" and r.alpha is not None}
    by: dict[tuple[str, float], dict[str, float]] = {}
    for r in ece:
        by.setdefault((r.model, r.alpha), {})[r.dataset] = r.value
    rows = [[m, f"{a:g}", f"{temps[(m, a)]:.3f}" if (m, a) in temps else "",
             *(f"{100 * v[d]:.2f}" if d in v else "" for d in sets)] for (m, a), v in sorted(by.items())]
    return ["model", "alpha", "temperature", *sets], rows


def points_csv(records: list[Record]) -> str:
    """Every record with its 95% Clopper-Pearson interval (empty without counts)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "alpha", "dataset", "role", "metric", "value", "correct", "total", "ci_low", "ci_high"])
    for r in records:
        ci = record_interval(r)
        w.writerow([r.model, "" if r.alpha is None else f"{r.alpha:g}", r.dataset, r.role, r.metric, f"{r.value:.6f}",
                    "" if r.correct is None else r.correct, "" if r.total is None else r.total,
                    "" if ci is None else f"{ci[0]:.6f}", "" if ci is None else f"{ci[1]:.6f}"])
    return buf.getvalue()


def _selection_note(records: list[Record], model: str, alpha: float | None, metric: str) -> str:
    if alpha is not None:
        grid = {float(r.alpha) for r in records if r.model == model and r.alpha is not None}
        return "fixed by the user" + ("" if float(alpha) in grid else "; not evaluated in this run")
    val = [r for r in select_metric(records, metric) if r.model == model and r.role == "validation"]
    if not val:
        return f"default {DEFAULT_ALPHA} (no validation records)"
    sets = sorted({f"{r.dataset}" if r.metric == "top1" else f"{r.dataset} ({r.metric})" for r in val})
    named = "" if metric == PRIMARY else f"{metric} "
    return f"highest {named}value on held-out validation ({', '.join(sets)}); ties toward 0.5"


def build_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 settings: ReportConfig | None = None) -> Path:
    """Build the report of a run from its results.jsonl alone, into ``out_dir`` (default
    ``RUN_DIR/report``); returns the index.html path. ``settings`` (``alpha``, ``metric``,
    ``baselines``, ``use_default_baselines``, ``default_baselines``) say what it shows;
    see ``config.ReportConfig``.

    Example:
        >>> build_report("runs/demo")
        PosixPath('runs/demo/report/index.html')
        >>> build_report("runs/demo", settings=ReportConfig(alpha=0.4))
        PosixPath('runs/demo/report/index.html')
    """
    settings = settings if settings is not None else ReportConfig()
    _check_settings(settings)
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    found = _analyse(run_dir, records, settings)
    figures = _write_figures(found, out, settings.metric)
    tables = build_tables(records, found.selected, found.rho, settings.metric)
    banner = f"**{QUICK_BANNER}**\n\n" if is_quick(records) else ""
    calibration = _write_tables(out, found, tables, banner, settings.use_default_baselines)
    notes = {m: _selection_note(records, m, settings.alpha, settings.metric) for m in found.names}
    page = _html(run_dir, found, notes, tables, figures, out)
    if found.merges:
        page = page.replace("<h2>Effective robustness</h2>", _write_comparison(out, found, settings.metric, banner)
                            + "<h2>Effective robustness</h2>", 1)
    _write(out / "index.html", _add_calibration_and_banner(page, calibration, banner))
    return out / "index.html"


def _check_settings(settings: ReportConfig) -> None:
    """A metric to tabulate and a packaged baseline set that exists, before anything is read."""
    if settings.metric in NOT_PRIMARY:
        raise ValueError(f"metric {settings.metric!r} is not an accuracy to tabulate or choose alpha on; "
                         "calibration has its own table (calibration.md)")
    if settings.default_baselines not in PACKAGED_BASELINES:
        raise ValueError(f"unknown default baselines {settings.default_baselines!r}; "
                         f"choose from {sorted(PACKAGED_BASELINES)}")


@dataclass(frozen=True)
class _Analysis:
    """What a report shows, worked out from the records once."""

    records: list[Record]
    reference: str
    shifts: list[str]
    names: list[str]  # every model with an alpha, in the run's order (output ensembles included)
    models: list[str]  # the WiSE-FT curves: ``names`` less the output ensembles
    ensembles: dict[str, str]  # model -> its output ensemble, where the run has one
    selected: dict[str, float]
    fits: dict[str, BaselineFit]
    rho: list[RobustnessRow]
    merges: list[str] = field(default_factory=list)  # the labels of the run's merges: entries
    merge_rho: list[RobustnessRow] = field(default_factory=list)  # rho of their chosen points


def _analyse(run_dir: Path, records: list[Record], settings: ReportConfig) -> _Analysis:
    """The datasets, models, selected alphas, baseline fits and rho of a run; ValueError
    when it has no records of ``settings.metric`` with an alpha."""
    metric = settings.metric
    chosen = select_metric(records, metric)
    if metric != PRIMARY and not any(r.metric == metric for r in records):
        raise ValueError(f"{run_dir}: no records of metric {metric!r} "
                         f"(metrics present: {sorted({r.metric for r in records})})")
    if not any(r.alpha is not None for r in chosen):
        raise ValueError(f"{run_dir}: no records with an alpha for metric {metric!r} "
                         f"(metrics present: {sorted({r.metric for r in records})})")
    reference = reference_dataset(chosen)
    shifts = _datasets(chosen, "shift")
    names = list(dict.fromkeys(r.model for r in chosen if r.alpha is not None))
    models = [m for m in names if not is_output_ensemble(records, m)]
    ensembles = {m: output_ensemble_name(m) for m in models if output_ensemble_name(m) in names}
    selected = {m: select_alpha(records, m, metric, fixed=settings.alpha) for m in names}
    fits = build_baselines(records, reference, shifts, extra=settings.baselines,
                           use_default=settings.use_default_baselines, metric=metric,
                           default=settings.default_baselines)
    rho = robustness_rows(records, fits, reference, metric)
    merges = merge_names(records)
    merge_rho = merge_robustness_rows(records, fits, reference, metric) if merges else []
    return _Analysis(records, reference, shifts, names, models, ensembles, selected, fits, rho, merges, merge_rho)


def _write_figures(found: _Analysis, out: Path, metric: str) -> list[tuple[str, str]]:
    """The scatter plots (each shift and their average) and the alpha curves; (stem, caption) of each."""
    figures: list[tuple[str, str]] = []
    for shift in [*found.shifts, AVG] if found.shifts else []:
        stem = f"scatter_{_slug(shift)}"
        save_figure(plot_scatter(found.records, shift, found.reference, found.fits, found.selected, metric),
                    out, stem)
        figures.append((stem, f"{found.reference} vs {shift}"))
    for m in found.models:
        stem = f"alpha_{_slug(m)}"
        save_figure(plot_alpha_curves(found.records, m, found.selected[m], metric, ensemble=found.ensembles.get(m)),
                    out, stem)
        figures.append((stem, f"accuracy vs alpha, {m}"))
    for name in found.merges:
        if sum(1 for r in found.records if r.model == name and merge_stage(r) == SEARCH
               and r.provenance.get("primary")) > 1:  # a curve needs more than one point
            stem = f"search_{_slug(name)}"
            save_figure(plot_search(found.records, name, metric), out, stem)
            figures.append((stem, f"search on validation, {name}"))
    return figures


def _write_tables(out: Path, found: _Analysis, tables: list[Table], banner: str,
                  use_default_baselines: bool) -> tuple[list[str], list[list[str]]]:
    """Write Table 1 (md, csv, tex), robustness (csv, md), points.csv and, where the run
    has ECE records, calibration.md; returns the calibration table (no rows: none)."""
    _write(out / "table.md", banner + table_markdown(tables))
    _write(out / "table.csv", table_csv(tables))
    _write(out / "table.tex", table_latex(tables))
    header, rows = robustness_table(found.rho)
    _write(out / "robustness.csv", _csv([header, *rows]))
    _write(out / "robustness.md", banner + (_markdown(header, rows) if rows else
                                            no_baseline_note(found.reference, found.shifts, use_default_baselines)))
    _write(out / "points.csv", points_csv(found.records))
    calibration = calibration_table(found.records)
    if calibration[1]:
        _write(out / "calibration.md", banner + "Expected calibration error (%, 15 bins) with each alpha's temperature "
               "fitted on held-out validation.\n\n" + _markdown(*calibration))
    return calibration


def _add_calibration_and_banner(page: str, calibration: tuple[list[str], list[list[str]]], banner: str) -> str:
    """The page with the calibration table before the plots (when it has rows) and the
    quick-run banner at the top (when ``banner``)."""
    if calibration[1]:
        page = page.replace("<h2>Plots</h2>", "<h2>Calibration</h2><p>Expected calibration error (percent, 15 "
                            "bins) of softmax(logits / T), with T fitted per alpha on held-out validation "
                            "(temperature scaling).</p>" + _html_table(*calibration) + "<h2>Plots</h2>", 1)
    if banner:
        page = page.replace("<body>", f"<body><p style='background:#fde;padding:8px'><b>{html.escape(QUICK_BANNER)}"
                            "</b></p>", 1)
    return page


def no_baseline_note(reference: str, shifts: list[str], use_default: bool) -> str:
    """What robustness.md says when no baseline models apply to the run's datasets."""
    if not shifts:
        why = "the run has no shift test sets"
    else:
        why = (f"no baseline models were measured on {reference} and {', '.join(shifts)}"
               + (" (the packaged baselines cover ImageNet and its shifts only)" if use_default else ""))
    return ("# Effective robustness\n\nNot computed: " + why + ". Effective robustness compares each "
            "model's shift accuracy with the line that baseline models trace from reference to shift "
            "accuracy. Give baselines as a CSV with a `model` column and one column per dataset, in "
            "percent: `wiseft report RUN_DIR --baselines baselines.csv` (docs/report.md).\n")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(run_dir: Path, found: _Analysis, notes: dict[str, str], tables: list[Table],
          figures: list[tuple[str, str]], out: Path) -> str:
    """The report page: alpha selection, Table 1, effective robustness and the plots (PNGs embedded)."""
    e = html.escape
    reference, shifts, selected, fits, rho = found.reference, found.shifts, found.selected, found.fits, found.rho
    rho_header, rho_rows = robustness_table(rho)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>WiSE-FT report</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}",
        "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0.5em}img{max-width:520px}",
        "</style></head><body>",
        f"<h1>WiSE-FT report: {e(str(run_dir))}</h1>",
        f"<p>Reference: <b>{e(reference)}</b>. Shifts: {e(', '.join(shifts) or 'none')}. "
        "Accuracies in percent; error bars and bands are 95% Clopper-Pearson intervals from the counts.</p>",
        "<h2>Alpha selection</h2><ul>",
        *(f"<li>{e(m)}: alpha = <b>{a:g}</b> ({e(notes[m])})</li>" for m, a in selected.items()),
        "</ul><p>Alpha is never chosen on a shift test set. The oracle row of the table picks "
        "each column's best alpha on that test set and is shown for reference only.</p>",
        "<h2>Table</h2>",
    ]
    for t in tables:
        rows = [[label, *(_fmt(c, "oracle" in label, col) for c, col in zip(cells, t.columns))] for label, cells in t.rows]
        parts += [f"<h3>{e(t.model)}</h3>", _html_table(["", *t.columns], rows)]
    parts.append("<h2>Effective robustness</h2>")
    if fits:
        parts.append("<p>rho = shift accuracy minus the baseline's prediction from x accuracy "
                     "(percentage points). Baseline: a line from logit(x accuracy) to logit(shift accuracy) over "
                     "baseline models; for ImageNet-R, -A and ObjectNet x is the reference accuracy on the "
                     "shift's classes, and the average over shifts has its own line, fitted on the baseline "
                     "models' averaged accuracies.</p><ul>")
        for s, f in fits.items():
            what = f"average over {e(', '.join(f.parts))}" if s == AVG else e(s)
            measured = any(r.shift == s for r in rho)
            extra = "" if measured else f"; no rho: the run has no {e(f.x_dataset)} records"
            parts.append(f"<li>{what}: {f.n} baseline models, x = {e(f.x_dataset)}, "
                         f"logit(y) = {f.slope:.3f} logit(x) {f.intercept:+.3f}{extra}</li>")
        parts.append("</ul>")
        parts.append(f"<p>Sources: {e(next(iter(fits.values())).source)}.</p>")
        parts.append(_html_table(rho_header, rho_rows))
    missing = [s for s in shifts if s not in fits]
    if missing:
        parts.append(f"<p>No baseline for: {e(', '.join(missing))} (supply baseline models to get rho there).</p>")
    parts.append("<h2>Plots</h2>")
    for stem, caption in figures:
        data = base64.b64encode((out / f"{stem}.png").read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(caption)} (<a href='{stem}.svg'>SVG</a>)</figcaption></figure>")
    parts.append("<p>Files: table.md, table.csv, table.tex, robustness.md, robustness.csv, points.csv.</p></body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# method comparison (runs with a merges: list): every method at its chosen setting


@dataclass(frozen=True)
class ComparisonRow:
    """One method at one setting: ``cells`` maps each column to (value, its 95%
    Clopper-Pearson interval or None); rho and averages have no interval."""

    label: str
    method: str
    setting: str
    models: str
    cells: dict[str, tuple[float, tuple[float, float] | None]]


def method_comparison(records: Iterable[Record], selected: dict[str, float], rho: list[RobustnessRow],
                      metric: str = PRIMARY) -> tuple[list[str], list[ComparisonRow]]:
    """(columns, rows) of the method comparison: zero-shot, each fine-tune, WiSE-FT at its
    selected alpha, the output-space ensemble at its selected alpha, then each
    ``merges:`` entry at the point chosen on validation. Columns: the reference and each
    shift (values with 95% intervals), ``avg shifts``, ``avg rho`` (when ``rho`` has rows:
    the sweeps' ``robustness_rows`` and the merges' ``merge_robustness_rows``) and each
    validation set (the score the setting was chosen by)."""
    records = list(records)
    chosen = select_metric(records, metric)
    reference = reference_dataset(chosen)
    shifts = _datasets(chosen, "shift")
    validation = list(dict.fromkeys(r.dataset for r in chosen if r.role == "validation"))
    names = {r.dataset: column_name(r.dataset, r.metric) for r in chosen}
    columns = ([names[reference], *(names[d] for d in shifts)] + ([AVG_SHIFTS] if shifts else [])
               + ([AVG_RHO] if rho else []) + [names[d] for d in validation])
    avg_rho = {(r.model, r.alpha): r.rho for r in rho if r.shift == AVG}
    rows = []
    for label, method, setting, models, key, vals in _comparison_points(records, chosen, selected):
        cells = {names[d]: (r.value, record_interval(r)) for d, r in vals.items() if d in names}
        if shifts and all(d in vals for d in shifts):
            cells[AVG_SHIFTS] = (sum(vals[d].value for d in shifts) / len(shifts), None)
        if key in avg_rho:
            cells[AVG_RHO] = (avg_rho[key], None)
        rows.append(ComparisonRow(label, method, setting, models, cells))
    return columns, rows


def _comparison_points(records: list[Record], chosen: list[Record], selected: dict[str, float]):
    """(label, method, setting, models, rho key, dataset -> record) of each row."""
    by: dict[tuple[str, float | None], dict[str, Record]] = {}
    for r in chosen:
        merge = merge_of(r)
        if r.alpha is not None or (merge is not None and merge["chosen"]):
            by.setdefault((r.model, None if r.alpha is None else float(r.alpha)), {})[r.dataset] = r
    models = [m for m in selected if not is_output_ensemble(records, m)]
    out = []
    if models:
        out.append(("zero-shot", "zero-shot", "alpha=0", "", (models[0], 0.0)))
    for m in models:
        what = "" if m == "finetuned" else f" ({m})"
        out += [(finetuned_label(m), "fine-tuned", "alpha=1", m, (m, 1.0)),
                (f"WiSE-FT{what}", "WiSE-FT", f"alpha={selected[m]:g}", m, (m, float(selected[m])))]
        ens = output_ensemble_name(m)
        if ens in selected:
            out.append((f"output-space ensemble{what}", "output ensemble", f"alpha={selected[ens]:g}", m,
                        (ens, float(selected[ens]))))
    for name in merge_names(records):
        info = next(merge_of(r) for r in chosen if r.model == name and merge_of(r) and merge_of(r)["chosen"])
        setting = point_text(info["point"]) if info["search"] else "fixed"
        out.append((name, info["method"], setting, ", ".join(info["models"]), (name, None)))
    return [(*row, by.get(row[-1], {})) for row in out if row[-1] in by]


def _comparison_cell(cell: tuple[float, tuple[float, float] | None] | None, col: str) -> str:
    if cell is None:
        return ""
    value, ci = cell
    text = f"{100 * value:+.2f}" if col == AVG_RHO else f"{100 * value:.2f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci is not None else "")


def comparison_markdown(columns: list[str], rows: list[ComparisonRow]) -> str:
    """The method comparison as a Markdown table: values in percent with [95% interval]."""
    header = ["", "method", "setting", "models", *columns]
    body = [[r.label, r.method, r.setting, r.models, *(_comparison_cell(r.cells.get(c), c) for c in columns)]
            for r in rows]
    return _markdown(header, body)


def comparison_csv(columns: list[str], rows: list[ComparisonRow]) -> str:
    """The method comparison as CSV, in percent: each column's value, then ``<column>
    ci_low`` and ``ci_high`` where the values have intervals."""
    with_ci = [c for c in columns if any((r.cells.get(c) or (0, None))[1] is not None for r in rows)]
    header = ["label", "method", "setting", "models"]
    for c in columns:
        header += [c] + ([f"{c} ci_low", f"{c} ci_high"] if c in with_ci else [])
    out = [header]
    for r in rows:
        line = [r.label, r.method, r.setting, r.models]
        for c in columns:
            value, ci = r.cells.get(c) or (None, None)
            line.append("" if value is None else f"{100 * value:.2f}")
            if c in with_ci:
                line += ["", ""] if ci is None else [f"{100 * ci[0]:.2f}", f"{100 * ci[1]:.2f}"]
        out.append(line)
    return _csv(out)


def search_tables(records: Iterable[Record], metric: str = PRIMARY) -> list[tuple[str, str, list[list[str]]]]:
    """Per ``merges:`` entry: (name, a line saying its method, models, search space and
    chosen point, and its validation curve: one row per grid point with each validation
    set's value and 95% interval, the chosen point marked)."""
    records = list(records)
    out = []
    for name in merge_names(records):
        search = [r for r in select_metric(records, metric)
                  if r.model == name and merge_stage(r) == SEARCH]
        info = merge_of(next(r for r in records if r.model == name))
        chosen = next((merge_of(r)["point"] for r in records if r.model == name and merge_of(r)["chosen"]), {})
        line = f"{info['method']} of {', '.join(info['models'])}; "
        if info["search"]:
            line += ("search: " + "; ".join(f"{k} in {json.dumps(v)}" for k, v in info["search"].items())
                     + f"; chosen on validation: {point_text(chosen)}"
                     + (f"; the search is the sweep of {info['from_sweep']}" if info.get("from_sweep") else ""))
        else:
            line += f"no search; parameters {json.dumps(info['params'])}"
        rows: dict[int, list[str]] = {}
        for r in search:
            i, ci = merge_of(r)["point_index"], record_interval(r)
            rows.setdefault(i, [point_text(merge_of(r)["point"]) + (" (chosen)" if merge_of(r)["chosen"] else "")])
            rows[i].append(f"{100 * r.value:.2f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""))
        out.append((name, line, [rows[i] for i in sorted(rows)]))
    return out


COMPARISON_NOTE = ("Each method at its setting: WiSE-FT and the output-space ensemble at the alpha selected on "
                   "held-out validation, each merge method at the grid point with the best validation score "
                   "(shift sets are never read to choose). Percent, with 95% Clopper-Pearson intervals in "
                   "brackets.")
RHO_NOTE = " avg rho is the effective robustness on the average over shifts (percentage points)."


def _write_comparison(out: Path, found: _Analysis, metric: str, banner: str) -> str:
    """Write methods.md and methods.csv (the method comparison and each merge's search);
    returns the page's section."""
    columns, rows = method_comparison(found.records, found.selected, found.rho + found.merge_rho, metric)
    searches = search_tables(found.records, metric)
    validation = list(dict.fromkeys(r.dataset for r in found.records if merge_of(r) and r.role == "validation"))
    note = COMPARISON_NOTE + (RHO_NOTE if "avg rho" in columns else "")  # no baselines, no rho column
    md = [banner + "# Method comparison", "", note, "", comparison_markdown(columns, rows),
          "## Searches", ""]
    e = html.escape
    page = ["<h2>Method comparison</h2>", f"<p>{e(note)}</p>",
            _html_table(["", "method", "setting", "models", *columns],
                        [[r.label, r.method, r.setting, r.models, *(_comparison_cell(r.cells.get(c), c)
                                                                    for c in columns)] for r in rows]),
            "<h3>Searches on validation</h3>"]
    for name, line, curve in searches:
        md += [f"### {name}", "", line, ""] + ([_markdown(["point", *validation], curve)] if curve else [])
        page += [f"<h4>{e(name)}</h4><p>{e(line)}</p>"] + ([_html_table(["point", *validation], curve)] if curve
                                                           else [])
    _write(out / "methods.md", "\n".join(md))
    _write(out / "methods.csv", comparison_csv(columns, rows))
    return "\n".join(page)

"""`wiseft report RUN_DIR`: tables, plots and one offline HTML page from results.jsonl alone.

Writes into ``RUN_DIR/report/`` (or ``out_dir``):

- ``index.html``: everything below on one page, PNGs embedded (opens offline)
- ``scatter_<shift>.png|svg`` and ``scatter_avg.png|svg``: reference vs shift, logit axes
- ``alpha_<model>.png|svg``: accuracy vs alpha
- ``table.md|csv|tex``: Table-1-style accuracies (zero-shot, fine-tuned, alpha 0.5,
  selected alpha, the output-space ensemble where the run has one, per-column oracle alpha)
- ``robustness.md|csv``: effective robustness rho for every model, alpha and shift
- ``points.csv``: every accuracy with its 95% Clopper-Pearson interval
- ``calibration.md``: expected calibration error, where the run measured it
- ``retrieval.md|csv`` and ``tradeoff_<model>.png|svg``: recall@k of the pair sets beside the
  labelled sets' accuracy by alpha, and retrieval gained against zero-shot accuracy kept,
  where the run scored pair sets
- ``methods.md|csv`` and ``search_<merge>.png|svg``: the method comparison and each
  merge's search on validation, where the run has a ``merges:`` list

The records are read once and grouped once (``core.record_view``); the analysis
(``report.analysis``) and every stage below read that one view.
"""

from __future__ import annotations

from pathlib import Path

from wiseft.config import ReportConfig
from wiseft.core import QUICK_BANNER
from wiseft.io import atomic_write, read_records
from wiseft.report.analysis import Analysis, analyse, check_settings
from wiseft.report.comparison import compare_methods, write_comparison
from wiseft.report.page import report_page
from wiseft.report.plots import plot_alpha_curves, plot_scatter, plot_search, save_figure
from wiseft.report.retrieval import has_retrieval, retrieval_part
from wiseft.report.robustness import AVG
from wiseft.report.tables import (
    Table,
    build_tables,
    calibration_table,
    csv_text,
    markdown_table,
    no_baseline_note,
    points_csv,
    robustness_table,
    table_csv,
    table_latex,
    table_markdown,
)


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
    check_settings(settings)
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    found = analyse(run_dir, records, settings)
    figures = write_figures(found, out)
    tables = build_tables(found.view, found.selected, found.rho)
    banner = f"**{QUICK_BANNER}**\n\n" if found.quick else ""
    calibration = write_tables(out, found, tables, banner)
    retrieval = None
    if has_retrieval(records):  # a run that scored pair sets
        retrieval = retrieval_part(records, found.models, found.selected, out, banner)
        figures += retrieval.figures
    comparison = None
    if found.view.merge_names:
        comparison = compare_methods(found.view, found.selected, found.rho + found.merge_rho)
        write_comparison(out, comparison, banner)
    atomic_write(out / "index.html", report_page(found, tables, figures, out, comparison, calibration, retrieval))
    return out / "index.html"


def write_figures(found: Analysis, out: Path) -> list[tuple[str, str]]:
    """The scatter plots (each shift and their average), the alpha curves and each
    merge's search curve (more than one grid point); (stem, caption) of each."""
    view = found.view
    figures: list[tuple[str, str]] = []
    for shift in [*view.shifts, AVG] if view.shifts else []:
        stem = f"scatter_{slug(shift)}"
        save_figure(plot_scatter(view, shift, found.fits, found.selected), out, stem)
        figures.append((stem, f"{view.reference} vs {shift}"))
    for m in found.models:
        stem = f"alpha_{slug(m)}"
        save_figure(plot_alpha_curves(view, m, found.selected[m], ensemble=found.ensembles.get(m)), out, stem)
        figures.append((stem, f"accuracy vs alpha, {m}"))
    for name in view.merge_names:
        if len(view.searches.get(name, {})) > 1:  # a curve needs more than one point
            stem = f"search_{slug(name)}"
            save_figure(plot_search(view, name), out, stem)
            figures.append((stem, f"search on validation, {name}"))
    return figures


def write_tables(out: Path, found: Analysis, tables: list[Table],
                 banner: str) -> tuple[list[str], list[list[str]]]:
    """Write Table 1 (md, csv, tex), robustness (csv, md), points.csv and, where the run
    has ECE records, calibration.md; returns the calibration table (no rows: none)."""
    view = found.view
    atomic_write(out / "table.md", banner + table_markdown(tables))
    atomic_write(out / "table.csv", table_csv(tables))
    atomic_write(out / "table.tex", table_latex(tables))
    header, rows = robustness_table(found.rho)
    atomic_write(out / "robustness.csv", csv_text([header, *rows]))
    note = no_baseline_note(view.reference, view.shifts, found.settings.use_default_baselines)
    atomic_write(out / "robustness.md", banner + (markdown_table(header, rows) if rows else note))
    atomic_write(out / "points.csv", points_csv(view.records))
    calibration = calibration_table(view.records)
    if calibration[1]:
        atomic_write(out / "calibration.md", banner + "Expected calibration error (%, 15 bins) with each alpha's "
                     "temperature fitted on held-out validation.\n\n" + markdown_table(*calibration))
    return calibration


def slug(name: str) -> str:
    """A model, shift or merge name as a file stem: anything but letters, digits, ``-_.`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

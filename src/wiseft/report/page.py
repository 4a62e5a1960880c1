"""The report's one offline HTML page (``index.html``), built section by section in page
order: the quick-run banner, alpha selection, Table 1, the method comparison, effective
robustness, calibration and the plots (PNGs embedded)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from wiseft.core import QUICK_BANNER
from wiseft.report.analysis import Analysis
from wiseft.report.comparison import Comparison, comparison_body
from wiseft.report.retrieval import RetrievalPart
from wiseft.report.robustness import AVG
from wiseft.report.tables import Table, format_cell, robustness_table

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
    "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}",
    "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0.5em}img{max-width:520px}",
)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A table of text cells, escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_page(found: Analysis, tables: list[Table], figures: list[tuple[str, str]], out: Path,
                comparison: Comparison | None = None,
                calibration: tuple[list[str], list[list[str]]] | None = None,
                retrieval: RetrievalPart | None = None) -> str:
    """The page: one line per part, sections in order. ``figures`` are (stem, caption) of
    the plots written in ``out``; the method comparison (``comparison``, a run with
    merges), the retrieval table (``retrieval``, a run with pair sets) and the calibration
    table (``calibration``, when it has rows) are optional sections, each running straight
    into the heading after it."""
    before_rho = comparison_section(comparison) if comparison is not None else ""
    before_rho = (retrieval_section(retrieval) if retrieval is not None else "") + before_rho
    before_plots = calibration_section(*calibration) if calibration and calibration[1] else ""
    parts = [*_head(found), *_alpha_section(found), *_table_section(tables),
             before_rho + "<h2>Effective robustness</h2>", *_robustness_section(found),
             before_plots + "<h2>Plots</h2>", *_plots_section(figures, out, retrieval is not None)]
    return "\n".join(parts)


def retrieval_section(part: RetrievalPart) -> str:
    """Retrieval recall@k of the pair sets beside the labelled sets' accuracy, by alpha."""
    return ("<h2>Retrieval</h2><p>Pair sets are scored by retrieval: recall@k in both directions (percent, 95% "
            "Clopper-Pearson interval; r@1 is the mean of the two directions' R@1), beside the zero-shot "
            "accuracy of the labelled sets, alpha by alpha: retrieval gained against zero-shot accuracy kept. "
            "* marks the selected alpha.</p>" + html_table(part.header, part.rows))


def _head(found: Analysis) -> list[str]:
    """The document head, the quick-run banner (a quick run only), the title and what the numbers are."""
    banner = f"<p style='background:#fde;padding:8px'><b>{escape(QUICK_BANNER)}</b></p>" if found.quick else ""
    view = found.view
    return [
        "<!doctype html><html><head><meta charset='utf-8'><title>WiSE-FT report</title><style>",
        *STYLE,
        "</style></head><body>" + banner,
        f"<h1>WiSE-FT report: {escape(str(found.run_dir))}</h1>",
        (f"<p>Reference: <b>{escape(view.reference)}</b>. Shifts: {escape(', '.join(view.shifts) or 'none')}. "
         "Accuracies in percent; error bars and bands are 95% Clopper-Pearson intervals from the counts.</p>"),
    ]


def _alpha_section(found: Analysis) -> list[str]:
    """Each model's alpha and how it was chosen."""
    return [
        "<h2>Alpha selection</h2><ul>",
        *(f"<li>{escape(m)}: alpha = <b>{a:g}</b> ({escape(found.notes[m])})</li>" for m, a in found.selected.items()),
        ("</ul><p>Alpha is never chosen on a shift test set. The oracle row of the table picks "
         "each column's best alpha on that test set and is shown for reference only.</p>"),
    ]


def _table_section(tables: list[Table]) -> list[str]:
    """Table 1, one block per model."""
    parts = ["<h2>Table</h2>"]
    for t in tables:
        rows = [[label, *(format_cell(c, "oracle" in label, col) for c, col in zip(cells, t.columns))]
                for label, cells in t.rows]
        parts += [f"<h3>{escape(t.model)}</h3>", html_table(["", *t.columns], rows)]
    return parts


def comparison_section(comparison: Comparison) -> str:
    """The method comparison and each merge's search on validation."""
    parts = ["<h2>Method comparison</h2>", f"<p>{escape(comparison.note)}</p>",
             html_table(*comparison_body(comparison.columns, comparison.rows)),
             "<h3>Searches on validation</h3>"]
    for name, line, curve in comparison.searches:
        parts += [f"<h4>{escape(name)}</h4><p>{escape(line)}</p>"] + ([html_table(comparison.search_columns, curve)] if curve
                                                           else [])
    return "\n".join(parts)


def _robustness_section(found: Analysis) -> list[str]:
    """The baseline fits and rho (after the section's heading), and the shifts with no baseline."""
    fits, rho = found.fits, found.rho
    parts = []
    if fits:
        parts.append("<p>rho = shift accuracy minus the baseline's prediction from x accuracy "
                     "(percentage points). Baseline: a line from logit(x accuracy) to logit(shift accuracy) over "
                     "baseline models; for ImageNet-R, -A and ObjectNet x is the reference accuracy on the "
                     "shift's classes, and the average over shifts has its own line, fitted on the baseline "
                     "models' averaged accuracies.</p><ul>")
        for s, f in fits.items():
            what = f"average over {escape(', '.join(f.parts))}" if s == AVG else escape(s)
            measured = any(r.shift == s for r in rho)
            extra = "" if measured else f"; no rho: the run has no {escape(f.x_dataset)} records"
            parts.append(f"<li>{what}: {f.n} baseline models, x = {escape(f.x_dataset)}, "
                         f"logit(y) = {f.slope:.3f} logit(x) {f.intercept:+.3f}{extra}</li>")
        parts.append("</ul>")
        parts.append(f"<p>Sources: {escape(next(iter(fits.values())).source)}.</p>")
        parts.append(html_table(*robustness_table(rho)))
    missing = [s for s in found.view.shifts if s not in fits]
    if missing:
        parts.append(f"<p>No baseline for: {escape(', '.join(missing))} (supply baseline models to get rho there).</p>")
    return parts


def calibration_section(header: list[str], rows: list[list[str]]) -> str:
    """Expected calibration error under shift, with each alpha's fitted temperature."""
    return ("<h2>Calibration</h2><p>Expected calibration error (percent, 15 bins) of softmax(logits / T), with T "
            "fitted per alpha on held-out validation (temperature scaling).</p>" + html_table(header, rows))


def _plots_section(figures: list[tuple[str, str]], out: Path, retrieval: bool = False) -> list[str]:
    """The plots (after the section's heading), each PNG embedded with a link to its SVG, and the files written."""
    parts = []
    for stem, caption in figures:
        data = base64.b64encode((out / f"{stem}.png").read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{escape(caption)} (<a href='{stem}.svg'>SVG</a>)</figcaption></figure>")
    more = " retrieval.md, retrieval.csv," if retrieval else ""
    parts.append(f"<p>Files: table.md, table.csv, table.tex, robustness.md, robustness.csv,{more} points.csv.</p>"
                 "</body></html>")
    return parts

"""The report's tables as text: Table 1 (Markdown, CSV, LaTeX), effective robustness,
calibration and every point with its interval, plus the Markdown and CSV writers and the
labels the tables and plots share."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Iterable, Mapping

from wiseft.core import Record, RecordView, alpha_rank, column_name, is_retrieval_metric, output_ensemble_name
from wiseft.report.robustness import AVG, RobustnessRow, record_interval

Cell = tuple[float | None, float | None]  # (value as a fraction, alpha it was taken at)
Values = dict[float, dict[str, float]]  # alpha -> column -> value

AVG_SHIFTS, AVG_REF_SHIFTS, AVG_RHO = "avg shifts", "avg ref., shifts", "avg rho"


@dataclass
class Table:
    """One model's Table-1-style block: column names and labelled rows of cells."""

    model: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]


def finetuned_label(model: str) -> str:
    """'fine-tuned' for the main run, 'fine-tuned (NAME)' for a variant."""
    return "fine-tuned" if model == "finetuned" else f"fine-tuned ({model})"


def point_text(point: Mapping) -> str:
    """A grid point as a tick or a table shows it: ``density=0.2, scale=1``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) or "(defaults)"


def build_tables(view: RecordView, selected: dict[str, float], rho: list[RobustnessRow]) -> list[Table]:
    """Per model: zero-shot, fine-tuned, WiSE-FT at 0.5, at the selected alpha, the
    output-space ensemble of the same end points at 0.5 and at its selected alpha (when
    ``selected`` has ``output_ensemble_name(model)``), and the per-column best alpha (an
    oracle: it looks at the test sets, so it is not a method).

    Columns: the reference and each shift under the view's metric (named in the header
    when not top1), ``avg shifts`` (their mean), ``avg ref., shifts`` (the mean of the
    reference value and ``avg shifts``, as in the paper's Table 1) and ``avg rho``
    (effective robustness on the average over shifts). A pair shift (scored by retrieval)
    has its column but stays out of the averages; with a pair reference set there is no
    ``avg ref., shifts`` (recall and accuracy have no mean)."""
    reference, shifts = view.reference, view.shifts
    names = {r.dataset: column_name(r.dataset, r.metric)
             for r in view.chosen if r.alpha is not None and r.role != "validation"}
    retrieval = {r.dataset for r in view.chosen if is_retrieval_metric(r.metric)}
    averaged = [s for s in shifts if s not in retrieval]  # a pair shift's recall is no accuracy to average
    # nor is a pair reference's: its recall and the shifts' accuracy have no mean
    means = [AVG_SHIFTS] + ([AVG_REF_SHIFTS] if reference not in retrieval else []) if averaged else []
    columns = [names[reference], *(names[s] for s in shifts), *means] + ([AVG_RHO] if rho else [])
    values = {m: _table_values(view, m, names, [reference, *averaged], rho) for m in selected}
    tables = []
    for model in selected:  # in the run's order: the main fine-tune, then its variants
        if any(output_ensemble_name(m) == model for m in selected):
            continue  # an output ensemble: rows in its fine-tune's block
        tables.append(Table(model, columns, _table_rows(model, selected, columns, values)))
    return tables


def _table_values(view: RecordView, model: str, names: dict[str, str], datasets: list[str],
                  rho: list[RobustnessRow]) -> Values:
    """``model``'s value in every column at every alpha; ``names``: dataset -> column,
    ``datasets``: the reference, then each shift."""
    reference, shifts = names[datasets[0]], [names[d] for d in datasets[1:]]
    vals: Values = {}
    for alpha, points in view.curves.get(model, {}).items():
        for name, r in points.items():
            if name == r.dataset and r.role != "validation":  # a test set's own score, not an x axis
                vals.setdefault(alpha, {})[names[r.dataset]] = r.value
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


def format_cell(cell: Cell, with_alpha: bool, col: str) -> str:
    """A Table-1 cell in percent (rho signed), with the alpha it was taken at when ``with_alpha``."""
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
            out.append(f"| {label} | " + " | ".join(format_cell(c, oracle, col) for c, col in zip(cells, t.columns))
                       + " |")
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
            out.append(" & ".join([_tex(label), *(_tex(format_cell(c, oracle, col)) for c, col in zip(cells, t.columns))])
                       + r" \\")
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


def calibration_table(records: Iterable[Record]) -> tuple[list[str], list[list[str]]]:
    """Expected calibration error (percent) of every (model, alpha) on every set, under the
    temperature fitted for that alpha on held-out validation: how calibration holds under shift."""
    order = {"reference": 0, "shift": 1, "validation": 2}
    records = list(records)
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


def csv_text(rows: list[list[str]]) -> str:
    """Rows as CSV text (``\\n`` line ends)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, ending in a newline."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"

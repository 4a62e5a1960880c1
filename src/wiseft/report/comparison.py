"""The method comparison of a run with a ``merges:`` list: every method at its chosen
setting (``methods.md``, ``methods.csv`` and a section of the page), and each merge's
search on validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wiseft.core import SEARCH, Record, RecordView, column_name, merge_of, merge_stage, output_ensemble_name
from wiseft.io import atomic_write
from wiseft.report.robustness import AVG, RobustnessRow, record_interval
from wiseft.report.tables import AVG_RHO, AVG_SHIFTS, csv_text, finetuned_label, markdown_table, point_text

COMPARISON_NOTE = ("Each method at its setting: WiSE-FT and the output-space ensemble at the alpha selected on "
                   "held-out validation, each merge method at the grid point with the best validation score "
                   "(shift sets are never read to choose). Percent, with 95% Clopper-Pearson intervals in "
                   "brackets.")
RHO_NOTE = " avg rho is the effective robustness on the average over shifts (percentage points)."


@dataclass(frozen=True)
class ComparisonRow:
    """One method at one setting: ``cells`` maps each column to (value, its 95%
    Clopper-Pearson interval or None); rho and averages have no interval."""

    label: str
    method: str
    setting: str
    models: str
    cells: dict[str, tuple[float, tuple[float, float] | None]]


@dataclass(frozen=True)
class Comparison:
    """What ``methods.md``, ``methods.csv`` and the page's method comparison show: the
    ``method_comparison`` table and each merge's ``search_tables`` entry, whose curves
    have one column per validation set in ``search_columns`` (after ``point``)."""

    columns: list[str]
    rows: list[ComparisonRow]
    searches: list[tuple[str, str, list[list[str]]]]
    search_columns: list[str]

    @property
    def note(self) -> str:
        """The paragraph above the table (rho's sentence only where it has an avg rho column)."""
        return COMPARISON_NOTE + (RHO_NOTE if AVG_RHO in self.columns else "")  # no baselines, no rho column


def method_comparison(view: RecordView, selected: dict[str, float],
                      rho: list[RobustnessRow]) -> tuple[list[str], list[ComparisonRow]]:
    """(columns, rows) of the method comparison: zero-shot, each fine-tune, WiSE-FT at its
    selected alpha, the output-space ensemble at its selected alpha, then each
    ``merges:`` entry at the point chosen on validation. Columns: the reference and each
    shift (values with 95% intervals), ``avg shifts``, ``avg rho`` (when ``rho`` has rows:
    the sweeps' ``robustness_rows`` and the merges' ``merge_robustness_rows``) and each
    validation set (the score the setting was chosen by)."""
    shifts = view.shifts
    names = {r.dataset: column_name(r.dataset, r.metric) for r in view.chosen}
    columns = ([names[view.reference], *(names[d] for d in shifts)] + ([AVG_SHIFTS] if shifts else [])
               + ([AVG_RHO] if rho else []) + [names[d] for d in view.validation])
    avg_rho = {(r.model, r.alpha): r.rho for r in rho if r.shift == AVG}
    rows = []
    for label, method, setting, models, key, vals in _comparison_points(view, selected):
        cells = {names[d]: (r.value, record_interval(r)) for d, r in vals.items() if d in names}
        if shifts and all(d in vals for d in shifts):
            cells[AVG_SHIFTS] = (sum(vals[d].value for d in shifts) / len(shifts), None)
        if key in avg_rho:
            cells[AVG_RHO] = (avg_rho[key], None)
        rows.append(ComparisonRow(label, method, setting, models, cells))
    return columns, rows


def _comparison_points(view: RecordView, selected: dict[str, float]):
    """(label, method, setting, models, rho key, dataset -> record) of each row."""
    models = [m for m in selected if not view.is_output_ensemble(m)]
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
    for name in view.merge_names:
        info = next(merge_of(r) for r in view.chosen if r.model == name and merge_of(r) and merge_of(r)["chosen"])
        setting = point_text(info["point"]) if info["search"] else "fixed"
        out.append((name, info["method"], setting, ", ".join(info["models"]), (name, None)))
    points = [(*row, _scores(view, *row[-1])) for row in out]
    return [row for row in points if row[-1]]


def _scores(view: RecordView, model: str, alpha: float | None) -> dict[str, Record]:
    """dataset -> record of one row's point: a curve's at ``alpha``, or (alpha None) a
    merge's chosen point on the test sets and on validation (its search's chosen point)."""
    if alpha is not None:
        points = view.curves.get(model, {}).get(alpha, {})
    else:
        chosen = [r for rs in view.searches.get(model, {}).values() for r in rs if merge_of(r)["chosen"]]
        points = {**view.merges.get(model, {}), **{r.dataset: r for r in chosen}}
    return {d: r for d, r in points.items() if d == r.dataset}  # the class-restricted x axes are no column


def comparison_cell(cell: tuple[float, tuple[float, float] | None] | None, col: str) -> str:
    """A comparison cell in percent (rho signed), with its [95% interval] where it has one."""
    if cell is None:
        return ""
    value, ci = cell
    text = f"{100 * value:+.2f}" if col == AVG_RHO else f"{100 * value:.2f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci is not None else "")


def comparison_body(columns: list[str], rows: list[ComparisonRow]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the method comparison as text cells."""
    header = ["", "method", "setting", "models", *columns]
    body = [[r.label, r.method, r.setting, r.models, *(comparison_cell(r.cells.get(c), c) for c in columns)]
            for r in rows]
    return header, body


def comparison_markdown(columns: list[str], rows: list[ComparisonRow]) -> str:
    """The method comparison as a Markdown table: values in percent with [95% interval]."""
    return markdown_table(*comparison_body(columns, rows))


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
    return csv_text(out)


def search_tables(view: RecordView) -> list[tuple[str, str, list[list[str]]]]:
    """Per ``merges:`` entry: (name, a line saying its method, models, search space and
    chosen point, and its validation curve: one row per grid point with each validation
    set's value and 95% interval, the chosen point marked)."""
    out = []
    for name in view.merge_names:
        info = merge_of(next(r for r in view.records if r.model == name))
        chosen = next((merge_of(r)["point"] for r in view.records if r.model == name and merge_of(r)["chosen"]), {})
        line = f"{info['method']} of {', '.join(info['models'])}; "
        if info["search"]:
            line += ("search: " + "; ".join(f"{k} in {json.dumps(v)}" for k, v in info["search"].items())
                     + f"; chosen on validation: {point_text(chosen)}"
                     + (f"; the search is the sweep of {info['from_sweep']}" if info.get("from_sweep") else ""))
        else:
            line += f"no search; parameters {json.dumps(info['params'])}"
        rows = []
        for _, found in sorted(view.searches.get(name, {}).items()):
            point = merge_of(found[0])
            row = [point_text(point["point"]) + (" (chosen)" if point["chosen"] else "")]
            for r in found:
                ci = record_interval(r)
                row.append(f"{100 * r.value:.2f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""))
            rows.append(row)
        out.append((name, line, rows))
    return out


def compare_methods(view: RecordView, selected: dict[str, float], rho: list[RobustnessRow]) -> Comparison:
    """The :class:`Comparison` of a run with ``merges:`` entries; ``rho``: the sweeps'
    and the merges' rows."""
    columns, rows = method_comparison(view, selected, rho)
    validation = list(dict.fromkeys(r.dataset for r in view.chosen if merge_stage(r) == SEARCH))
    return Comparison(columns, rows, search_tables(view), ["point", *validation])


def write_comparison(out: Path, comparison: Comparison, banner: str) -> None:
    """Write ``methods.md`` (``banner`` first) and ``methods.csv`` into ``out``."""
    md = [banner + "# Method comparison", "", comparison.note, "",
          comparison_markdown(comparison.columns, comparison.rows), "## Searches", ""]
    for name, line, curve in comparison.searches:
        md += [f"### {name}", "", line, ""] + ([markdown_table(comparison.search_columns, curve)] if curve else [])
    atomic_write(out / "methods.md", "\n".join(md))
    atomic_write(out / "methods.csv", comparison_csv(comparison.columns, comparison.rows))

"""The report's retrieval part, for a run that scores pair sets: every (model, alpha)
with its recall@k both ways on each pair set and the primary metric of each labelled set,
with 95% intervals (``retrieval.md|csv``), and the trade-off plot: retrieval gained
against zero-shot accuracy kept, one point per alpha (``tradeoff_<model>.png|svg``).

A run without retrieval records has none of it: its report is as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from wiseft.core import RETRIEVAL_PRIMARY, Record, is_retrieval_metric
from wiseft.io import atomic_write
from wiseft.report.plots import save_figure
from wiseft.report.robustness import record_interval
from wiseft.report.tables import csv_text, markdown_table

ROLE_ORDER = {"reference": 0, "shift": 1, "validation": 2}


@dataclass(frozen=True)
class RetrievalPart:
    """The retrieval table (Markdown header and rows; CSV rows) and the plots' (stem, caption)."""

    header: list[str]
    rows: list[list[str]]
    csv_rows: list[list[str]]
    figures: list[tuple[str, str]]


def has_retrieval(records: list[Record]) -> bool:
    """Whether the run scored any pair set by retrieval."""
    return any(is_retrieval_metric(r.metric) for r in records)


def _shown(records: list[Record], models: list[str]) -> list[Record]:
    """The records the part shows: retrieval metrics of pair sets and each labelled set's
    primary metric, of the WiSE-FT models, in set order (test sets, then validation)."""
    keep = [r for r in records if r.model in models and r.alpha is not None
            and (is_retrieval_metric(r.metric) or r.provenance.get("primary"))]
    return sorted(keep, key=lambda r: (models.index(r.model), r.alpha, ROLE_ORDER.get(r.role, 3)))


def _cell(r: Record) -> str:
    ci = record_interval(r)
    return f"{100 * r.value:.2f}" + ("" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")


def retrieval_part(records: list[Record], models: list[str], selected: dict[str, float], out: Path,
                   banner: str = "") -> RetrievalPart:
    """Write ``retrieval.md``, ``retrieval.csv`` and each model's trade-off plot into ``out``."""
    shown = _shown(records, models)
    columns = list(dict.fromkeys(f"{r.dataset} {r.metric}" for r in shown))
    by: dict[tuple[str, float], dict[str, Record]] = {}
    for r in shown:
        by.setdefault((r.model, float(r.alpha)), {})[f"{r.dataset} {r.metric}"] = r
    rows = [[m, f"{a:g}" + (" *" if selected.get(m) == a else ""),
             *(_cell(v[c]) if c in v else "" for c in columns)] for (m, a), v in by.items()]
    csv_rows = []
    for r in shown:
        ci = record_interval(r)
        csv_rows.append([r.model, f"{r.alpha:g}", "yes" if selected.get(r.model) == r.alpha else "", r.dataset,
                         r.role, r.metric, f"{r.value:.6f}", "" if ci is None else f"{ci[0]:.6f}",
                         "" if ci is None else f"{ci[1]:.6f}"])
    header = ["model", "alpha", *columns]
    atomic_write(out / "retrieval.md", banner + "Retrieval recall@k (percent, 95% Clopper-Pearson interval) on the "
                 "pair sets and the primary metric of the labelled sets, by alpha; * the selected alpha. "
                 "i2t/t2i: image to text and back; q2d/d2q: query to document and back; r@1: the mean of "
                 "the two directions' R@1.\n\n" + markdown_table(header, rows))
    atomic_write(out / "retrieval.csv", csv_text([["model", "alpha", "selected", "dataset", "role", "metric",
                                                   "value", "ci_low", "ci_high"], *csv_rows]))
    figures = []
    for m in models:
        fig = plot_tradeoff(shown, m, selected.get(m))
        if fig is not None:
            save_figure(fig, out, f"tradeoff_{_slug(m)}")
            figures.append((f"tradeoff_{_slug(m)}", f"retrieval gained vs zero-shot accuracy kept, {m}"))
    return RetrievalPart(header, rows, csv_rows, figures)


def tradeoff_points(records: list[Record], model: str) -> list[tuple[float, float, float]]:
    """(alpha, retrieval R@1, accuracy) of ``model`` per alpha: R@1 (``r@1``) averaged over
    the pair test sets (the held-out pairs where the run has no pair test set), accuracy
    (each labelled set's primary metric) averaged over the labelled test sets."""
    mine = [r for r in records if r.model == model and r.alpha is not None]
    pair_test = [r for r in mine if r.metric == RETRIEVAL_PRIMARY and r.role != "validation"]
    pairs = pair_test or [r for r in mine if r.metric == RETRIEVAL_PRIMARY]
    labelled = [r for r in mine if r.provenance.get("primary") and not is_retrieval_metric(r.metric)
                and r.role != "validation"]
    points = []
    for a in sorted({float(r.alpha) for r in pairs} & {float(r.alpha) for r in labelled}):
        x = [r.value for r in pairs if r.alpha == a]
        y = [r.value for r in labelled if r.alpha == a]
        points.append((a, sum(x) / len(x), sum(y) / len(y)))
    return points


def plot_tradeoff(records: list[Record], model: str, selected: float | None) -> Figure | None:
    """Retrieval R@1 (x) against zero-shot accuracy on the labelled sets (y), one point per
    alpha, annotated; the selected alpha ringed. None when the run has no labelled set."""
    points = tradeoff_points(records, model)
    if not points:
        return None
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    xs, ys = [100 * p[1] for p in points], [100 * p[2] for p in points]
    ax.plot(xs, ys, "o-", color="tab:blue", label=f"WiSE-FT {model}")
    for (a, _, _), x, y in zip(points, xs, ys):
        ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if selected is not None and a == selected:
            ax.plot([x], [y], "o", markersize=12, markerfacecolor="none", color="tab:red",
                    label=f"selected alpha={a:g}")
    ax.set_xlabel("retrieval R@1, mean of both directions (%)")
    ax.set_ylabel("zero-shot accuracy, labelled sets (%)")
    ax.set_title(f"retrieval gained vs zero-shot accuracy kept ({model})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _slug(name: str) -> str:
    """A model name as a file stem (as ``build.slug`` makes it)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

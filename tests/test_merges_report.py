"""The report of a run with ``merges:``: the method comparison (methods.md, methods.csv),
each merge's search, its point on the scatter plots and its effective robustness; the
report's other outputs are those of the same run without merges."""

import re
from pathlib import Path

import numpy as np
import pytest

from wiseft.config import ReportConfig
from wiseft.core import Record, record_view
from wiseft.io import append_records, read_records
from wiseft.report import build_report, clopper_pearson
from wiseft.report.comparison import method_comparison, search_tables
from wiseft.report.plots import plot_scatter, plot_search, plotted_data
from wiseft.report.robustness import AVG, build_baselines, logit, merge_robustness_rows, robustness_rows

N = {"ref": 400, "s1": 300, "s2": 200, "val": 100}
ROLES = {"ref": "reference", "s1": "shift", "s2": "shift", "val": "validation"}
# correct counts of the sweep at alphas 0, 0.5, 1
SWEEP = {"ref": (240, 330, 350), "s1": (150, 180, 160), "s2": (90, 110, 80), "val": (60, 85, 88)}
ENSEMBLE = {"ref": (240, 320, 350), "s1": (150, 170, 160), "s2": (90, 100, 80), "val": (60, 80, 88)}
TIES_VAL = (70, 90)  # validation at densities 0.1 and 0.5: 0.5 is chosen
TIES_TEST = {"ref": 340, "s1": 190, "s2": 120}
BASELINES = "model,ref,s1,s2\na,50,30,20\nb,70,45,35\nc,90,65,55\n"


def _sweep() -> list[Record]:
    out = []
    for model, counts, prov in (("finetuned", SWEEP, {"mode": "e2e"}),
                                ("finetuned (output ensemble)", ENSEMBLE, {"mode": "e2e", "method": "output_ensemble"})):
        for i, a in enumerate((0.0, 0.5, 1.0)):
            for d, c in counts.items():
                out.append(Record(model, a, d, ROLES[d], "top1", c[i] / N[d], c[i], N[d], {**prov, "primary": True}))
                out.append(Record(model, a, d, ROLES[d], "ece", 0.05, None, None, dict(prov)))
    return out


def _merge(index: int, stage: str) -> dict:
    return {"method": "ties", "merge": {
        "name": "ties", "method": "ties", "models": ["finetuned", "slow"],
        "params": {"density": (0.1, 0.5)[index], "scale": 1.0, "normalize": True},
        "point": {"density": (0.1, 0.5)[index]}, "point_index": index, "search": {"density": [0.1, 0.5]},
        "stage": stage, "chosen": index == 1}}


def _ties() -> list[Record]:
    out = [Record("ties", None, "val", "validation", "top1", c / 100, c, 100, {**_merge(i, "search"), "primary": True})
           for i, c in enumerate(TIES_VAL)]
    return out + [Record("ties", None, d, ROLES[d], "top1", c / N[d], c, N[d], {**_merge(1, "test"), "primary": True})
                  for d, c in TIES_TEST.items()]


@pytest.fixture
def runs(tmp_path) -> tuple[Path, Path, Path]:
    """(a run without merges, the same run with a 'ties' entry, a baseline CSV)."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "merged").mkdir()
    append_records(tmp_path / "plain" / "results.jsonl", _sweep())
    append_records(tmp_path / "merged" / "results.jsonl", _sweep() + _ties())
    (tmp_path / "baselines.csv").write_text(BASELINES)
    return tmp_path / "plain", tmp_path / "merged", tmp_path / "baselines.csv"


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_the_reports_other_outputs_do_not_change(runs):
    plain, merged, csv = runs
    build_report(plain, settings=ReportConfig(baselines=csv))
    build_report(merged, settings=ReportConfig(baselines=csv))
    for name in ("table.md", "table.csv", "table.tex", "robustness.md", "robustness.csv", "calibration.md"):
        assert (merged / "report" / name).read_text() == (plain / "report" / name).read_text(), name
    assert not (plain / "report" / "methods.md").exists()
    assert "Method comparison" not in (plain / "report" / "index.html").read_text()


def test_merge_records_are_not_baseline_models(runs):
    plain, merged, csv = runs
    fits = build_baselines(record_view(read_records(merged)), extra=csv)
    assert {s: f.n for s, f in fits.items()} == {"s1": 3, "s2": 3, AVG: 3}
    assert fits == build_baselines(record_view(read_records(plain)), extra=csv)


def test_method_comparison_rows_and_intervals(runs):
    _, merged, csv = runs
    view = record_view(read_records(merged))
    fits = build_baselines(view, extra=csv)
    rho = robustness_rows(view, fits) + merge_robustness_rows(view, fits)
    selected = {"finetuned": 1.0, "finetuned (output ensemble)": 0.5}
    columns, rows = method_comparison(view, selected, rho)
    assert columns == ["ref", "s1", "s2", "avg shifts", "avg rho", "val"]
    assert [(r.label, r.method, r.setting, r.models) for r in rows] == [
        ("zero-shot", "zero-shot", "alpha=0", ""), ("fine-tuned", "fine-tuned", "alpha=1", "finetuned"),
        ("WiSE-FT", "WiSE-FT", "alpha=1", "finetuned"),
        ("output-space ensemble", "output ensemble", "alpha=0.5", "finetuned"),
        ("ties", "ties", "density=0.5", "finetuned, slow")]
    ties = rows[-1].cells
    assert ties["ref"] == (0.85, clopper_pearson(340, 400))
    assert ties["val"] == (0.9, clopper_pearson(90, 100))  # the score it was chosen by
    assert ties["avg shifts"] == (pytest.approx((190 / 300 + 120 / 200) / 2), None)
    avg_fit = fits[AVG]
    expected = (190 / 300 + 120 / 200) / 2 - avg_fit.predict(0.85)
    assert ties["avg rho"] == (pytest.approx(expected), None)
    assert rows[2].cells["s2"] == (0.4, clopper_pearson(80, 200))  # WiSE-FT at its selected alpha 1


def test_methods_files_and_the_search_table(runs):
    _, merged, csv = runs
    page = build_report(merged, settings=ReportConfig(baselines=csv)).read_text()
    md = (merged / "report" / "methods.md").read_text()
    lo, hi = clopper_pearson(340, 400)
    assert f"| ties | ties | density=0.5 | finetuned, slow | 85.00 [{100 * lo:.1f}, {100 * hi:.1f}] |" in md
    header = (merged / "report" / "methods.csv").read_text().splitlines()[0]
    assert header.startswith("label,method,setting,models,ref,ref ci_low,ref ci_high,s1,")
    assert ",avg shifts,avg rho,val,val ci_low,val ci_high" in header
    (name, line, curve), = search_tables(record_view(read_records(merged)))
    assert name == "ties" and line == ("ties of finetuned, slow; search: density in [0.1, 0.5]; chosen on "
                                       "validation: density=0.5")
    assert [row[0] for row in curve] == ["density=0.1", "density=0.5 (chosen)"]
    assert curve[0][1].startswith("70.00 [")
    assert "<h2>Method comparison</h2>" in page and (merged / "report" / "search_ties.svg").exists()
    # the page's sections, in order: the comparison before effective robustness, calibration before the plots
    assert re.findall(r"<h2>([^<]+)</h2>", page) == ["Alpha selection", "Table", "Method comparison",
                                                     "Effective robustness", "Calibration", "Plots"]


def test_each_merge_is_a_labelled_point_on_the_scatter_and_has_a_validation_curve(runs):
    _, merged, _ = runs
    view = record_view(read_records(merged))
    data = plotted_data(plot_scatter(view, "s1"))
    x, y = data["merge: ties"]
    assert (x[0], y[0]) == pytest.approx((logit(0.85), logit(190 / 300)))
    avg = plotted_data(plot_scatter(view, AVG))["merge: ties"]
    assert avg[1][0] == pytest.approx(logit((190 / 300 + 120 / 200) / 2))
    curve = plotted_data(plot_search(view, "ties"))
    assert np.allclose(curve["val (validation)"][0], [0.1, 0.5]) and np.allclose(curve["val (validation)"][1],
                                                                                 [70, 90])
    assert np.allclose(curve["chosen"][0], [0.5])

"""The report: tables, plots and index.html rebuilt from a fixture results.jsonl."""

from __future__ import annotations

import base64
import csv
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import special, stats

from wiseft.config import ReportConfig
from wiseft.core import OUTPUT_ENSEMBLE, Record, is_restricted_metric, output_ensemble_name, record_view, summary_table
from wiseft.io import append_records, read_records
from wiseft.report import build_report, select_alpha
from wiseft.report.plots import plot_alpha_curves, plot_scatter, plotted_data
from wiseft.report.robustness import AVG, build_baselines, logit, robustness_rows
from wiseft.report.tables import build_tables, table_markdown

TESTBED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-testbed" / "robustness_top1s.csv"

ALPHAS = [round(0.1 * i, 1) for i in range(11)]
# Accuracy at alpha 0 (zero-shot) and 1 (fine-tuned), with a WiSE-FT bump in between.
CURVES = {
    ("imagenet", "reference", 50000): (0.68, 0.81, 0.04),
    ("imagenet-v2", "shift", 10000): (0.62, 0.70, 0.04),
    ("imagenet-sketch", "shift", 50000): (0.48, 0.46, 0.05),
    ("imagenet-r", "shift", 30000): (0.77, 0.66, 0.05),
    ("imagenet-a", "shift", 7500): (0.50, 0.37, 0.06),
    ("objectnet", "shift", 18574): (0.54, 0.52, 0.05),
    ("imagenet-val-heldout", "validation", 10000): (0.69, 0.82, 0.04),
}
# ImageNet accuracy on the classes of ImageNet-R, -A and ObjectNet (reference records).
RESTRICTED = {
    "top1_on_imagenet-r_classes": (10000, (0.90, 0.95, 0.01)),
    "top1_on_imagenet-a_classes": (10000, (0.88, 0.94, 0.01)),
    "top1_on_objectnet_classes": (6250, (0.80, 0.89, 0.02)),
}


def curve(a: float, lo: float, hi: float, bump: float) -> float:
    return (1 - a) * lo + a * hi + 4 * bump * a * (1 - a)


def make_run(run_dir: Path, validation: bool = True, model: str = "finetuned", provenance: dict | None = None,
             scale: float = 1.0) -> Path:
    """A results.jsonl shaped like an ImageNet WiSE-FT run, with counts (``scale`` shrinks
    the WiSE-FT bump, as the output-space ensemble's smaller one)."""
    records = []
    prov = {"mode": "e2e", **(provenance or {})}
    for (ds, role, n), (lo, hi, bump) in CURVES.items():
        if role == "validation" and not validation:
            continue
        for a in ALPHAS:
            k = round(n * curve(a, lo, hi, bump * scale))
            records.append(Record(model, a, ds, role, "top1", k / n, k, n, prov))
    for metric, (n, (lo, hi, bump)) in RESTRICTED.items():
        for a in ALPHAS:
            k = round(n * curve(a, lo, hi, bump * scale))
            records.append(Record(model, a, "imagenet", "reference", metric, k / n, k, n, prov))
    append_records(run_dir / "results.jsonl", records)
    return run_dir


def test_fixture_selects_alpha_on_validation(tmp_path):
    records = read_records(make_run(tmp_path))
    # validation peaks where d/da[(1-a)0.69 + 0.82a + 0.16a(1-a)] = 0: a = 0.906 -> grid 0.9
    assert select_alpha(records, "finetuned") == 0.9
    assert record_view(records).reference == "imagenet"


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_report_from_fixture(tmp_path):
    run = make_run(tmp_path / "run")
    index = build_report(run)
    out = run / "report"
    assert index == out / "index.html"
    shifts = ["imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet", "avg"]
    expected = [f"scatter_{s}" for s in shifts] + ["alpha_finetuned"]
    for stem in expected:
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 5000, f"{stem}.{ext}"
        img = mpimg.imread(out / f"{stem}.png")
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 400
        rgb = img[..., :3]
        # Not blank: plenty of non-white pixels, and more than two colours.
        assert (rgb.min(axis=2) < 0.9).mean() > 0.02
        assert len(np.unique((rgb.reshape(-1, 3) * 255).astype(int), axis=0)) > 20
        assert (out / f"{stem}.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    for name in ("table.md", "table.csv", "table.tex", "robustness.csv", "robustness.md", "points.csv"):
        assert (out / name).stat().st_size > 100

    page = index.read_text()
    # Offline: every PNG embedded as data, nothing fetched from the network.
    assert len(re.findall(r"src='data:image/png;base64,", page)) == len(expected)
    assert "http://" not in page and "https://" not in page
    first = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alpha = <b>0.9</b>" in page and "objectnet" in page and "No baseline for" not in page
    # The robustness testbed's standard models are the default baseline, ObjectNet included.
    assert "robustness testbed" in page and "objectnet: 87 baseline models, x = top1_on_objectnet_classes" in page
    assert "average over imagenet-v2, imagenet-sketch, imagenet-r, imagenet-a, objectnet: 82 baseline models" in page


def test_table_rows(tmp_path):
    out = tmp_path / "run" / "report"
    build_report(make_run(tmp_path / "run"))
    rows = list(csv.reader((out / "table.csv").open()))
    header = rows[0]
    assert header[:4] == ["model", "row", "alpha", "imagenet"] and "avg shifts" in header and "avg rho" in header
    assert header.index("avg shifts") + 1 == header.index("avg ref., shifts")
    by_label = {r[1]: r for r in rows[1:]}
    col = header.index("imagenet")
    assert float(by_label["zero-shot (alpha=0)"][col]) == pytest.approx(68.0, abs=0.01)
    assert float(by_label["fine-tuned (alpha=1)"][col]) == pytest.approx(81.0, abs=0.01)
    assert float(by_label["WiSE-FT, alpha=0.5"][col]) == pytest.approx(100 * curve(0.5, 0.68, 0.81, 0.04), abs=0.01)
    assert "WiSE-FT, selected alpha=0.9" in by_label
    # Oracle: the best alpha of each column, on that column's own test set.
    oracle, oracle_alpha = by_label["WiSE-FT, best alpha per column (oracle)"], by_label["oracle alpha"]
    ca = header.index("imagenet-a")
    best = max(ALPHAS, key=lambda a: curve(a, 0.50, 0.37, 0.06))
    assert float(oracle_alpha[ca]) == best
    assert float(oracle[ca]) == pytest.approx(100 * curve(best, 0.50, 0.37, 0.06), abs=0.01)
    md = (out / "table.md").read_text()
    assert "oracle" in md and f"(alpha={best:g})" in md
    # Table 1's averages at alpha 0.5, by hand from the fixture's curves.
    half = by_label["WiSE-FT, alpha=0.5"]
    shifts = [curve(0.5, *v) for (d, role, _), v in CURVES.items() if role == "shift"]
    avg = sum(shifts) / 5
    assert float(half[header.index("avg shifts")]) == pytest.approx(100 * avg, abs=0.01)
    ref = curve(0.5, 0.68, 0.81, 0.04)
    assert float(half[header.index("avg ref., shifts")]) == pytest.approx(100 * (ref + avg) / 2, abs=0.01)
    tex = (out / "table.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\bottomrule" in tex and "imagenet-v2" in tex


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_fixed_alpha_and_no_validation(tmp_path):
    run = make_run(tmp_path / "a", validation=False)
    build_report(run, settings=ReportConfig(alpha=0.3))
    assert "alpha = <b>0.3</b> (fixed by the user)" in (run / "report" / "index.html").read_text()
    build_report(run, out_dir=tmp_path / "b")
    assert "alpha = <b>0.5</b> (default 0.5" in (tmp_path / "b" / "index.html").read_text()


def test_scatter_plot_data(tmp_path):
    records = read_records(make_run(tmp_path))
    view = record_view(records)
    fits = build_baselines(view, ["imagenet-v2", "imagenet-a"])
    fig = plot_scatter(view, "imagenet-v2", fits, {"finetuned": 0.9})
    lines = plotted_data(fig)
    x, y = lines["WiSE-FT finetuned"]
    by = {(r.alpha, r.dataset): r.value for r in records if r.metric == "top1"}
    np.testing.assert_allclose(x, logit(np.array([by[a, "imagenet"] for a in ALPHAS])))
    np.testing.assert_allclose(y, logit(np.array([by[a, "imagenet-v2"] for a in ALPHAS])))
    zx, zy = lines["zero-shot"]
    assert (zx[0], zy[0]) == pytest.approx((logit(0.68), logit(0.62)))
    fx, fy = lines["fine-tuned"]
    assert (fx[0], fy[0]) == pytest.approx((logit(0.81), logit(0.70)))
    # The baseline fit line is the fit's prediction along the x axis.
    bx, bb = lines["baseline fit"]
    np.testing.assert_allclose(bb, logit(fits["imagenet-v2"].predict(1 / (1 + np.exp(-bx)))), rtol=1e-9)
    assert fits["imagenet-v2"].n == 87 and "baseline models (n=87)" in " ".join(lines)
    # Ticks are percent labels.
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels and all(s.endswith("%") for s in labels)
    # Error bars: the interval of the fine-tuned point on the shift axis.
    assert len(fig.axes[0].collections) >= 2


def test_logit_axes_near_one(tmp_path):
    """Accuracies up to 99.9% (and a perfect 100%) still get a finite place and % ticks."""
    recs = []
    for a, (ref, sh) in zip([0.0, 0.5, 1.0], [(0.95, 0.9), (0.99, 0.97), (0.999, 1.0)]):
        recs += [Record("m", a, "ref", "reference", "top1", ref, round(ref * 10000), 10000),
                 Record("m", a, "shift1", "shift", "top1", sh, round(sh * 10000), 10000)]
    fig = plot_scatter(record_view(recs), "shift1")
    ax = fig.axes[0]
    x, y = plotted_data(fig)["WiSE-FT m"]
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
    assert ax.get_xlim()[1] > logit(0.999)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "99.9%" in labels or "99.99%" in labels
    fig2 = plot_alpha_curves(record_view(recs), "m", selected=1.0)
    assert len(fig2.axes[0].get_lines()) >= 3


def test_rows_for_user_baselines(tmp_path):
    """Baseline models given as records with alpha null feed the fit for any dataset."""
    recs = [Record("m", a, "news", "reference", "top1", v) for a, v in [(0.0, 0.6), (1.0, 0.9)]]
    recs += [Record("m", a, "tweets", "shift", "top1", v) for a, v in [(0.0, 0.5), (1.0, 0.55)]]
    for i, (x, y) in enumerate([(0.6, 0.4), (0.7, 0.45), (0.8, 0.52), (0.9, 0.6)]):
        recs += [Record(f"b{i}", None, "news", "reference", "top1", x), Record(f"b{i}", None, "tweets", "shift", "top1", y)]
    view = record_view(recs)
    fits = build_baselines(view)
    rows = robustness_rows(view, fits)
    assert {r.alpha for r in rows if r.shift == "tweets"} == {0.0, 1.0}
    tables = build_tables(view, {"m": 0.5}, rows)
    assert "avg rho" in tables[0].columns and "oracle" in table_markdown(tables)


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_two_models_and_objectnet_baseline_from_records(tmp_path):
    run = make_run(tmp_path)
    extra = [Record("aggressive", r.alpha, r.dataset, r.role, r.metric, min(1.0, r.value * (1 + 0.05 * r.alpha)))
             for r in read_records(run)]
    for name, ref, obj in [("resnet50", 0.76, 0.30), ("resnet101", 0.78, 0.35)]:
        extra += [Record(name, None, "imagenet", "reference", "top1", ref), Record(name, None, "objectnet", "shift", "top1", obj)]
    append_records(run / "results.jsonl", extra)
    build_report(run, settings=ReportConfig(alpha=0.35, use_default_baselines=False))
    page = (run / "report" / "index.html").read_text()
    assert "objectnet: 2 baseline models, x = imagenet" in page and "No baseline for: imagenet-v2" in page
    assert page.count("not evaluated in this run") == 2
    rows = list(csv.reader((run / "report" / "table.csv").open()))
    assert {r[0] for r in rows[1:]} == {"aggressive", "finetuned"}
    view = record_view(read_records(run))
    fig = plot_scatter(view, "avg", build_baselines(view, [
        "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet"]))
    data = plotted_data(fig)
    assert {"WiSE-FT aggressive", "WiSE-FT finetuned", "zero-shot", "baseline fit"} <= set(data)
    assert (run / "report" / "alpha_aggressive.png").exists()


@pytest.mark.skipif(not TESTBED.exists(), reason="raw testbed results not present")
def test_effective_robustness_as_the_paper_computes_it(tmp_path):
    """rho on ImageNet-R uses the measured ImageNet accuracy on its classes; the average
    uses one line fitted on the testbed models' averaged accuracies: both by hand."""
    records = read_records(make_run(tmp_path))
    view = record_view(records)
    with TESTBED.open() as f:
        raw = [r for r in csv.DictReader(f) if r["model_type"] == "STANDARD"]
    rows = {(r.alpha, r.shift): r for r in robustness_rows(view, build_baselines(
        view, [d for d, role, _ in CURVES if role == "shift"]))}

    def line(xcol, ycols):
        keep = [r for r in raw if r[xcol] and all(r[c] for c in ycols)]
        x = np.array([float(r[xcol]) for r in keep]) / 100
        y = np.array([np.mean([float(r[c]) for c in ycols]) for r in keep]) / 100
        return stats.linregress(special.logit(x), special.logit(y))

    a = 0.5
    x_r = round(10000 * curve(a, 0.90, 0.95, 0.01)) / 10000
    y_r = round(30000 * curve(a, 0.77, 0.66, 0.05)) / 30000
    fit = line("val-on-imagenet-r-classes", ["imagenet-r"])
    assert rows[a, "imagenet-r"].acc_x == pytest.approx(x_r)
    assert rows[a, "imagenet-r"].rho == pytest.approx(y_r - special.expit(fit.slope * special.logit(x_r) + fit.intercept))
    cols = ["imagenetv2-matched-frequency-format-val", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet-1.0-beta"]
    fit = line("val", cols)
    ref = round(50000 * curve(a, 0.68, 0.81, 0.04)) / 50000
    ys = [round(n * curve(a, *v)) / n for (d, role, n), v in CURVES.items() if role == "shift"]
    expect = np.mean(ys) - special.expit(fit.slope * special.logit(ref) + fit.intercept)
    assert rows[a, AVG].rho == pytest.approx(expect)
    # Without the class-restricted records a shift on a class subset gets no rho (never estimated).
    plain = record_view([r for r in records if not is_restricted_metric(r.metric)])
    shifts = {r.shift for r in robustness_rows(plain, build_baselines(plain, ["imagenet-r"]))}
    assert "imagenet-r" not in shifts
    # The scatter's x axis is the class-restricted accuracy.
    fig = plot_scatter(view, "imagenet-r", build_baselines(view, ["imagenet-r"]))
    x, _ = plotted_data(fig)["WiSE-FT finetuned"]
    assert x[5] == pytest.approx(logit(x_r)) and "classes" in fig.axes[0].get_xlabel()


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_output_space_ensemble_in_tables_and_plots(tmp_path):
    run = make_run(tmp_path)
    make_run(tmp_path, model=output_ensemble_name("finetuned"), provenance={"method": OUTPUT_ENSEMBLE}, scale=0.5)
    build_report(run)
    rows = list(csv.reader((run / "report" / "table.csv").open()))
    header, by_label = rows[0], {r[1]: r for r in rows[1:]}
    assert {r[0] for r in rows[1:]} == {"finetuned"}  # the ensemble's rows sit in its fine-tune's block
    col = header.index("imagenet")
    assert float(by_label["output-space ensemble, alpha=0.5"][col]) == pytest.approx(
        100 * curve(0.5, 0.68, 0.81, 0.02), abs=0.01)
    # Its own alpha, chosen on its own validation records: argmax of curve(a, .69, .82, .02) on the grid.
    best = max(ALPHAS, key=lambda a: round(10000 * curve(a, 0.69, 0.82, 0.02)))
    assert f"output-space ensemble, selected alpha={best:g}" in by_label
    view = record_view(read_records(run))
    fig = plot_scatter(view, "imagenet-v2", {}, {"finetuned": 0.9})
    x, y = plotted_data(fig)["finetuned (output ensemble)"]
    assert y[5] == pytest.approx(logit(round(10000 * curve(0.5, 0.62, 0.70, 0.02)) / 10000))
    fig = plot_alpha_curves(view, "finetuned", 0.9, ensemble=output_ensemble_name("finetuned"))
    a, v = plotted_data(fig)["avg shifts (output ensemble)"]
    assert len(a) == len(ALPHAS)
    assert "output ensemble" in (run / "report" / "robustness.md").read_text()


def _primary(model, alpha, ds, role, values, primary):
    return [Record(model, alpha, ds, role, m, v, provenance={"primary": True} if m == primary else {})
            for m, v in values.items()]


def test_each_dataset_uses_its_primary_metric(tmp_path, capsys):
    """FMoW-like run: worst-region accuracy is the shift's primary metric; --metric top1 forces top-1."""
    from wiseft.cli import main

    recs = []
    for a, (ref, top, worst, val_top, val_worst) in zip([0.0, 0.5, 1.0], [(0.6, 0.5, 0.3, 0.6, 0.2),
                                                                           (0.7, 0.6, 0.45, 0.7, 0.5),
                                                                           (0.8, 0.55, 0.35, 0.8, 0.4)]):
        recs += _primary("finetuned", a, "fmow-id", "reference", {"top1": ref, "worst_region_acc": ref - 0.1}, "top1")
        recs += _primary("finetuned", a, "fmow-ood", "shift", {"top1": top, "worst_region_acc": worst,
                                                               "ece": 0.01}, "worst_region_acc")
        recs += _primary("finetuned", a, "fmow-val", "validation", {"top1": val_top, "worst_region_acc": val_worst},
                         "worst_region_acc")
    append_records(tmp_path / "results.jsonl", recs)
    assert main(["report", str(tmp_path)]) == 0
    rows = list(csv.reader((tmp_path / "report" / "table.csv").open()))
    header, by_label = rows[0], {r[1]: r for r in rows[1:]}
    assert header[3:5] == ["fmow-id", "fmow-ood (worst_region_acc)"]
    assert float(by_label["fine-tuned (alpha=1)"][4]) == pytest.approx(35.0)
    # Chosen on validation worst-region accuracy (0.5 at alpha 0.5), not top-1 (0.8 at alpha 1).
    assert "WiSE-FT, selected alpha=0.5" in by_label
    assert float(by_label["WiSE-FT, alpha=0.5"][header.index("avg ref., shifts")]) == pytest.approx(100 * (0.7 + 0.45) / 2)
    assert main(["report", str(tmp_path), "--metric", "top1"]) == 0
    rows = list(csv.reader((tmp_path / "report" / "table.csv").open()))
    header, by_label = rows[0], {r[1]: r for r in rows[1:]}
    assert header[3:5] == ["fmow-id", "fmow-ood"] and float(by_label["fine-tuned (alpha=1)"][4]) == pytest.approx(55.0)
    assert "WiSE-FT, selected alpha=1" in by_label
    with pytest.raises(ValueError, match="not an accuracy"):
        build_report(tmp_path, settings=ReportConfig(metric="ece"))
    with pytest.raises(ValueError, match="no records of metric 'top5'.*worst_region_acc"):
        build_report(tmp_path, settings=ReportConfig(metric="top5"))
    # The run's summary table follows the same rule.
    assert "fmow-ood (worst_region_acc)" in summary_table(read_records(tmp_path))


def test_report_command_takes_a_baseline_csv(tmp_path, capsys):
    from wiseft.cli import main

    recs = [Record("finetuned", a, "news", "reference", "top1", v, int(v * 100), 100)
            for a, v in [(0.0, 0.6), (0.5, 0.8), (1.0, 0.9)]]
    recs += [Record("finetuned", a, "tweets", "shift", "top1", v, int(v * 100), 100)
             for a, v in [(0.0, 0.5), (0.5, 0.6), (1.0, 0.55)]]
    append_records(tmp_path / "results.jsonl", recs)
    (tmp_path / "b.csv").write_text("model,news,tweets\nb0,60,40\nb1,70,45\nb2,80,52\nb3,90,60\n")
    assert main(["report", str(tmp_path), "--baselines", str(tmp_path / "b.csv")]) == 0
    assert capsys.readouterr().out.startswith("report: ")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "tweets: 4 baseline models" in page


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_report_command_default_baselines_choice(tmp_path, capsys):
    from wiseft.cli import main

    run = make_run(tmp_path)
    assert main(["report", str(run), "--default-baselines", "timm"]) == 0
    page = (run / "report" / "index.html").read_text()
    assert "timm results/" in page and "robustness testbed" not in page and "No baseline for: objectnet" in page


def _merge(stage: str, index: int) -> dict:
    return {"merge": {"name": "ties", "method": "ties", "models": ["m"], "params": {}, "point": {"d": index},
                      "point_index": index, "search": {"d": [0, 1]}, "stage": stage, "chosen": index == 1}}


def test_one_view_of_the_records():
    """record_view groups a run once for every stage: the curves, the baseline models, each
    merge's chosen point and search, each dataset under one metric for all of them, and the
    reference set's class-restricted accuracies beside the points."""
    flag = {"primary": True}
    recs = [
        Record("m", 0.0, "ref", "reference", "top1", 0.6, provenance=flag),
        Record("m", 0.0, "ref", "reference", "top1_on_s_classes", 0.8),
        Record("m", 0.0, "ref-clean", "reference", "top1", 0.7),
        Record("m", 0.0, "ref-clean", "reference", "top1_on_s_classes", 0.1),  # not the reference set: no x axis
        Record("m", 0.0, "s", "shift", "worst", 0.3, provenance=flag),
        Record("m", 0.0, "s", "shift", "top1", 0.5),
        Record("m", 0.0, "val", "validation", "top1", 0.6),
        Record("m (output ensemble)", 0.0, "ref", "reference", "top1", 0.6, provenance={"method": OUTPUT_ENSEMBLE}),
        Record("b", None, "ref", "reference", "top1", 0.5),
        Record("b", None, "s", "shift", "top1", 0.4),  # not s's metric in this run
        Record("b", None, "s", "shift", "worst", 0.2),
        Record("ties", None, "val", "validation", "top1", 0.6, provenance=_merge("search", 0)),
        Record("ties", None, "val", "validation", "top1", 0.7, provenance=_merge("search", 1)),
        Record("ties", None, "ref", "reference", "top1", 0.65, provenance=_merge("test", 1)),
        Record("ties", None, "ref", "reference", "top1_on_s_classes", 0.85, provenance=_merge("test", 1)),
    ]
    view = record_view(recs)
    assert (view.reference, view.shifts, view.validation) == ("ref", ["s"], ["val"])
    assert view.models == ["m", "m (output ensemble)"] and view.is_output_ensemble("m (output ensemble)")
    assert not view.is_output_ensemble("m")

    def values(points):
        return {k: r.value for k, r in points.items()}

    assert values(view.curves["m"][0.0]) == {"ref": 0.6, "ref-clean": 0.7, "s": 0.3, "val": 0.6,
                                             "top1_on_s_classes": 0.8}
    assert values(view.baselines["b"]) == {"ref": 0.5, "s": 0.2}
    assert view.merge_names == ["ties"] and values(view.merges["ties"]) == {"ref": 0.65, "top1_on_s_classes": 0.85}
    assert {i: [r.value for r in rs] for i, rs in view.searches["ties"].items()} == {0: [0.6], 1: [0.7]}
    top1 = record_view(recs, "top1")  # one metric named: every dataset that has it
    assert top1.curves["m"][0.0]["s"].value == 0.5 and top1.baselines["b"]["s"].value == 0.4
    assert record_view([]).reference is None


def test_a_shift_only_the_baseline_models_have_is_not_averaged():
    """The average over shifts is over the run's own shifts: a shift that only baseline
    models were scored on used to empty the average's scatter plot (a ValueError)."""
    recs = [Record("m", a, d, role, "top1", v) for a in (0.0, 1.0)
            for d, role, v in (("news", "reference", 0.6 + 0.3 * a), ("tweets", "shift", 0.5 + 0.05 * a))]
    recs += [Record(f"b{i}", None, d, role, "top1", v) for i in range(3)
             for d, role, v in (("news", "reference", 0.6 + 0.1 * i), ("tweets", "shift", 0.4 + 0.05 * i),
                                ("other", "shift", 0.3 + 0.05 * i))]
    view = record_view(recs)
    assert view.shifts == ["tweets"] and set(view.baselines["b0"]) == {"news", "tweets", "other"}
    fits = build_baselines(view)
    assert set(fits) == {"tweets", AVG} and fits[AVG].parts == ("tweets",)
    _, y = plotted_data(plot_scatter(view, AVG, fits))["WiSE-FT m"]
    np.testing.assert_allclose(y, logit(np.array([0.5, 0.55])))

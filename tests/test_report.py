"""The report: tables, plots and index.html rebuilt from a fixture results.jsonl."""

from __future__ import annotations

import base64
import csv
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from wiseft.plots import plot_alpha_curves, plot_scatter, plotted_data
from wiseft.report import build_report, build_tables, reference_dataset, table_markdown
from wiseft.results import Record, append_records, read_records
from wiseft.robustness import build_baselines, logit, robustness_rows, select_alpha

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


def curve(a: float, lo: float, hi: float, bump: float) -> float:
    return (1 - a) * lo + a * hi + 4 * bump * a * (1 - a)


def make_run(run_dir: Path, validation: bool = True) -> Path:
    """A results.jsonl shaped like an ImageNet WiSE-FT run, with counts."""
    records = []
    for (ds, role, n), (lo, hi, bump) in CURVES.items():
        if role == "validation" and not validation:
            continue
        for a in ALPHAS:
            k = round(n * curve(a, lo, hi, bump))
            records.append(Record("finetuned", a, ds, role, "top1", k / n, k, n, {"mode": "e2e"}))
    append_records(run_dir / "results.jsonl", records)
    return run_dir


def test_fixture_selects_alpha_on_validation(tmp_path):
    records = read_records(make_run(tmp_path))
    # validation peaks where d/da[(1-a)0.69 + 0.82a + 0.16a(1-a)] = 0: a = 0.906 -> grid 0.9
    assert select_alpha(records, "finetuned") == 0.9
    assert reference_dataset(records) == "imagenet"


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
    assert "alpha = <b>0.9</b>" in page and "objectnet" in page and "No baseline for: objectnet" in page


def test_table_rows(tmp_path):
    out = tmp_path / "run" / "report"
    build_report(make_run(tmp_path / "run"))
    rows = list(csv.reader((out / "table.csv").open()))
    header = rows[0]
    assert header[:4] == ["model", "row", "alpha", "imagenet"] and "avg shifts" in header and "avg rho" in header
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
    tex = (out / "table.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\bottomrule" in tex and "imagenet-v2" in tex


def test_fixed_alpha_and_no_validation(tmp_path):
    run = make_run(tmp_path / "a", validation=False)
    build_report(run, alpha=0.3)
    assert "alpha = <b>0.3</b> (fixed by the user)" in (run / "report" / "index.html").read_text()
    build_report(run, out_dir=tmp_path / "b")
    assert "alpha = <b>0.5</b> (default 0.5" in (tmp_path / "b" / "index.html").read_text()


def test_scatter_plot_data(tmp_path):
    records = read_records(make_run(tmp_path))
    fits = build_baselines(records, "imagenet", ["imagenet-v2", "imagenet-a"])
    fig = plot_scatter(records, "imagenet-v2", "imagenet", fits, {"finetuned": 0.9})
    lines = plotted_data(fig)
    x, y = lines["WiSE-FT finetuned"]
    by = {(r.alpha, r.dataset): r.value for r in records}
    np.testing.assert_allclose(x, logit(np.array([by[a, "imagenet"] for a in ALPHAS])))
    np.testing.assert_allclose(y, logit(np.array([by[a, "imagenet-v2"] for a in ALPHAS])))
    zx, zy = lines["zero-shot"]
    assert (zx[0], zy[0]) == pytest.approx((logit(0.68), logit(0.62)))
    fx, fy = lines["fine-tuned"]
    assert (fx[0], fy[0]) == pytest.approx((logit(0.81), logit(0.70)))
    # The baseline fit line is the fit's prediction along the x axis.
    bx, bb = lines["baseline fit"]
    np.testing.assert_allclose(bb, logit(fits["imagenet-v2"].predict(1 / (1 + np.exp(-bx)))), rtol=1e-9)
    assert fits["imagenet-v2"].n > 500 and "baseline models (n=" in " ".join(lines)
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
    fig = plot_scatter(recs, "shift1", "ref")
    ax = fig.axes[0]
    x, y = plotted_data(fig)["WiSE-FT m"]
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
    assert ax.get_xlim()[1] > logit(0.999)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "99.9%" in labels or "99.99%" in labels
    fig2 = plot_alpha_curves(recs, "m", selected=1.0)
    assert len(fig2.axes[0].get_lines()) >= 3


def test_rows_for_user_baselines(tmp_path):
    """Baseline models given as records with alpha null feed the fit for any dataset."""
    recs = [Record("m", a, "news", "reference", "top1", v) for a, v in [(0.0, 0.6), (1.0, 0.9)]]
    recs += [Record("m", a, "tweets", "shift", "top1", v) for a, v in [(0.0, 0.5), (1.0, 0.55)]]
    for i, (x, y) in enumerate([(0.6, 0.4), (0.7, 0.45), (0.8, 0.52), (0.9, 0.6)]):
        recs += [Record(f"b{i}", None, "news", "reference", "top1", x), Record(f"b{i}", None, "tweets", "shift", "top1", y)]
    fits = build_baselines(recs, "news", ["tweets"])
    rows = robustness_rows(recs, fits, "news")
    assert {r.alpha for r in rows if r.shift == "tweets"} == {0.0, 1.0}
    tables = build_tables(recs, {"m": 0.5}, rows)
    assert "avg rho" in tables[0].columns and "oracle" in table_markdown(tables)


def test_two_models_and_objectnet_baseline_from_records(tmp_path):
    run = make_run(tmp_path)
    extra = [Record("aggressive", r.alpha, r.dataset, r.role, "top1", min(1.0, r.value * (1 + 0.05 * r.alpha)))
             for r in read_records(run)]
    for name, ref, obj in [("resnet50", 0.76, 0.30), ("resnet101", 0.78, 0.35)]:
        extra += [Record(name, None, "imagenet", "reference", "top1", ref), Record(name, None, "objectnet", "shift", "top1", obj)]
    append_records(run / "results.jsonl", extra)
    build_report(run, alpha=0.35)
    page = (run / "report" / "index.html").read_text()
    assert "No baseline for" not in page and "objectnet: 2 baseline models" in page
    assert page.count("not evaluated in this run") == 2
    rows = list(csv.reader((run / "report" / "table.csv").open()))
    assert {r[0] for r in rows[1:]} == {"aggressive", "finetuned"}
    fig = plot_scatter(read_records(run), "avg", "imagenet", build_baselines(read_records(run), "imagenet", [
        "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet"]))
    data = plotted_data(fig)
    assert {"WiSE-FT aggressive", "WiSE-FT finetuned", "zero-shot", "baseline fit (mean of shifts)"} <= set(data)
    assert (run / "report" / "alpha_aggressive.png").exists()


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

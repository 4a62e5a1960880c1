"""The report stage's one settings object (ReportConfig): ``build_report`` and ``wiseft
report`` take it, and the keyword and positional forms of before issue 14 give the same files."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from pydantic import ValidationError

from wiseft.cli import main
from wiseft.config import ReportConfig
from wiseft.core import Record
from wiseft.io import append_records
from wiseft.report import build_report

FILES = ("table.md", "table.csv", "table.tex", "robustness.md", "robustness.csv", "points.csv", "index.html",
         "scatter_avg.svg", "alpha_finetuned.png")


def _files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def make_run(run_dir: Path) -> Path:
    """A small run: a reference, one shift and a validation set at five alphas, with counts."""
    records = []
    for ds, role, lo, hi in [("news", "reference", 0.6, 0.9), ("tweets", "shift", 0.5, 0.55),
                             ("news-val", "validation", 0.62, 0.88)]:
        for a in (0.0, 0.25, 0.5, 0.75, 1.0):
            k = round(400 * ((1 - a) * lo + a * hi + 0.16 * a * (1 - a)))
            records.append(Record("finetuned", a, ds, role, "top1", k / 400, k, 400))
    append_records(run_dir / "results.jsonl", records)
    return run_dir


def test_report_config_defaults_and_a_misspelt_field():
    import wiseft.report.robustness

    assert ReportConfig() == ReportConfig(alpha=None, metric="primary", baselines=None, use_default_baselines=True,
                                          default_baselines="testbed")
    assert wiseft.report.robustness.DEFAULT_BASELINES == "testbed"
    with pytest.raises(ValidationError, match="metrc"):
        ReportConfig(metrc="top1")  # a misspelt field is named, not ignored


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_the_settings_object_says_what_the_report_shows(tmp_path):
    run = make_run(tmp_path / "run")
    with matplotlib.rc_context({"svg.hashsalt": "fixed"}):  # SVG element ids are random otherwise
        build_report(run, tmp_path / "settings", ReportConfig(alpha=0.25, metric="top1"))
        with pytest.raises(TypeError):  # a bare alpha or loose keywords are gone (CHANGELOG 0.2.0)
            build_report(run, tmp_path / "keywords", alpha=0.25, metric="top1")
    expect = _files(tmp_path / "settings")
    # by hand: news 0.45 + 0.225 + 0.03 = 0.705, tweets 0.375 + 0.1375 + 0.03 = 0.5425 (282 and 217 of 400)
    assert "| WiSE-FT, selected alpha=0.25 | 70.50 | 54.25 | 54.25 | 62.38 |" in expect["table.md"].decode()
    assert b"Not computed: no baseline models were measured on news and tweets (the packaged" in expect["robustness.md"]


def test_report_command_flags_fill_the_settings(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    with matplotlib.rc_context({"svg.hashsalt": "fixed"}):
        assert main(["report", str(run), "--alpha", "0.75", "--metric", "top1", "--no-default-baselines"]) == 0
        build_report(run, tmp_path / "lib", ReportConfig(alpha=0.75, metric="top1", use_default_baselines=False))
    assert capsys.readouterr().out == f"report: {run / 'report' / 'index.html'}\n"
    assert _files(run / "report") == _files(tmp_path / "lib")


def test_settings_are_checked_before_anything_is_read(tmp_path):
    missing = tmp_path / "no-run"
    with pytest.raises(ValueError, match="unknown default baselines 'imagenet'; choose from"):
        build_report(missing, settings=ReportConfig(default_baselines="imagenet"))
    with pytest.raises(ValueError, match="metric 'temperature' is not an accuracy"):
        build_report(missing, settings=ReportConfig(metric="temperature"))
    assert not missing.exists()

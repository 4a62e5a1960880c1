"""The report of a run with pair sets: retrieval records in a table with intervals, the
trade-off of retrieval gained against zero-shot accuracy kept, alpha by alpha, and
reports without pair sets unchanged."""

from __future__ import annotations

import pytest

from wiseft.core import Record
from wiseft.io import append_records
from wiseft.report import build_report


def _rec(alpha, dataset, role, metric, value, correct=None, total=None, primary=False):
    return Record("finetuned", alpha, dataset, role, metric, value, correct, total,
                  {"primary": True} if primary else {})


def pair_run_records() -> list[Record]:
    """A sweep's records: retrieval on a pair test set (the reference) and on held-out pairs,
    zero-shot accuracy on two labelled shifts; retrieval rises with alpha, accuracy falls."""
    out = []
    for i, a in enumerate((0.0, 0.5, 1.0)):
        for ds, role in (("caps", "reference"), ("caps-val", "validation")):
            out.append(_rec(a, ds, role, "r@1", 0.3 + 0.2 * i, 60 + 40 * i, 200, primary=True))
            for k in (1, 5, 10):
                out += [_rec(a, ds, role, f"r@{k}_i2t", min(1, 0.3 + 0.2 * i + 0.05 * k), 30 + 20 * i, 100),
                        _rec(a, ds, role, f"r@{k}_t2i", min(1, 0.3 + 0.2 * i + 0.04 * k), 30 + 20 * i, 100)]
        for ds, acc in (("topics", 0.8), ("headlines", 0.7)):
            out.append(_rec(a, ds, "shift", "top1", acc - 0.1 * i * i, int(100 * (acc - 0.1 * i * i)), 100,
                            primary=True))
    return out


@pytest.mark.slow  # over 2 s (draws every plot): the quick tier stays under a minute
def test_report_shows_retrieval_against_zero_shot_accuracy(tmp_path):
    append_records(tmp_path / "results.jsonl", pair_run_records())
    page = build_report(tmp_path).read_text()
    out = tmp_path / "report"
    table = (out / "retrieval.md").read_text()
    assert "r@1_i2t" in table and "r@10_t2i" in table and "topics top1" in table
    assert "[" in table  # intervals
    assert "| finetuned | 1 * |" in table and "| finetuned | 0.5 |" in table  # the best held-out r@1: alpha 1
    csv = (out / "retrieval.csv").read_text().splitlines()
    assert csv[0].startswith("model,alpha,selected,dataset,role,metric,value,ci_low,ci_high")
    assert (out / "tradeoff_finetuned.png").exists() and (out / "tradeoff_finetuned.svg").exists()
    assert "<h2>Retrieval</h2>" in page and "retrieval gained" in page


def test_tradeoff_points_one_per_alpha():
    from wiseft.report.plots import plotted_data
    from wiseft.report.retrieval import plot_tradeoff, tradeoff_points

    points = tradeoff_points(pair_run_records(), "finetuned")
    # x: the pair test set's r@1 (not the held-out pairs'); y: the mean of the labelled sets' accuracy
    assert points == [(0.0, pytest.approx(0.3), pytest.approx(0.75)), (0.5, pytest.approx(0.5), pytest.approx(0.65)),
                      (1.0, pytest.approx(0.7), pytest.approx(0.35))]
    xs, ys = plotted_data(plot_tradeoff(pair_run_records(), "finetuned", 1.0))["WiSE-FT finetuned"]
    assert list(xs) == pytest.approx([30, 50, 70]) and list(ys) == pytest.approx([75, 65, 35])


@pytest.mark.slow  # over 2 s (draws every plot): the quick tier stays under a minute
def test_no_pair_sets_no_retrieval_part(tmp_path):
    records = [r for r in pair_run_records() if not r.metric.startswith("r@")]
    records = [Record(r.model, r.alpha, r.dataset, "reference" if r.dataset == "topics" else r.role, r.metric,
                      r.value, r.correct, r.total, r.provenance) for r in records]
    append_records(tmp_path / "results.jsonl", records)
    page = build_report(tmp_path).read_text()
    assert not (tmp_path / "report" / "retrieval.md").exists()
    assert not list((tmp_path / "report").glob("tradeoff_*"))
    assert "Retrieval" not in page and "robustness.csv, points.csv." in page


def test_a_pair_shift_stays_out_of_the_accuracy_averages():
    from wiseft.core import record_view, summary_table
    from wiseft.report.tables import AVG_SHIFTS, build_tables

    # topics is the labelled reference here; headlines a labelled shift; caps a pair shift
    records = [Record(r.model, r.alpha, r.dataset, "reference" if r.dataset == "topics" else
                      "shift" if r.role == "reference" else r.role, r.metric, r.value, r.correct, r.total,
                      r.provenance) for r in pair_run_records()]
    text = summary_table(records)
    assert text.splitlines()[0] == "| model | alpha | topics | caps (r@1) | headlines | caps-val (r@1) | avg shifts |"
    assert text.splitlines()[2].endswith("| 70.00 |")  # alpha 0: headlines alone, not (30 + 70) / 2
    table = build_tables(record_view(records, "primary"), {"finetuned": 0.5}, [])[0]
    assert table.columns == ["topics", "caps (r@1)", "headlines", AVG_SHIFTS, "avg ref., shifts"]
    assert table.rows[0][1][3] == (pytest.approx(0.7), 0.0)


def test_a_pair_reference_has_no_mean_with_the_shifts_accuracy():
    """With pairs as the reference set (examples/bbc_pairs.yaml), its recall is not averaged
    with the labelled shifts' accuracy: the table keeps ``avg shifts`` and drops
    ``avg ref., shifts`` (it read (r@1 + accuracy) / 2 before)."""
    from wiseft.core import record_view
    from wiseft.report.tables import AVG_REF_SHIFTS, AVG_SHIFTS, build_tables

    records = pair_run_records()  # caps, the pair set, is the reference; topics and headlines labelled shifts
    assert {r.dataset for r in records if r.role == "reference"} == {"caps"}
    table = build_tables(record_view(records, "primary"), {"finetuned": 0.5}, [])[0]
    assert AVG_SHIFTS in table.columns and AVG_REF_SHIFTS not in table.columns

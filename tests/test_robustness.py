"""Effective robustness, Clopper-Pearson intervals and alpha selection, checked against
values computed by hand or independently with scipy."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from wiseft.core import Record, RecordView, record_view
from wiseft.report import clopper_pearson, effective_robustness, fit_baseline, select_alpha
from wiseft.report.robustness import (
    AVG,
    BaselineFit,
    build_baselines,
    fit_baselines,
    load_baseline_table,
    logit,
    record_interval,
    robustness_rows,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-baselines"  # shared/ beside the checkout
TESTBED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-testbed" / "robustness_top1s.csv"
FIVE = ["imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet"]


def _view(reference: str) -> RecordView:
    """A run whose only record is a zero-shot point on ``reference``: no baseline models of its own."""
    return record_view([Record("m", 0.0, reference, "reference", "top1", 0.5)])


# --- the baseline fit and rho -------------------------------------------------------


def test_fit_exact_line_by_hand():
    # Points on logit(y) = 2 logit(x) + 1 exactly.
    x = special.expit([0.0, 1.0, 2.0])
    y = special.expit([1.0, 3.0, 5.0])
    fit = fit_baseline(x, y, shift="s")
    assert fit.slope == pytest.approx(2.0) and fit.intercept == pytest.approx(1.0)
    # beta(0.5) = expit(2 * 0 + 1) = 0.7310585786...; rho = 0.8 - that.
    assert fit.predict(0.5) == pytest.approx(0.7310585786300049)
    assert effective_robustness(0.5, 0.8, fit) == pytest.approx(0.8 - 0.7310585786300049)


def test_fit_matches_scipy_linregress():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.55, 0.9, 40)
    y = special.expit(0.9 * special.logit(x) - 0.5 + rng.normal(0, 0.1, 40))
    fit = fit_baseline(x, y)
    ref = stats.linregress(special.logit(x), special.logit(y))
    assert fit.slope == pytest.approx(ref.slope, rel=1e-9)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-9)
    for acc_ref, acc_shift in [(0.6, 0.5), (0.76, 0.7), (0.95, 0.9)]:
        beta = special.expit(ref.slope * special.logit(acc_ref) + ref.intercept)
        assert effective_robustness(acc_ref, acc_shift, fit) == pytest.approx(acc_shift - beta, abs=1e-12)


def test_identity_baseline_rho_is_the_difference():
    fit = BaselineFit("s", 1.0, 0.0, (0.5, 0.6), (0.5, 0.6), "ref")
    assert effective_robustness(0.7, 0.75, fit) == pytest.approx(0.05)


def test_fit_needs_two_distinct_points():
    with pytest.raises(ValueError, match="at least 2"):
        fit_baseline([0.5], [0.4], shift="imagenet-a")
    with pytest.raises(ValueError, match="same x"):
        fit_baseline([0.5, 0.5], [0.4, 0.3])


def test_logit_clips_near_zero_and_one():
    # p is clipped to [1e-4, 1 - 1e-4]: logit(1) = log(0.9999 / 0.0001) = log(9999) = 9.21024036...
    assert logit(1.0) == pytest.approx(math.log(9999), rel=1e-12)
    assert logit(0.0) == pytest.approx(-math.log(9999), rel=1e-12)
    assert logit(0.999) == pytest.approx(special.logit(0.999))
    assert logit(1.0) > logit(0.999)


# --- Clopper-Pearson ----------------------------------------------------------------


def test_clopper_pearson_by_hand():
    # 0 of n: upper = 1 - 0.025**(1/n); n of n: lower = 0.025**(1/n) (closed forms).
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0))
    # 5 of 10: the textbook (0.1871, 0.8129), symmetric about 0.5.
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.18709, abs=1e-5) and high == pytest.approx(0.81291, abs=1e-5)
    assert low + high == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_clopper_pearson_tails_match_binomial(kn):
    """The defining property: P(X >= k | low) = P(X <= k | high) = 2.5% (scipy.stats.binom)."""
    k, n = kn
    low, high = clopper_pearson(k, n)
    assert 0 <= low <= k / n <= high <= 1
    if k > 0:
        assert stats.binom.sf(k - 1, n, low) == pytest.approx(0.025, rel=1e-5)
    if k < n:
        assert stats.binom.cdf(k, n, high) == pytest.approx(0.025, rel=1e-5)


def test_record_interval_and_bad_counts():
    assert record_interval(Record("m", 0.5, "d", "shift", "top1", 0.5)) is None
    r = Record("m", 0.5, "d", "shift", "top1", 0.5, 5, 10)
    assert record_interval(r) == clopper_pearson(5, 10)
    with pytest.raises(ValueError):
        clopper_pearson(11, 10)


# --- baselines ----------------------------------------------------------------------


def test_timm_baseline_is_imagenet_1k_only():
    table = load_baseline_table(packaged="timm")
    assert len(table) > 1000
    for name in table:
        tag = name.split("@")[0].split(".", 1)[1]
        assert "in1k" in tag and not any(w in name for w in ("in21k", "in22k", "in12k", "laion", "jft", "clip", "dist"))
    fits = build_baselines(_view("imagenet"), FIVE, default="timm")
    # No objectnet in timm, so no fit for it and none for the average over all five.
    assert set(fits) == {"imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a"}
    assert fits["imagenet-v2"].x_dataset == "imagenet"
    # timm's imagenet-r-clean column is ImageNet val on ImageNet-R's classes: the x axis.
    assert fits["imagenet-r"].x_dataset == "top1_on_imagenet-r_classes"
    # Other reference sets get no ImageNet default.
    assert build_baselines(_view("cifar10"), ["cifar10.1"]) == {}
    with pytest.raises(ValueError, match="unknown default baselines"):
        build_baselines(_view("imagenet"), FIVE, default="timmm")


@pytest.mark.skipif(not SHARED.exists(), reason="raw timm results not present")
def test_timm_baseline_matches_raw_timm_files():
    """Refit imagenet-v2 from the raw timm CSVs with scipy: same line as the package's."""
    def read(name):
        with (SHARED / name).open() as f:
            return {(r["model"], r["img_size"]): float(r["top1"]) / 100 for r in csv.DictReader(f)}

    ref, v2 = read("results-imagenet.csv"), read("results-imagenetv2-matched-frequency.csv")
    keys = [k for k in load_baseline_table(packaged="timm")]
    pairs = [(ref[tuple(k.split("@"))], v2[tuple(k.split("@"))]) for k in keys]
    x, y = np.array(pairs).T
    line = stats.linregress(special.logit(x), special.logit(y))
    fit = build_baselines(_view("imagenet"), ["imagenet-v2"], default="timm")["imagenet-v2"]
    assert fit.slope == pytest.approx(line.slope, rel=1e-9) and fit.intercept == pytest.approx(line.intercept, rel=1e-9)


def _testbed_standard() -> list[dict[str, str]]:
    with TESTBED.open() as f:
        return [r for r in csv.DictReader(f) if r["model_type"] == "STANDARD"]


@pytest.mark.skipif(not TESTBED.exists(), reason="raw testbed results not present")
def test_default_baseline_is_the_testbed_standard_models():
    """The default: the testbed's STANDARD models, every shift with the paper's x axis,
    refitted here with scipy from the raw testbed file."""
    raw = _testbed_standard()
    table = load_baseline_table()
    assert len(table) == len(raw) == 87
    row = table["resnet50"]
    src = next(r for r in raw if r["model"] == "resnet50")
    assert row["imagenet"] == pytest.approx(float(src["val"]) / 100)
    assert row["top1_on_objectnet_classes"] == pytest.approx(float(src["val-on-objectnet-classes"]) / 100)
    fits = build_baselines(_view("imagenet"), FIVE)
    assert set(fits) == {*FIVE, AVG}
    assert fits["imagenet-sketch"].x_dataset == "imagenet"
    for shift, col, x_col in [("objectnet", "objectnet-1.0-beta", "val-on-objectnet-classes"),
                              ("imagenet-r", "imagenet-r", "val-on-imagenet-r-classes"),
                              ("imagenet-v2", "imagenetv2-matched-frequency-format-val", "val")]:
        pairs = np.array([(float(r[x_col]), float(r[col])) for r in raw if r[x_col] and r[col]]) / 100
        line = stats.linregress(special.logit(pairs[:, 0]), special.logit(pairs[:, 1]))
        assert fits[shift].n == len(pairs)
        assert fits[shift].slope == pytest.approx(line.slope, rel=1e-9), shift
        assert fits[shift].intercept == pytest.approx(line.intercept, rel=1e-9), shift
    assert fits["objectnet"].x_dataset == "top1_on_objectnet_classes"
    # The average: one line from ImageNet accuracy to the mean over the five shifts, over
    # the models that have all five (not the mean of the five lines).
    cols = ["imagenetv2-matched-frequency-format-val", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet-1.0-beta"]
    full = [r for r in raw if all(r[c] for c in cols)]
    x = np.array([float(r["val"]) for r in full]) / 100
    y = np.array([np.mean([float(r[c]) for c in cols]) for r in full]) / 100
    line = stats.linregress(special.logit(x), special.logit(y))
    avg = fits[AVG]
    assert avg.n == len(full) == 82 and avg.parts == tuple(FIVE) and avg.x_dataset == "imagenet"
    assert avg.slope == pytest.approx(line.slope, rel=1e-9) and avg.intercept == pytest.approx(line.intercept, rel=1e-9)
    # Fitted over only the shifts a run has.
    three = build_baselines(_view("imagenet"), FIVE[:3])[AVG]
    assert three.parts == tuple(FIVE[:3]) and three.slope != pytest.approx(avg.slope)


def test_user_baseline_csv(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("model,news,tweets\na,60,40\nb,70,45\nc,80,\n")
    assert load_baseline_table(p) == {"a": {"news": 0.6, "tweets": 0.4}, "b": {"news": 0.7, "tweets": 0.45}, "c": {"news": 0.8}}
    fits = fit_baselines(load_baseline_table(p), "news", ["tweets", "other"])
    assert set(fits) == {"tweets"} and fits["tweets"].n == 2  # 'other' unmeasured: no avg fit either
    p.write_text("model,news\na,sixty\n")
    with pytest.raises(ValueError, match=r"b.csv:2.*news"):
        load_baseline_table(p)
    # A -clean column is the reference on the shift's classes; model_type is metadata.
    p.write_text("model,imagenet,imagenet-r-clean,imagenet-r,model_type\na,70,90,30,STANDARD\n")
    assert load_baseline_table(p) == {"a": {"imagenet": 0.7, "top1_on_imagenet-r_classes": 0.9, "imagenet-r": 0.3}}


def test_average_fit_by_hand():
    """avg: logit(mean of the shifts) against logit(reference), over models with every shift."""
    table = {"a": {"ref": 0.6, "s": 0.5, "t": 0.3}, "b": {"ref": 0.8, "s": 0.7, "t": 0.5},
             "c": {"ref": 0.9, "s": 0.8, "t": 0.6}, "d": {"ref": 0.7, "s": 0.1}}
    fit = fit_baselines(table, "ref", ["s", "t"])[AVG]
    x, y = special.logit([0.6, 0.8, 0.9]), special.logit([0.4, 0.6, 0.7])
    line = stats.linregress(x, y)
    assert fit.n == 3 and fit.slope == pytest.approx(line.slope) and fit.intercept == pytest.approx(line.intercept)


def _rec(model, alpha, ds, role, v, metric="top1"):
    return Record(model, alpha, ds, role, metric, v)


def test_robustness_rows_by_hand():
    fit_s = BaselineFit("s", 1.0, 0.0, (0.5, 0.6), (0.5, 0.6), "ref")  # beta(x) = x
    fit_t = BaselineFit("t", 1.0, -1.0, (0.5, 0.6), (0.5, 0.6), "top1_on_t_classes")
    fit_avg = BaselineFit(AVG, 1.0, -0.5, (0.5, 0.6), (0.5, 0.6), "ref", parts=("s", "t"))
    fits = {"s": fit_s, "t": fit_t, AVG: fit_avg}
    recs = [_rec("m", 0.0, "ref", "reference", 0.7), _rec("m", 0.0, "s", "shift", 0.75), _rec("m", 0.0, "t", "shift", 0.4)]
    rows = {r.shift: r for r in robustness_rows(record_view(recs), fits)}
    assert rows["s"].rho == pytest.approx(0.05)
    # No class-restricted reference accuracy measured: no rho on t (never estimated).
    assert "t" not in rows
    # The average has its own line at the reference accuracy: mean(.75, .4) - expit(logit(.7) - .5).
    assert rows[AVG].acc_shift == pytest.approx(0.575)
    assert rows[AVG].rho == pytest.approx(0.575 - special.expit(special.logit(0.7) - 0.5))
    # The measured class-restricted accuracy is t's x.
    recs.append(_rec("m", 0.0, "ref", "reference", 0.9, metric="top1_on_t_classes"))
    rows = {r.shift: r for r in robustness_rows(record_view(recs), fits)}
    assert rows["t"].acc_x == 0.9 and rows["t"].rho == pytest.approx(0.4 - special.expit(special.logit(0.9) - 1))
    assert rows[AVG].rho == pytest.approx(0.575 - special.expit(special.logit(0.7) - 0.5))  # unchanged


def test_robustness_rows_use_each_datasets_primary_metric():
    primary = {"primary": True}
    fit = BaselineFit("s", 1.0, 0.0, (0.5, 0.6), (0.5, 0.6), "ref")
    recs = [Record("m", 0.0, "ref", "reference", "top1", 0.7, provenance=primary),
            Record("m", 0.0, "s", "shift", "top1", 0.75),
            Record("m", 0.0, "s", "shift", "worst_region_acc", 0.55, provenance=primary)]
    assert robustness_rows(record_view(recs), {"s": fit})[0].rho == pytest.approx(0.55 - 0.7)
    assert robustness_rows(record_view(recs, "top1"), {"s": fit})[0].rho == pytest.approx(0.75 - 0.7)


# --- alpha selection ----------------------------------------------------------------


def _val(alpha, v, model="m", role="validation", metric="top1"):
    return Record(model, alpha, "val", role, metric, v)


def test_select_alpha_highest_validation_wins():
    recs = [_val(0.0, 0.5), _val(0.3, 0.7), _val(0.7, 0.72), _val(1.0, 0.6)]
    assert select_alpha(recs, "m") == 0.7


def test_select_alpha_ties_toward_half_then_smaller():
    assert select_alpha([_val(0.2, 0.8), _val(0.6, 0.8), _val(1.0, 0.8)], "m") == 0.6
    assert select_alpha([_val(0.4, 0.8), _val(0.6, 0.8)], "m") == 0.4  # equally close: smaller
    assert select_alpha([_val(0.0, 0.8), _val(1.0, 0.8)], "m") == 0.0


def test_select_alpha_never_reads_test_sets():
    recs = [_val(0.2, 0.7), _val(0.8, 0.6)]
    recs += [_val(0.8, 0.99, role="shift"), _val(0.8, 0.99, role="reference"), _val(0.8, 0.99, model="other")]
    recs += [_val(0.8, 0.99, metric="macro_f1")]
    assert select_alpha(recs, "m") == 0.2


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]), st.floats(0, 1)), min_size=1, max_size=6),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.sampled_from(["reference", "shift"])), max_size=6),
)
def test_select_alpha_ignores_any_test_records(val, test):
    recs = [_val(a, v) for a, v in val]
    noisy = recs + [_val(a, v, role=role) for a, v, role in test]
    assert select_alpha(noisy, "m") == select_alpha(recs, "m")
    assert select_alpha(recs, "m") in {a for a, _ in val}


def test_select_alpha_on_the_validation_sets_primary_metric():
    f1 = {"primary": True}
    recs = [_val(0.2, 0.9), _val(0.8, 0.6)]  # top1 prefers 0.2
    recs += [Record("m", 0.2, "val", "validation", "macro_f1", 0.3, provenance=f1),
             Record("m", 0.8, "val", "validation", "macro_f1", 0.5, provenance=f1)]
    recs += [_val(0.2, 0.01, metric="ece"), _val(0.8, 0.2, metric="ece")]
    assert select_alpha(recs, "m") == 0.8
    assert select_alpha(recs, "m", metric="top1") == 0.2


def test_select_alpha_defaults_and_errors():
    assert select_alpha([_val(0.9, 0.99, role="shift")], "m") == 0.5  # no validation records
    assert select_alpha([_val(0.2, 0.7)], "m", fixed=0.35) == 0.35
    with pytest.raises(ValueError, match="'nobody'"):
        select_alpha([_val(0.2, 0.7)], "nobody")
    with pytest.raises(ValueError, match="fixed alpha"):
        select_alpha([_val(0.2, 0.7)], "m", fixed=1.5)


def test_select_alpha_averages_several_validation_sets():
    """Each alpha's score is the mean over the validation sets. By hand: alpha 0.2 has
    (0.9, 0.2), mean 0.55; 0.5 has (0.7, 0.55), mean 0.625; 0.8 has (0.58, 0.6), mean 0.59:
    0.5 wins, where the first set alone or the best set picks 0.2, the last set alone or
    the worst set 0.8."""
    scores = {0.2: (0.9, 0.2), 0.5: (0.7, 0.55), 0.8: (0.58, 0.6)}
    recs = [Record("m", a, ds, "validation", "top1", v) for a, vs in scores.items() for ds, v in zip(("v1", "v2"), vs)]
    assert select_alpha(recs, "m") == 0.5

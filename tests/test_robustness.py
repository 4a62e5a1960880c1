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

from wiseft.results import Record
from wiseft.robustness import (
    BaselineFit,
    build_baselines,
    clopper_pearson,
    effective_robustness,
    fit_baseline,
    fit_baselines,
    load_baseline_table,
    logit,
    record_interval,
    robustness_rows,
    select_alpha,
)

SHARED = Path("/work/shared/data/imagenet-baselines")


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
    assert np.isfinite(logit(1.0)) and np.isfinite(logit(0.0))
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


def test_default_baseline_is_imagenet_1k_only():
    table = load_baseline_table()
    assert len(table) > 1000
    for name in table:
        tag = name.split("@")[0].split(".", 1)[1]
        assert "in1k" in tag and not any(w in name for w in ("in21k", "in22k", "in12k", "laion", "jft", "clip", "dist"))
    fits = build_baselines([], "imagenet", ["imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet"])
    assert set(fits) == {"imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a"}  # no objectnet
    assert fits["imagenet-v2"].x_dataset == "imagenet"
    assert fits["imagenet-r"].x_dataset == "imagenet-r-clean" and fits["imagenet-r"].x_from_reference
    # Other reference sets get no ImageNet default.
    assert build_baselines([], "cifar10", ["cifar10.1"]) == {}


@pytest.mark.skipif(not SHARED.exists(), reason="raw timm results not present")
def test_default_baseline_matches_raw_timm_files():
    """Refit imagenet-v2 from the raw timm CSVs with scipy: same line as the package's."""
    def read(name):
        with (SHARED / name).open() as f:
            return {(r["model"], r["img_size"]): float(r["top1"]) / 100 for r in csv.DictReader(f)}

    ref, v2 = read("results-imagenet.csv"), read("results-imagenetv2-matched-frequency.csv")
    keys = [k for k in load_baseline_table()]
    pairs = [(ref[tuple(k.split("@"))], v2[tuple(k.split("@"))]) for k in keys]
    x, y = np.array(pairs).T
    line = stats.linregress(special.logit(x), special.logit(y))
    fit = build_baselines([], "imagenet", ["imagenet-v2"])["imagenet-v2"]
    assert fit.slope == pytest.approx(line.slope, rel=1e-9) and fit.intercept == pytest.approx(line.intercept, rel=1e-9)


def test_user_baseline_csv(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("model,news,tweets\na,60,40\nb,70,45\nc,80,\n")
    assert load_baseline_table(p) == {"a": {"news": 0.6, "tweets": 0.4}, "b": {"news": 0.7, "tweets": 0.45}, "c": {"news": 0.8}}
    fits = fit_baselines(load_baseline_table(p), "news", ["tweets", "other"])
    assert set(fits) == {"tweets"} and fits["tweets"].n == 2
    p.write_text("model,news\na,sixty\n")
    with pytest.raises(ValueError, match=r"b.csv:2.*news"):
        load_baseline_table(p)


def _rec(model, alpha, ds, role, v):
    return Record(model, alpha, ds, role, "top1", v)


def test_robustness_rows_by_hand():
    fit_s = BaselineFit("s", 1.0, 0.0, (0.5, 0.6), (0.5, 0.6), "ref")  # beta(x) = x
    fit_t = BaselineFit("t", 1.0, -1.0, (0.5, 0.6), (0.5, 0.6), "t-clean", x_from_reference=(1.0, 0.0))
    recs = [_rec("m", 0.0, "ref", "reference", 0.7), _rec("m", 0.0, "s", "shift", 0.75), _rec("m", 0.0, "t", "shift", 0.4)]
    rows = {r.shift: r for r in robustness_rows(recs, {"s": fit_s, "t": fit_t}, "ref")}
    assert rows["s"].rho == pytest.approx(0.05)
    # t-clean not measured: x estimated from ref through the identity map; beta = expit(logit(.7) - 1).
    beta_t = special.expit(special.logit(0.7) - 1)
    assert rows["t"].x_estimated and rows["t"].rho == pytest.approx(0.4 - beta_t)
    assert rows["avg"].rho == pytest.approx((0.05 + 0.4 - beta_t) / 2)
    # Measured clean accuracy is used when present.
    recs.append(_rec("m", 0.0, "t-clean", "reference", 0.9))
    rows = {r.shift: r for r in robustness_rows(recs, {"s": fit_s, "t": fit_t}, "ref")}
    assert not rows["t"].x_estimated and rows["t"].rho == pytest.approx(0.4 - special.expit(special.logit(0.9) - 1))


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


def test_select_alpha_defaults_and_errors():
    assert select_alpha([_val(0.9, 0.99, role="shift")], "m") == 0.5  # no validation records
    assert select_alpha([_val(0.2, 0.7)], "m", fixed=0.35) == 0.35
    with pytest.raises(ValueError, match="'nobody'"):
        select_alpha([_val(0.2, 0.7)], "nobody")
    with pytest.raises(ValueError, match="fixed alpha"):
        select_alpha([_val(0.2, 0.7)], "m", fixed=1.5)
    assert not math.isnan(select_alpha([_val(0.2, 0.7), _val(0.2, 0.9)], "m"))  # several sets: averaged

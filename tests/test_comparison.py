"""Paired comparison statistics against hand-computed values and direct scipy calls."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from utils.evaluation.comparison import bootstrap_interval, compare, paired_values, wilcoxon_p

REFERENCE = [{"fold": 1, "name": n, "iou": v, "hd95": h}
             for n, v, h in [("a", 0.5, 4.0), ("b", 0.6, 3.0), ("c", 0.7, 2.0), ("d", 0.8, 1.0)]]
EXPERIMENT = [{"fold": "1", "name": n, "iou": v, "hd95": h}  # fold as read back from a CSV
              for n, v, h in [("d", 0.7, 1.0), ("b", 0.6, 2.0), ("a", 0.6, 3.0), ("c", 0.9, 1.0), ("e", 0.1, 9.0)]]


def test_rows_are_paired_by_fold_and_name():
    ref, exp = paired_values(REFERENCE, EXPERIMENT, "iou")
    assert ref.tolist() == [0.5, 0.6, 0.7, 0.8]
    assert exp.tolist() == [0.6, 0.6, 0.9, 0.7]  # "e" has no partner and is left out


def test_mean_difference_and_wilcoxon_by_hand():
    row = {r["metric"]: r for r in compare(REFERENCE, EXPERIMENT, ["iou", "hd95"], "A", "B")}
    assert row["iou"]["n"] == 4
    assert row["iou"]["mean_difference"] == pytest.approx(0.05)  # (0.1 + 0 + 0.2 - 0.1) / 4
    assert row["iou"]["reference_mean"] == pytest.approx(0.65) and row["iou"]["experiment_mean"] == pytest.approx(0.7)
    # nonzero differences 0.1, 0.2, -0.1: ranks 1.5, 3, 1.5; W- = 1.5; exact two-sided p over the 2^3
    # sign patterns with tied ranks: P(W- <= 1.5) counts {}, {1.5 a}, {1.5 b} -> 3 of 8 -> p = 2 * 3/8
    assert row["iou"]["wilcoxon_p"] == pytest.approx(0.75)
    assert row["iou"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon([0.1, 0.2, -0.1]).pvalue)
    assert row["hd95"]["mean_difference"] == pytest.approx(-0.75)  # (-1 - 1 - 1 + 0) / 4


def test_bootstrap_interval_matches_scipy_with_the_same_seed():
    d = np.array([0.1, 0.0, 0.2, -0.1, 0.05, 0.3])
    low, high = bootstrap_interval(d, seed=11, resamples=2000)
    want = stats.bootstrap((d,), np.mean, n_resamples=2000, method="percentile",
                           rng=np.random.default_rng(11)).confidence_interval
    assert (low, high) == pytest.approx((want.low, want.high))
    assert low < d.mean() < high
    assert bootstrap_interval(d, seed=11, resamples=2000) == (low, high)  # fixed seed: repeatable


def test_degenerate_cases():
    assert bootstrap_interval(np.full(5, 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([0.3])))
    assert wilcoxon_p(np.zeros(6)) == 1.0
    assert math.isnan(wilcoxon_p(np.array([])))
    same = compare(REFERENCE, REFERENCE, ["iou"], "A", "A")[0]
    assert same["mean_difference"] == 0.0 and same["wilcoxon_p"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0

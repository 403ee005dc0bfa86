"""Run-level comparison statistics against hand-computed values on small tables."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from utils.evaluation.comparison import bootstrap_interval, compare
from utils.evaluation.run_comparison import (LARGER, WITHIN, difference_rows, experiment_rows, noise_floor,
                                             patient_interval, run_means, sign_flip_p, spread, t_interval)


def runs(values: dict[tuple[int, int], float], metric: str = "dice") -> list[dict]:
    return [{"fold": k, "seed": s, "n": 4, metric: v} for (k, s), v in values.items()]


def images_of(run_rows: list[dict], metric: str = "dice") -> list[dict]:
    """Two test patients per fold, two images each, every image at its run's value."""
    return [{"fold": r["fold"], "seed": r["seed"], "name": f"P{r['fold']}{p}_{i}", "patient": f"P{r['fold']}{p}",
             metric: r[metric]} for r in run_rows for p in (1, 2) for i in (1, 2)]


A = runs({(1, 1): 0.70, (1, 2): 0.74, (2, 1): 0.60, (2, 2): 0.62})
B = runs({(1, 1): 0.72, (1, 2): 0.73, (2, 1): 0.65, (2, 2): 0.66, (2, 3): 0.90})  # (2, 3) has no partner


def test_run_means_average_each_runs_images():
    rows = [{"fold": 1, "seed": 5, "name": "a", "dice": 0.5}, {"fold": 1, "seed": 5, "name": "b", "dice": 0.7},
            {"fold": "1", "seed": "6", "name": "a", "dice": 0.9}, {"fold": 2, "seed": 5, "name": "c", "dice": 0.1}]
    got = run_means(rows, ["dice"])
    assert [(r["fold"], r["seed"], r["n"]) for r in got] == [(1, 5, 2), ("1", "6", 1), (2, 5, 1)]
    assert [r["dice"] for r in got] == pytest.approx([0.6, 0.9, 0.1])


def test_spread_over_runs_folds_and_seeds_by_hand():
    s = spread(A, "dice")
    assert (s["n_runs"], s["n_folds"], s["n_seeds"]) == (4, 2, 2)
    assert s["run_mean"] == pytest.approx(0.665)
    # deviations 0.035, 0.075, -0.065, -0.045: squares sum 0.0131, / 3
    assert s["run_sd"] == pytest.approx(math.sqrt(0.0131 / 3))
    assert s["fold_sd"] == pytest.approx(0.11 / math.sqrt(2))  # fold means 0.72, 0.61
    assert s["seed_sd"] == pytest.approx(math.sqrt((0.02 ** 2 * 2 + 0.01 ** 2 * 2) / 2))  # pooled within fold
    assert noise_floor(A, "dice") == (pytest.approx(s["seed_sd"]), "seeds")
    one_seed = spread(runs({(1, 1): 0.7, (2, 1): 0.6}), "dice")
    assert math.isnan(one_seed["seed_sd"]) and one_seed["run_sd"] == pytest.approx(0.1 / math.sqrt(2))
    assert noise_floor(runs({(1, 1): 0.7, (2, 1): 0.6}), "dice")[1] == "runs"
    assert all(math.isnan(spread(runs({(1, 1): 0.7}), "dice")[k]) for k in ("run_sd", "fold_sd", "seed_sd"))


def test_differences_paired_by_fold_and_seed_by_hand():
    row = difference_rows("A", A, images_of(A), "B", B, images_of(B), ["dice"])[0]
    assert row["level"] == "run" and row["n"] == 4  # (2, 3) unpaired
    assert row["mean_difference"] == pytest.approx(0.025)  # (0.02 - 0.01 + 0.05 + 0.04) / 4
    half = stats.t.ppf(0.975, 3) * math.sqrt(0.0021 / 3) / 2  # sd of d: sqrt(0.0021 / 3), n = 4
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.025 - half, 0.025 + half))
    # |d| = .02 .01 .05 .04 (sum .12); sum of the flipped >= .10 only with nothing or .01 flipped: 2 of 16
    assert row["signflip_p"] == pytest.approx(2 * 2 / 16)
    assert row["noise_floor_sd"] == pytest.approx(math.sqrt(0.0005)) and row["noise_floor_source"] == "seeds"
    assert row["verdict"] == WITHIN  # the interval holds 0
    assert row["n_patients"] == 4  # two per fold, all of their images and runs together


def test_sign_flip_and_t_interval_edge_cases():
    assert sign_flip_p(np.array([0.1, 0.2, 0.3])) == pytest.approx(0.25)  # the floor with 3 runs: 2 / 2^3
    assert sign_flip_p(np.zeros(3)) == 1.0 and math.isnan(sign_flip_p(np.array([])))
    assert t_interval(np.array([0.2, 0.2])) == (0.2, 0.2)
    assert all(math.isnan(v) for v in t_interval(np.array([0.2])))


def test_verdict_within_noise_for_two_seed_sets_of_the_same_method():
    """B is the same method as A: its runs are the values of A's other seeds in each fold."""
    a = runs({(1, 1): 0.70, (1, 2): 0.74, (1, 3): 0.72, (2, 1): 0.60, (2, 2): 0.63, (2, 3): 0.61})
    b = runs({(1, 1): 0.74, (1, 2): 0.72, (1, 3): 0.70, (2, 1): 0.63, (2, 2): 0.61, (2, 3): 0.60})
    rows = difference_rows("A", a, images_of(a), "B", b, images_of(b), ["dice"])
    assert rows[0]["verdict"] == WITHIN
    shifted = runs({(r["fold"], r["seed"]): r["dice"] + 0.1 + 0.005 * i for i, r in enumerate(a)})
    assert difference_rows("A", a, images_of(a), "C", shifted, images_of(shifted), ["dice"])[0]["verdict"] == LARGER
    # consistent over runs but smaller than the reference's run-to-run sd: still within the noise
    small = runs({(r["fold"], r["seed"]): r["dice"] + 0.005 for r in a})
    assert difference_rows("A", a, images_of(a), "D", small, images_of(small), ["dice"])[0]["verdict"] == WITHIN
    lone = difference_rows("A", runs({(1, 1): 0.7}), [], "E", runs({(1, 1): 0.8}), [], ["dice"])[0]
    assert lone["verdict"].startswith("cannot tell")


def test_cluster_bootstrap_resamples_patients_not_images():
    """Identical images of a patient (unequal counts) give the interval of one image per patient."""
    per_patient = {"p1": 0.05, "p2": -0.02, "p3": 0.10, "p4": 0.01, "p5": 0.07, "p6": -0.04}
    counts = {"p1": 1, "p2": 4, "p3": 2, "p4": 3, "p5": 1, "p6": 5}

    def tables(copies: dict[str, int]) -> tuple[list[dict], list[dict]]:
        ref = [{"fold": 1, "seed": 1, "name": f"{p}_{i}", "patient": p, "dice": 0.5}
               for p, n in copies.items() for i in range(n)]
        exp = [{**r, "dice": 0.5 + per_patient[r["patient"]]} for r in ref]
        return ref, exp

    many = patient_interval(*tables(counts), "dice", seed=7)
    one = patient_interval(*tables({p: 1 for p in counts}), "dice", seed=7)
    assert many[0] == one[0] == 6
    assert many[1:] == pytest.approx(one[1:])
    assert many[1:] == pytest.approx(bootstrap_interval(np.array(list(per_patient.values())), seed=7))
    # resampling the 16 images instead would give a different, narrower interval
    images = np.repeat(list(per_patient.values()), list(counts.values()))
    low, high = bootstrap_interval(images, seed=7)
    assert high - low < many[2] - many[1]


def test_experiment_rows_take_every_metric_given():
    rows = experiment_rows({"A": [{"fold": 1, "seed": 1, "iou": 0.5, "dice": 0.6},
                                  {"fold": 1, "seed": 2, "iou": 0.7, "dice": 0.8}]}, ["iou", "dice"])
    assert [(r["level"], r["experiment"], r["metric"]) for r in rows] == [("experiment", "A", "iou"),
                                                                          ("experiment", "A", "dice")]
    assert rows[1]["run_mean"] == pytest.approx(0.7) and rows[1]["seed_sd"] == pytest.approx(0.2 / math.sqrt(2))


def test_a_fold_with_one_run_on_each_side_pairs_them_whatever_their_seeds():
    """Two single-seed experiments trained with different --seed pair by fold; folds with
    several seeds pair by seed (no cross-seed pairs)."""
    a = runs({(1, 3407): 0.70, (2, 1): 0.60, (2, 2): 0.64})
    b = runs({(1, 3417): 0.75, (2, 1): 0.61, (2, 2): 0.66, (2, 3): 0.99})
    row = difference_rows("A", a, images_of(a), "B", b, images_of(b), ["dice"])[0]
    assert row["n"] == 3 and row["mean_difference"] == pytest.approx((0.05 + 0.01 + 0.02) / 3)
    assert row["n_patients"] == 4
    image = compare(images_of(a), images_of(b), ["dice"], "A", "B")[0]
    assert image["level"] == "image" and image["n"] == 12  # 3 paired runs x 4 images
    assert image["mean_difference"] == pytest.approx((0.05 + 0.01 + 0.02) / 3)
    assert row["noise_floor_sd"] == pytest.approx(0.04 / math.sqrt(2))  # fold 2's two seeds of A

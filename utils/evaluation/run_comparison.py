"""Comparison of segmentation experiments at the level of training runs (docs/COMPARISON.md).

One trained model is one sample of training noise (initialisation, data order,
checkpoint selection on val). A *run* is one ``(fold, seed)`` of an experiment; its
value of a metric is the mean over that run's test images (:func:`run_means`). Rows
are plain dicts: per-image rows carry ``fold``, ``seed``, ``name``, ``patient`` and one
float per metric (the test script's ``per_image.csv``).

Per experiment (:func:`experiment_rows`, ``level = "experiment"``), per metric:
``n_runs``, ``n_folds``, ``n_seeds``; ``run_mean`` and ``run_sd`` over runs; ``fold_sd``,
the sd over folds of each fold's mean over its seeds; ``seed_sd``, the sd over seeds
within a fold, pooled over folds (``sqrt(sum_k sum_s (x_ks - mean_k)^2 / sum_k (n_k - 1))``).
Every sd has ``ddof = 1`` and is empty (NaN) where fewer than two values exist.

Per experiment against the reference, the first one named (:func:`difference_rows`,
``level = "run"``), per metric, over the runs both have (paired by ``(fold, seed)``; a
fold with one run on each side pairs those two whatever their seeds):

- ``mean_difference``: the mean of ``d = experiment - reference`` over paired runs;
- ``ci_low``, ``ci_high``: the 95 % Student t interval of that mean (``n - 1`` degrees of
  freedom; ``scipy.stats.ttest_1samp``);
- ``signflip_p``: the two-sided p-value of the exact sign-flip permutation test of the
  mean (every ``2^n`` sign pattern; Monte Carlo with :data:`SIGN_FLIP_DRAWS` patterns above
  :data:`EXACT_SIGN_FLIP_RUNS` runs; ``scipy.stats.permutation_test``). It assumes only
  that ``d`` is symmetric about 0 under no difference, and cannot fall below ``2 / 2^n``:
  0.25 with 3 runs, 0.0625 with 5; at least 6 paired runs are needed for p < 0.05;
- ``patient_ci_low``, ``patient_ci_high``: the within-run interval: a cluster bootstrap
  over test patients (the mean of patient means of the per-image differences, patients
  resampled with replacement, all of a patient's images and runs together); it holds
  the trained models fixed and says how much the test patients alone move the difference;
- ``noise_floor_sd``: the reference's own run-to-run sd: ``seed_sd`` when it has two or
  more seeds of a fold (``noise_floor_source = "seeds"``), else ``run_sd`` (``"runs"``:
  one seed per fold, so the sd also holds fold-to-fold differences);
- ``verdict``: :data:`LARGER` when the t interval excludes 0 *and* ``|mean_difference|``
  exceeds ``noise_floor_sd`` (consistent over runs, and more than what separates two
  runs of the reference); else :data:`WITHIN`; "cannot tell" with fewer than two paired
  runs or a reference of one run.

HD95 is better when lower; the verdict only says whether a difference stands out of
the noise, not which side is better.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from utils.evaluation.comparison import COLUMNS as IMAGE_COLUMNS
from utils.evaluation.comparison import CONFIDENCE, align_single_runs, bootstrap_interval, image_key, run_key

EXACT_SIGN_FLIP_RUNS = 16
SIGN_FLIP_DRAWS = 100_000
WITHIN = "within run-to-run noise"
LARGER = "larger than run-to-run noise"

#: runs.csv: one row per run (then one column per metric).
RUN_COLUMNS = ["fold", "seed", "n"]
#: comparison.csv: the per-image rows' columns (:data:`utils.evaluation.comparison.COLUMNS`), then
#: those of the ``experiment`` and of the ``run`` rows; a row leaves the others' cells empty.
EXPERIMENT_COLUMNS = ["n_runs", "n_folds", "n_seeds", "run_mean", "run_sd", "fold_sd", "seed_sd"]
DIFFERENCE_COLUMNS = ["signflip_p", "n_patients", "patient_ci_low", "patient_ci_high", "noise_floor_sd",
                      "noise_floor_source", "verdict"]
COMPARISON_COLUMNS = IMAGE_COLUMNS + EXPERIMENT_COLUMNS + DIFFERENCE_COLUMNS


def run_means(rows: Sequence[Mapping], metrics: Sequence[str]) -> list[dict]:
    """Per-image rows -> one row per ``(fold, seed)`` run, in first-seen order: ``fold``,
    ``seed``, ``n`` (its images) and each metric's mean over the run's images."""
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for row in rows:
        groups.setdefault(run_key(row), []).append(row)
    return [{"fold": group[0]["fold"], "seed": group[0].get("seed"), "n": len(group),
             **{m: float(np.mean([float(r[m]) for r in group])) for m in metrics}}
            for group in groups.values()]


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def spread(runs: Sequence[Mapping], metric: str) -> dict:
    """``n_runs, n_folds, n_seeds, run_mean, run_sd, fold_sd, seed_sd`` of ``metric`` over run
    rows (:func:`run_means`), as defined in the module docstring."""
    by_fold: dict[str, list[float]] = {}
    for row in runs:
        by_fold.setdefault(run_key(row)[0], []).append(float(row[metric]))
    values = [v for fold in by_fold.values() for v in fold]
    within = [(v - np.mean(fold)) ** 2 for fold in by_fold.values() for v in fold]
    dof = sum(len(fold) - 1 for fold in by_fold.values())
    return {"n_runs": len(values), "n_folds": len(by_fold), "n_seeds": len({run_key(r)[1] for r in runs}),
            "run_mean": float(np.mean(values)) if values else math.nan, "run_sd": _sd(values),
            "fold_sd": _sd([float(np.mean(fold)) for fold in by_fold.values()]),
            "seed_sd": float(math.sqrt(sum(within) / dof)) if dof else math.nan}


def noise_floor(runs: Sequence[Mapping], metric: str) -> tuple[float, str]:
    """The run-to-run sd of ``metric``: ``(seed_sd, "seeds")`` when defined, else ``(run_sd, "runs")``."""
    s = spread(runs, metric)
    return (s["seed_sd"], "seeds") if math.isfinite(s["seed_sd"]) else (s["run_sd"], "runs")


def paired_runs(reference: Sequence[Mapping], experiment: Sequence[Mapping], metric: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of the runs both lists hold (by ``(fold, seed)``), in the reference's order."""
    theirs = {run_key(r): float(r[metric]) for r in experiment}
    pairs = [(float(r[metric]), theirs[run_key(r)]) for r in reference if run_key(r) in theirs]
    ref, exp = (np.array(side, dtype=np.float64) for side in zip(*pairs)) if pairs else (np.array([]),) * 2
    return ref, exp


def t_interval(differences: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Student t interval of the mean of ``differences`` (NaN for fewer than 2; the value
    itself when all are equal)."""
    if differences.size < 2:
        return math.nan, math.nan
    if np.all(differences == differences[0]):
        return float(differences[0]), float(differences[0])
    interval = stats.ttest_1samp(differences, 0.0).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def sign_flip_p(differences: np.ndarray, seed: int = 3407) -> float:
    """Two-sided p-value of the sign-flip permutation test of ``mean(differences)``: exact up
    to :data:`EXACT_SIGN_FLIP_RUNS` values (1.0 for one value or all zero, NaN for none)."""
    if differences.size == 0:
        return math.nan
    if differences.size == 1 or not np.any(differences):
        return 1.0  # one run: its two sign patterns put it at either end
    exact = differences.size <= EXACT_SIGN_FLIP_RUNS
    result = stats.permutation_test((differences,), np.mean, permutation_type="samples",
                                    n_resamples=np.inf if exact else SIGN_FLIP_DRAWS,
                                    alternative="two-sided", rng=np.random.default_rng(seed))
    return float(result.pvalue)


def patient_differences(reference: Sequence[Mapping], experiment: Sequence[Mapping], metric: str) -> np.ndarray:
    """Per test patient (keyed by fold and patient), the mean of ``experiment - reference`` over
    the images both scored (paired by fold, seed and name): one value per patient."""
    theirs = {image_key(r): float(r[metric]) for r in experiment}
    by_patient: dict[tuple[str, str], list[float]] = {}
    for row in reference:
        key = image_key(row)
        if key in theirs:
            by_patient.setdefault((key[0], str(row["patient"])), []).append(theirs[key] - float(row[metric]))
    return np.array([np.mean(values) for values in by_patient.values()], dtype=np.float64)


def patient_interval(reference: Sequence[Mapping], experiment: Sequence[Mapping], metric: str,
                     seed: int = 3407) -> tuple[int, float, float]:
    """The cluster bootstrap (test patients resampled) of the mean patient difference:
    ``(patients, low, high)``."""
    differences = patient_differences(reference, experiment, metric)
    return (int(differences.size), *bootstrap_interval(differences, seed))


def verdict(mean_difference: float, low: float, high: float, floor: float, n: int) -> str:
    """The plain-words verdict of the module docstring."""
    if n < 2:
        return f"cannot tell: {n} paired run(s); train more seeds"
    if not math.isfinite(floor):
        return "cannot tell: the reference has one run; train more seeds"
    consistent = low > 0 or high < 0
    return LARGER if consistent and abs(mean_difference) > floor else WITHIN


def experiment_rows(runs: Mapping[str, Sequence[Mapping]], metrics: Iterable[str]) -> list[dict]:
    """``level = "experiment"`` rows: :func:`spread` of each experiment's runs and metric."""
    return [{"level": "experiment", "experiment": name, "metric": metric, **spread(exp_runs, metric)}
            for name, exp_runs in runs.items() for metric in metrics]


def difference_rows(reference_name: str, reference_runs: Sequence[Mapping], reference_images: Sequence[Mapping],
                    name: str, runs: Sequence[Mapping], images: Sequence[Mapping], metrics: Iterable[str],
                    seed: int = 3407) -> list[dict]:
    """``level = "run"`` rows of ``name`` against the reference, one per metric (module docstring);
    runs and images paired as :func:`utils.evaluation.comparison.align_single_runs` says."""
    ref_runs, exp_runs = align_single_runs(reference_runs, runs)
    ref_images, exp_images = align_single_runs(reference_images, images)
    out = []
    for metric in metrics:
        ref, exp = paired_runs(ref_runs, exp_runs, metric)
        d = exp - ref
        low, high = t_interval(d)
        mean = float(d.mean()) if d.size else math.nan
        floor, source = noise_floor(reference_runs, metric)
        patients, p_low, p_high = patient_interval(ref_images, exp_images, metric, seed)
        out.append({"level": "run", "experiment": name, "reference": reference_name, "metric": metric,
                    "n": int(d.size), "reference_mean": float(ref.mean()) if d.size else math.nan,
                    "experiment_mean": float(exp.mean()) if d.size else math.nan, "mean_difference": mean,
                    "ci_low": low, "ci_high": high, "signflip_p": sign_flip_p(d, seed), "n_patients": patients,
                    "patient_ci_low": p_low, "patient_ci_high": p_high, "noise_floor_sd": floor,
                    "noise_floor_source": source, "verdict": verdict(mean, low, high, floor, d.size)})
    return out


def _cell(value: float, sign: str = "") -> str:
    return f"{value:{sign}.4f}" if math.isfinite(value) else "n/a"


def format_experiments(rows: Sequence[Mapping]) -> list[str]:
    """Printable lines of :func:`experiment_rows`: per experiment and metric, mean +- sd over
    runs and the sd over folds and over seeds."""
    lines = []
    for row in rows:
        lines.append(f"{row['experiment']:<20} {row['metric']:<9} {_cell(row['run_mean'])} +- {_cell(row['run_sd'])}"
                     f"  over {row['n_runs']} runs ({row['n_folds']} fold(s) x {row['n_seeds']} seed(s)); "
                     f"sd over folds {_cell(row['fold_sd'])}, over seeds {_cell(row['seed_sd'])}")
    return lines


def format_differences(rows: Sequence[Mapping]) -> list[str]:
    """Printable lines of :func:`difference_rows`: difference [t interval] p, the within-run
    (patient) interval, the noise floor and the verdict."""
    lines = []
    for row in rows:
        lines.append(f"{row['experiment']:<20} {row['metric']:<9} "
                     f"{_cell(row['mean_difference'], '+')} [{_cell(row['ci_low'], '+')}, {_cell(row['ci_high'], '+')}]"
                     f"  p = {row['signflip_p']:<6.3g} ({row['n']} runs)"
                     f"  within-run [{_cell(row['patient_ci_low'], '+')}, {_cell(row['patient_ci_high'], '+')}]"
                     f"  noise floor {_cell(row['noise_floor_sd'])}: {row['verdict']}")
    return lines

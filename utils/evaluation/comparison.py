"""Paired comparison of two segmentation experiments on the same test images, within runs.

For each per-image metric, with ``d_i = metric_i(experiment) - metric_i(reference)``
over the images both scored (paired by fold, seed and image name, pooled over folds
and seeds; :func:`align_single_runs`; rows are tagged ``level = "image"``):

- ``mean_difference``: ``mean(d)``;
- ``ci_low``, ``ci_high``: the 95 % percentile bootstrap interval of ``mean(d)``,
  resampling images with replacement (``scipy.stats.bootstrap``, fixed seed);
- ``wilcoxon_p``: the two-sided Wilcoxon signed-rank p-value of ``d``
  (``scipy.stats.wilcoxon``; zero differences dropped as Wilcoxon did; 1.0 when every
  difference is zero).

What it does not say: the test images are the replicates, so it is blind to the
variance of training (a second seed of the same method can differ by more); images
of one patient are not independent, so both the interval and the p-value are
optimistic; several metrics and experiments compared at once call for a correction
of the p-values; and a difference on one data set is not a difference on another.
The comparison over training runs is :mod:`utils.evaluation.run_comparison`. HD95 is
better when lower.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95
COLUMNS = ["level", "experiment", "reference", "metric", "n", "reference_mean", "experiment_mean",
           "mean_difference", "ci_low", "ci_high", "wilcoxon_p"]


def run_key(row: Mapping) -> tuple[str, str]:
    """``(fold, seed)`` of a scored row as strings (``""`` without a seed), so that rows read
    back from a CSV compare equal."""
    seed = row.get("seed")
    return str(row["fold"]), "" if seed is None else str(seed)


def image_key(row: Mapping) -> tuple[str, str, str]:
    """``(fold, seed, name)``: the same image scored by the same run."""
    return (*run_key(row), row["name"])


def align_single_runs(reference: Sequence[Mapping], experiment: Sequence[Mapping]) -> tuple[list[dict], list[dict]]:
    """Rows as they are paired: runs pair by fold and seed, except that a fold in which each
    side has one run pairs those two whatever their seeds (two single-seed experiments
    trained with different ``--seed``): there the seed is dropped from the rows."""
    def seeds(rows: Sequence[Mapping]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for row in rows:
            fold, seed = run_key(row)
            found.setdefault(fold, set()).add(seed)
        return found

    ours, theirs = seeds(reference), seeds(experiment)
    single = {fold for fold in ours if len(ours[fold]) == 1 and len(theirs.get(fold, ())) == 1}
    drop = lambda rows: [{**r, "seed": None} if str(r["fold"]) in single else dict(r) for r in rows]
    return drop(reference), drop(experiment)


def paired_values(reference: Sequence[Mapping], experiment: Sequence[Mapping], metric: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The metric of the images both row lists hold (keyed by ``fold``, ``seed`` when present,
    and ``name``), in the reference's order: ``(reference values, experiment values)``."""
    theirs = {image_key(r): float(r[metric]) for r in experiment}
    keys = [image_key(r) for r in reference if image_key(r) in theirs]
    ours = {image_key(r): float(r[metric]) for r in reference}
    return (np.array([ours[k] for k in keys], dtype=np.float64),
            np.array([theirs[k] for k in keys], dtype=np.float64))


def bootstrap_interval(differences: np.ndarray, seed: int = 3407, resamples: int = BOOTSTRAP_RESAMPLES,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (NaN for fewer than 2)."""
    if differences.size < 2:
        return float("nan"), float("nan")
    if np.all(differences == differences[0]):
        return float(differences[0]), float(differences[0])
    result = stats.bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``differences`` (1.0 when all are zero, NaN
    when there are none)."""
    if differences.size == 0:
        return float("nan")
    if not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences, alternative="two-sided").pvalue)


def compare(reference: Sequence[Mapping], experiment: Sequence[Mapping], metrics: Iterable[str],
            reference_name: str, experiment_name: str, seed: int = 3407) -> list[dict]:
    """One row per metric (columns :data:`COLUMNS`) comparing ``experiment`` with ``reference``
    (images paired as :func:`align_single_runs` says)."""
    reference, experiment = align_single_runs(reference, experiment)
    rows = []
    for metric in metrics:
        ref, exp = paired_values(reference, experiment, metric)
        differences = exp - ref
        low, high = bootstrap_interval(differences, seed)
        rows.append({"level": "image", "experiment": experiment_name, "reference": reference_name, "metric": metric,
                     "n": int(differences.size),
                     "reference_mean": float(ref.mean()) if ref.size else float("nan"),
                     "experiment_mean": float(exp.mean()) if exp.size else float("nan"),
                     "mean_difference": float(differences.mean()) if differences.size else float("nan"),
                     "ci_low": low, "ci_high": high, "wilcoxon_p": wilcoxon_p(differences)})
    return rows


def format_comparison(rows: Sequence[Mapping]) -> list[str]:
    """Printable lines: one per experiment and metric, ``difference [CI] p``."""
    lines = []
    for row in rows:
        lines.append(f"{row['experiment']:<20} - {row['reference']:<20} {row['metric']:<9} "
                     f"{row['mean_difference']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]  "
                     f"p = {row['wilcoxon_p']:.4g}  (n = {row['n']})")
    return lines

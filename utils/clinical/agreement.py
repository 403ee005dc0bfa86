"""Agreement between two raters (or a model and a rater) on per-image clinical measures.

:func:`confusion_matrix` and :func:`weighted_kappa` (Cohen's kappa with none, linear or
quadratic disagreement weights) on categorical grades such as the meiboscore: scikit-learn's
``confusion_matrix`` and ``cohen_kappa_score`` behind a check of the categories, with NaN
(no warning) where kappa is undefined; :func:`agreement_table` pairs per-image rows of
measures (``utils.clinical.measures``) by name and summarises their differences.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sklearn import metrics
from sklearn.exceptions import UndefinedMetricWarning

KAPPA_WEIGHTS = (None, "linear", "quadratic")


def _check_ratings(a: Sequence[Any], b: Sequence[Any], categories: Sequence[Any]) -> None:
    """ValueError for unequal lengths, repeated categories or values outside ``categories``."""
    if len(a) != len(b):
        raise ValueError(f"the two ratings differ in length: {len(a)} and {len(b)}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct, got {list(categories)}")
    known = set(categories)
    for which, values in (("a", a), ("b", b)):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ValueError(f"{which} holds values outside the categories {list(categories)}: {unknown[:5]}")


def confusion_matrix(a: Sequence[Any], b: Sequence[Any], categories: Sequence[Any]) -> np.ndarray:
    """int64 ``[K, K]``: entry ``[i, j]`` counts items rated ``categories[i]`` by ``a`` and
    ``categories[j]`` by ``b``. ValueError for unequal lengths or unknown values."""
    _check_ratings(a, b, categories)
    if not len(a):
        return np.zeros((len(categories), len(categories)), dtype=np.int64)
    return metrics.confusion_matrix(list(a), list(b), labels=list(categories)).astype(np.int64)


def weighted_kappa(a: Sequence[Any], b: Sequence[Any], categories: Sequence[Any],
                   weights: str | None = "quadratic") -> float:
    """Cohen's kappa of two ratings of the same items, optionally weighted.

    ``categories``: the ordered categories (their positions are the ranks);
    ``weights``: "quadratic" (disagreement ``(i - j)^2``), "linear" (``|i - j|``) or None
    (unweighted: 1 off the diagonal). With ``O`` the observed and ``E`` the chance-expected
    (outer product of the marginals) proportions, ``kappa = 1 - sum(w O) / sum(w E)``
    (scikit-learn's ``cohen_kappa_score``). NaN when ``sum(w E) = 0`` (e.g. both ratings use
    one and the same category); ValueError for no items, unknown values or weights.
    """
    if weights not in KAPPA_WEIGHTS:
        raise ValueError(f"weights must be 'quadratic', 'linear' or None, got {weights!r}")
    _check_ratings(a, b, categories)
    if not len(a):
        raise ValueError("kappa needs at least one rated item")
    ranks = {c: i for i, c in enumerate(categories)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = metrics.cohen_kappa_score([ranks[v] for v in a], [ranks[v] for v in b],
                                          labels=list(range(len(categories))), weights=weights,
                                          replace_undefined_by=math.nan)
    return float(kappa) if np.isfinite(kappa) else math.nan


def _number(value: Any) -> float:
    """A row value -> float; None / "" / unparsable text -> NaN."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _score(value: Any) -> int | None:
    number = _number(value)
    return int(number) if math.isfinite(number) else None


def _rows_by_name(rows: Iterable[Mapping[str, Any]], which: str) -> dict[str, Mapping[str, Any]]:
    named: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        name = str(row["name"])
        if name in named:
            raise ValueError(f"{which} rows hold image '{name}' twice")
        named[name] = row
    return named


def _mean_abs(values: Iterable[float]) -> float:
    values = np.asarray([abs(v) for v in values if math.isfinite(v)], dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def agreement_table(pred_rows: Iterable[Mapping[str, Any]],
                    true_rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compare per-image rows (``images.csv`` rows or :meth:`ImageMeasures.row`) of predicted
    and true masks, paired by ``name``.

    Returns ``(per_image, summary)``. ``per_image`` (sorted by name): ``name``,
    ``count_error``, ``gland_area_ratio_error``, ``dropout_error`` (each pred - true; NaN
    where a value is missing) and ``meiboscore_pred``, ``meiboscore_true``. ``summary``:
    ``n_images`` (paired), ``n_pred_only``, ``n_true_only``, the mean absolute errors
    ``count_mae``, ``gland_area_ratio_mae``, ``dropout_mae`` (over the finite errors),
    ``n_meiboscore`` (pairs with both scores), ``meiboscore_accuracy`` and
    ``meiboscore_kappa`` (quadratically weighted, categories 0..3) over those pairs (NaN
    when there are none).
    """
    pred, true = _rows_by_name(pred_rows, "predicted"), _rows_by_name(true_rows, "true")
    per_image = []
    for name in sorted(set(pred) & set(true)):
        p, t = pred[name], true[name]
        per_image.append({
            "name": name,
            "count_error": _number(p["gland_count"]) - _number(t["gland_count"]),
            "gland_area_ratio_error": _number(p["gland_area_ratio"]) - _number(t["gland_area_ratio"]),
            "dropout_error": _number(p["dropout"]) - _number(t["dropout"]),
            "meiboscore_pred": _score(p["meiboscore"]), "meiboscore_true": _score(t["meiboscore"]),
        })
    scored = [r for r in per_image if r["meiboscore_pred"] is not None and r["meiboscore_true"] is not None]
    a, b = [r["meiboscore_pred"] for r in scored], [r["meiboscore_true"] for r in scored]
    summary = {
        "n_images": len(per_image), "n_pred_only": len(set(pred) - set(true)),
        "n_true_only": len(set(true) - set(pred)),
        **{f"{key}_mae": _mean_abs(r[f"{key}_error"] for r in per_image)
           for key in ("count", "gland_area_ratio", "dropout")},
        "n_meiboscore": len(scored),
        "meiboscore_accuracy": float(np.mean(np.equal(a, b))) if scored else math.nan,
        "meiboscore_kappa": weighted_kappa(a, b, range(4), "quadratic") if scored else math.nan,
    }
    return per_image, summary

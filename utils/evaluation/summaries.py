"""Summaries of scored rows (one row per test image or pair): per fold and pooled, as CSV rows
and as the printed side-by-side table of experiments.

A row is a dict with a ``fold`` key (and, from the test script, the ``seed`` of its run) and one
float per metric; segmentation rows also carry
``hd95_empty`` (the empty-mask tag of :func:`utils.evaluation.metrics.hd95`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from utils.evaluation.instance_metrics import GLAND_COUNTS, THIN_METRICS
from utils.evaluation.metrics import summarise

#: pixel metrics (utils.evaluation.metrics) and those for thin, many-component structures
#: (utils.evaluation.instance_metrics); the test script prints one table of each
SEG_PIXEL_METRICS = ["iou", "dice", "hd95", "recall", "accuracy"]
SEG_THIN_METRICS = list(THIN_METRICS)
SEG_METRICS = SEG_PIXEL_METRICS + SEG_THIN_METRICS
SEG_COLUMNS = ["name", "patient", "fold", "seed"] + SEG_METRICS + ["hd95_empty"] + GLAND_COUNTS
REG_METRICS = ["affine_iou", "affine_dice", "affine_recall", "iou", "dice", "recall",
               "folding_fraction", "jacobian_mean", "jacobian_min", "jacobian_std"]
REG_COLUMNS = ["moving", "fixed", "patient", "fold", "seed"] + REG_METRICS


def _empty_count(rows: Sequence[Mapping]) -> dict:
    if rows and "hd95_empty" in rows[0]:
        return {"hd95_empty_cases": sum(1 for r in rows if r["hd95_empty"])}
    return {}


def summary_rows(rows: Sequence[Mapping], metrics: Sequence[str], folds: Sequence[int]) -> list[dict]:
    """One row per fold and one ``all`` row (pooled over every image/pair of every fold): ``n``,
    ``<metric>_mean``, ``<metric>_std`` (population std) and, for segmentation rows,
    ``hd95_empty_cases``."""
    out = []
    for k in folds:
        fold_rows = [r for r in rows if r["fold"] == k]
        out.append({"fold": k, **summarise(fold_rows, metrics), **_empty_count(fold_rows)})
    out.append({"fold": "all", **summarise(rows, metrics), **_empty_count(rows)})
    return out


def summary_columns(metrics: Sequence[str], rows: Sequence[Mapping]) -> list[str]:
    """The columns of ``summary.csv`` for :func:`summary_rows` output."""
    columns = ["fold", "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    return columns + (["hd95_empty_cases"] if "hd95_empty_cases" in rows[0] else [])


def table_lines(title: str, table: Sequence[tuple[str, Mapping]], metrics: Sequence[str]) -> list[str]:
    """Printable table: a title, a header and one line per ``(label, summary)``, each metric as
    ``mean +- std``."""
    width = max(len(label) for label, _ in table) + 2
    lines = ["", title, f"{'':<{width}}" + "".join(f"{m:>21}" for m in metrics)]
    for label, summary in table:
        cells = "".join(f"{summary[f'{m}_mean']:>11.4f} +-{summary[f'{m}_std']:>7.4f}" for m in metrics)
        lines.append(f"{label:<{width}}{cells}")
    return lines

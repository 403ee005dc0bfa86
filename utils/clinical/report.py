"""Clinical measures in the test report: agreement of the measures on predicted and on true
gland masks, and of the estimated meiboscore with clinicians' grades.

For every test image, :func:`utils.clinical.measures.measure_image` runs on the predicted
and on the true gland mask, both with the image's true eyelid mask
(``Eyelid/<name>.png``; without one the eyelid-dependent measures are blank and only
the gland count is compared). :func:`utils.clinical.agreement.agreement_table` pairs the two.
A grades file (``name,grade``, grades 0-3 as clinicians gave them, read by
:func:`dataloaders.grades.read_grades`) is compared with the meiboscore estimated from
the predicted mask.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from dataloaders.grades import GRADES
from utils.clinical.agreement import agreement_table, confusion_matrix, weighted_kappa
from utils.clinical.measures import measure_image
from utils.files import write_csv

AGREEMENT_COLUMNS = ["name", "count_error", "gland_area_ratio_error", "dropout_error", "meiboscore_pred",
                     "meiboscore_true"]


def measure_pair(name: str, predicted: np.ndarray, true: np.ndarray, eyelid: np.ndarray | None,
                 pixel_size: float = 1.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``images.csv`` rows of the predicted and the true gland mask of one image."""
    return (measure_image(predicted, eyelid, pixel_size=pixel_size).row(name),
            measure_image(true, eyelid, pixel_size=pixel_size).row(name))


def grade_agreement(pred_rows: Iterable[Mapping[str, Any]], grades: Mapping[str, int]) -> dict[str, Any]:
    """Estimated meiboscore (``meiboscore`` of ``pred_rows``) against clinicians' ``grades``:
    ``n`` (images with both), ``accuracy``, ``kappa`` (quadratically weighted) and
    ``confusion`` (``[4, 4]`` list, rows = clinicians' grade, columns = estimate)."""
    pairs = [(grades[r["name"]], int(r["meiboscore"])) for r in pred_rows
             if r["name"] in grades and r.get("meiboscore") is not None]
    if not pairs:
        return {"n": 0, "accuracy": math.nan, "kappa": math.nan, "confusion": [[0] * 4 for _ in GRADES]}
    true, estimated = zip(*pairs)
    return {"n": len(pairs), "accuracy": float(np.mean(np.equal(true, estimated))),
            "kappa": weighted_kappa(true, estimated, GRADES, "quadratic"),
            "confusion": confusion_matrix(true, estimated, GRADES).tolist()}


def _kappa_text(kappa: float) -> str:
    """Kappa to 3 decimals; NaN (no chance disagreement: every image in one grade) said in words."""
    return "undefined (all in one grade)" if math.isnan(kappa) else f"{kappa:.3f}"


def report_lines(exp: str, summary: Mapping[str, Any], grades: Mapping[str, Any] | None) -> list[str]:
    """Printable summary of :func:`utils.clinical.agreement.agreement_table` (and of :func:`grade_agreement`)."""
    lines = [f"{exp}: measures on predicted vs true masks over {summary['n_images']} test images: gland count "
             f"MAE {summary['count_mae']:.2f}, gland area ratio MAE {summary['gland_area_ratio_mae']:.4f}, "
             f"dropout MAE {summary['dropout_mae']:.4f}; meiboscore accuracy {summary['meiboscore_accuracy']:.3f}, "
             f"quadratic kappa {_kappa_text(summary['meiboscore_kappa'])} ({summary['n_meiboscore']} images with an eyelid)"]
    if grades is not None:
        matrix = "; ".join(f"grade {g}: " + " ".join(str(c) for c in row) for g, row in zip(GRADES, grades["confusion"]))
        lines.append(f"{exp}: estimated meiboscore vs clinicians' grades over {grades['n']} images: accuracy "
                     f"{grades['accuracy']:.3f}, quadratic kappa {_kappa_text(grades['kappa'])}; confusion (rows: "
                     f"clinicians 0-3, columns: estimate 0-3) {matrix}")
    return lines


def write_report(out_dir: Path, exp: str, pred_rows: list[dict], true_rows: list[dict],
                 grades: Mapping[str, int] | None) -> list[str]:
    """Write ``out_dir/measures.csv`` (per image, :data:`AGREEMENT_COLUMNS`) and
    ``clinical_summary.csv`` (the summary of :func:`utils.clinical.agreement.agreement_table`
    and, with ``grades``, ``grades_n``, ``grades_accuracy``, ``grades_kappa``); returns the
    printable lines of :func:`report_lines`."""
    per_image, summary = agreement_table(pred_rows, true_rows)
    graded = grade_agreement(pred_rows, grades) if grades is not None else None
    write_csv(out_dir / "measures.csv", per_image, AGREEMENT_COLUMNS)
    flat = {**summary, **({f"grades_{k}": v for k, v in graded.items() if k != "confusion"} if graded else {})}
    write_csv(out_dir / "clinical_summary.csv", [flat], list(flat))
    return report_lines(exp, summary, graded)

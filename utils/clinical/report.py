"""Clinical measures in the test report: agreement of the measures on predicted and on true
gland masks, and of the estimated meiboscore with clinicians' grades, in numbers and pictures.

For every test image, :func:`utils.clinical.measures.measure_image` runs on the predicted
and on the true gland mask, both with the image's eyelid mask (``Eyelid/<name>.png``, or the
one an eyelid model predicts; without one the eyelid-dependent measures are blank and only
the gland count is compared). :func:`utils.clinical.agreement.agreement_table` pairs the two.
A grades file (``name,grade``, grades 0-3 as clinicians gave them, read by
:func:`dataloaders.grades.read_grades`) is compared with the meiboscore estimated from the
predicted mask and, as the reference the model is held to, from the true mask; with a
calibration (:mod:`utils.clinical.calibration`) the estimate is the calibrated grade.
Pictures (:mod:`utils.clinical.plots`): ``bland_altman.png`` (gland area ratio, dropout,
gland count), ``meiboscore_confusion.png`` (predicted vs true masks) and, with grades,
``meiboscore_vs_grades.png``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from utils.clinical.agreement import agreement_table
from utils.clinical.calibration import CALIBRATED_COLUMN, MeiboscoreCalibration, add_calibrated, agreement_summary
from utils.clinical.measures import measure_image
from utils.clinical.plots import bland_altman_figure, confusion_figure
from utils.files import write_csv

AGREEMENT_COLUMNS = ["name", "count_error", "gland_area_ratio_error", "dropout_error", "meiboscore_pred",
                     "meiboscore_true"]
EYELID_HINT = ("eyelid masks (Eyelid/<name>.png in the data folder, or --eyelid-exp EYE: an experiment trained "
               "with --target eyelid segments them)")


def measure_pair(name: str, predicted: Any, true: Any, eyelid: Any | None,
                 pixel_size: float = 1.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``images.csv`` rows of the predicted and the true gland mask of one image."""
    return (measure_image(predicted, eyelid, pixel_size=pixel_size).row(name),
            measure_image(true, eyelid, pixel_size=pixel_size).row(name))


def grade_agreement(rows: Iterable[Mapping[str, Any]], grades: Mapping[str, int],
                    score: str = "meiboscore") -> dict[str, Any]:
    """The estimated grade (column ``score`` of ``rows``) against clinicians' ``grades``: ``n``
    (images with both), ``accuracy``, ``kappa`` (quadratically weighted; NaN when undefined)
    and ``confusion`` (``[4, 4]`` list, rows = clinicians' grade, columns = estimate)."""
    pairs = [(grades[r["name"]], int(r[score])) for r in rows
             if r["name"] in grades and r.get(score) not in (None, "")]
    return agreement_summary([t for t, _ in pairs], [e for _, e in pairs])


def _kappa_text(kappa: float) -> str:
    """Kappa to 3 decimals; NaN (no chance disagreement: every image in one grade) said in words."""
    return "undefined (all in one grade)" if math.isnan(kappa) else f"{kappa:.3f}"


def _grades_line(exp: str, which: str, graded: Mapping[str, Any], label: str) -> str:
    matrix = "; ".join(f"grade {g}: " + " ".join(str(c) for c in row) for g, row in enumerate(graded["confusion"]))
    return (f"{exp}: {label} from {which} masks vs clinicians' grades over {graded['n']} images: accuracy "
            f"{graded['accuracy']:.3f}, quadratic kappa {_kappa_text(graded['kappa'])}; confusion (rows: clinicians "
            f"0-3, columns: estimate 0-3) {matrix}")


def report_lines(exp: str, summary: Mapping[str, Any], grades: Mapping[str, Any] | None,
                 true_grades: Mapping[str, Any] | None = None, label: str = "meiboscore") -> list[str]:
    """Printable summary of :func:`utils.clinical.agreement.agreement_table` and of
    :func:`grade_agreement` (from the predicted and, if given, the true masks). Without any
    eyelid only the gland count is reported, and the rest is said in words."""
    n, eyelids = summary["n_images"], summary["n_meiboscore"]
    if not eyelids:
        lines = [f"{exp}: measures on predicted vs true masks over {n} test images: gland count MAE "
                 f"{summary['count_mae']:.2f}; the gland area ratio, dropout and meiboscore need {EYELID_HINT}, "
                 f"and none of the {n} test images has one"]
        if grades is not None:
            lines.append(f"{exp}: the clinicians' grades cannot be compared: the estimated meiboscore needs "
                         f"{EYELID_HINT}")
        return lines
    some = f" ({eyelids} of {n} images with an eyelid)" if eyelids < n else ""
    lines = [f"{exp}: measures on predicted vs true masks over {n} test images: gland count "
             f"MAE {summary['count_mae']:.2f}, gland area ratio MAE {summary['gland_area_ratio_mae']:.4f}, "
             f"dropout MAE {summary['dropout_mae']:.4f}; meiboscore accuracy {summary['meiboscore_accuracy']:.3f}, "
             f"quadratic kappa {_kappa_text(summary['meiboscore_kappa'])}{some}"]
    if grades is not None:
        lines.append(_grades_line(exp, "predicted", grades, label))
        if true_grades is not None:
            lines.append(_grades_line(exp, "true", true_grades, label))
    return lines


def _column(rows: list[dict], key: str) -> list[float]:
    return [math.nan if r.get(key) in (None, "") else float(r[key]) for r in rows]


def write_plots(out_dir: Path, exp: str, pred_rows: list[dict], true_rows: list[dict], summary: Mapping[str, Any],
                graded: Mapping[str, Any] | None, label: str) -> list[Path]:
    """``bland_altman.png``, ``meiboscore_confusion.png`` (with an eyelid) and
    ``meiboscore_vs_grades.png`` (with grades and an eyelid; an earlier run's copy of either
    is removed when it is not made); returns the paths written."""
    true_by_name = {r["name"]: r for r in true_rows}
    pred = [r for r in pred_rows if r["name"] in true_by_name]
    true = [true_by_name[r["name"]] for r in pred]
    written = [bland_altman_figure(
        {key.replace("_", " "): (_column(pred, key), _column(true, key))
         for key in ("gland_area_ratio", "dropout", "gland_count")},
        out_dir / "bland_altman.png", f"{exp}: measures of predicted vs true gland masks (test images)")]
    if summary["n_meiboscore"]:
        scored = [(int(t["meiboscore"]), int(p["meiboscore"])) for p, t in zip(pred, true)
                  if p.get("meiboscore") not in (None, "") and t.get("meiboscore") not in (None, "")]
        matrix = agreement_summary([t for t, _ in scored], [p for _, p in scored])["confusion"]
        written.append(confusion_figure(matrix, out_dir / "meiboscore_confusion.png",
                                        f"{exp}: meiboscore, kappa {_kappa_text(summary['meiboscore_kappa'])}",
                                        "from the true mask", "from the predicted mask"))
        if graded is not None and graded["n"]:
            written.append(confusion_figure(graded["confusion"], out_dir / "meiboscore_vs_grades.png",
                                            f"{exp}: {label}, kappa {_kappa_text(graded['kappa'])}",
                                            "clinicians' grade", "from the predicted mask"))
    for stale in ("meiboscore_confusion.png", "meiboscore_vs_grades.png"):
        if out_dir / stale not in written:
            (out_dir / stale).unlink(missing_ok=True)      # from an earlier run with eyelids or grades
    return written


def write_report(out_dir: Path, exp: str, pred_rows: list[dict], true_rows: list[dict],
                 grades: Mapping[str, int] | None,
                 calibration: MeiboscoreCalibration | None = None) -> list[str]:
    """Write ``out_dir/measures.csv`` (per image, :data:`AGREEMENT_COLUMNS`),
    ``clinical_summary.csv`` (the summary of :func:`utils.clinical.agreement.agreement_table`
    and, with ``grades``, ``grades_score`` (the estimate compared), ``grades_n``,
    ``grades_accuracy``, ``grades_kappa`` from the predicted masks and ``grades_true_*`` from
    the true masks) and the pictures of :func:`write_plots`; returns the printable lines of
    :func:`report_lines`. ``calibration``: compare its grade, not Arita's, with ``grades``."""
    per_image, summary = agreement_table(pred_rows, true_rows)
    add_calibrated(pred_rows, calibration)
    add_calibrated(true_rows, calibration)
    score = CALIBRATED_COLUMN if calibration is not None else "meiboscore"
    label = "calibrated meiboscore" if calibration is not None else "meiboscore"
    graded = grade_agreement(pred_rows, grades, score) if grades is not None else None
    true_graded = grade_agreement(true_rows, grades, score) if grades is not None else None
    write_csv(out_dir / "measures.csv", per_image, AGREEMENT_COLUMNS)
    flat = dict(summary)
    if graded is not None:
        flat["grades_score"] = score
        flat.update({f"grades_{k}": v for k, v in graded.items() if k != "confusion"})
        flat.update({f"grades_true_{k}": v for k, v in true_graded.items() if k != "confusion"})
    write_csv(out_dir / "clinical_summary.csv", [flat], list(flat))
    pictures = write_plots(out_dir, exp, pred_rows, true_rows, summary, graded, label)
    lines = report_lines(exp, summary, graded, true_graded, label)
    return lines + [f"{exp}: pictures " + ", ".join(str(p) for p in pictures)]

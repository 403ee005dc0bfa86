"""Command: clinical measures of a folder of gland masks (and eyelid masks), and the
calibration of the meiboscore to a clinic's grades.

    python -m utils.gland_measures MASK_DIR [--eyelid-dir DIR] [--pixel-size MM] [--min-area PX]
                                   [--output OUT_DIR] [--dropout-definition span|area] [--no-progress] ...
    python -m utils.gland_measures MASK_DIR --eyelid-dir DIR --calibrate grades.csv [--patient-regex R]
    python -m utils.gland_measures MASK_DIR --eyelid-dir DIR --calibration meiboscore_calibration.json

Writes ``glands.csv`` (one row per gland) and ``images.csv`` (one row per image); the
measures are :mod:`utils.clinical`. ``--calibrate`` also cross-validates and fits the
mapping from measures to the graders' grades (:mod:`utils.clinical.calibration`) and
writes ``meiboscore_calibration.json``, ``calibration_cv.csv`` and
``calibration_confusion.png``; ``--calibration`` adds ``calibrated_meiboscore`` to
``images.csv``.
"""
from __future__ import annotations

import argparse
import math
import sys
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dataloaders.grades import read_grades
from dataloaders.splits import patient_ids
from utils.cli import OneLineErrorParser
from utils.clinical.calibration import (CALIBRATED_COLUMN, CALIBRATION_FILE, CV_COLUMNS, DEFAULT_FOLDS,
                                        DEFAULT_SEED, add_calibrated, calibrate, cv_rows, load_calibration,
                                        summary_lines)
from utils.clinical.dropout import (DEFAULT_DROPOUT_DEFINITION, DEFAULT_GAP_FRACTION, DEFAULT_HEALTHY_EXTENT,
                                    DROPOUT_DEFINITIONS)
from utils.clinical.eyelid import DEFAULT_MARGIN_TOLERANCE, MARGIN_SIDES
from utils.clinical.glands import DEFAULT_MIN_AREA, DEFAULT_SPLIT_RATIO, GLAND_COLUMNS
from utils.clinical.measures import IMAGE_COLUMNS, measure_folder
from utils.clinical.plots import confusion_figure
from utils.errors import InputError, run_cli, short_list
from utils.files import write_csv


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.gland_measures",
        description="Clinical measures of every gland mask (png) in MASK_DIR: one row per gland in "
                    "glands.csv, one row per image in images.csv (every column: docs/CLINICAL.md); "
                    "--calibrate fits the meiboscore to a clinic's grades, --calibration applies such a fit.")
    parser.add_argument("mask_dir", metavar="MASK_DIR", help="folder of gland masks (png, 0/255 or 0/1)")
    parser.add_argument("--eyelid-dir", metavar="DIR", default=None,
                        help="folder of eyelid masks with the same file names; without it (or for a "
                             "mask without an eyelid mask) the eyelid columns are blank")
    parser.add_argument("--output", metavar="OUT_DIR", default=None,
                        help="where glands.csv and images.csv go (default: MASK_DIR's parent folder, "
                             "e.g. predictions/ for predictions/masks/)")
    parser.add_argument("--pixel-size", metavar="MM", type=float, default=None,
                        help="mm per pixel: lengths in mm, areas in mm^2 (default: pixels)")
    parser.add_argument("--min-area", metavar="PX", type=int, default=DEFAULT_MIN_AREA,
                        help=f"smallest gland in pixels; smaller components are ignored "
                             f"(default {DEFAULT_MIN_AREA})")
    parser.add_argument("--split-ratio", metavar="R", type=float, default=DEFAULT_SPLIT_RATIO,
                        help="split touching glands where a neck is at most R times as wide as the "
                             f"narrower gland; 0 = never split (default {DEFAULT_SPLIT_RATIO})")
    parser.add_argument("--gap-fraction", metavar="F", type=float, default=DEFAULT_GAP_FRACTION,
                        help="dropout: gaps between glands up to F x eyelid width count as "
                             f"gland-bearing (default {DEFAULT_GAP_FRACTION})")
    parser.add_argument("--dropout-definition", choices=DROPOUT_DEFINITIONS, default=DEFAULT_DROPOUT_DEFINITION,
                        help="span (default): the share of the lid's gland-bearing span, from the margin to "
                             "where its healthy glands end, without glands; area: the share of the whole "
                             "eyelid mask without glands (the earlier definition; reads healthy lids as "
                             "healthy only when the eyelid mask ends where the glands end). docs/CLINICAL.md")
    parser.add_argument("--healthy-extent", metavar="F", type=float, default=DEFAULT_HEALTHY_EXTENT,
                        help="span dropout: the least share of the eyelid's extent, from the margin, taken as "
                             "gland-bearing when the lid's own long glands reach less far "
                             f"(default {DEFAULT_HEALTHY_EXTENT:g})")
    parser.add_argument("--margin-side", choices=("auto",) + MARGIN_SIDES, default="auto",
                        help="edge of the eyelid mask that is the lid margin; auto = per image the edge "
                             "nearer to the glands (default auto)")
    parser.add_argument("--margin-tolerance", metavar="PX", type=float, default=DEFAULT_MARGIN_TOLERANCE,
                        help="a gland reaches the margin when it comes this close, in pixels "
                             f"(default {DEFAULT_MARGIN_TOLERANCE:g})")
    parser.add_argument("--calibrate", metavar="GRADES_CSV", default=None,
                        help="fit the meiboscore to these graders' grades (name,grade 0-3): cross-validate "
                             "Arita's thresholds, fitted dropout thresholds and an ordinal model on several "
                             "measures, grouped by patient; write the chosen mapping to OUT_DIR/"
                             f"{CALIBRATION_FILE}, the results to calibration_cv.csv and "
                             "calibration_confusion.png (needs --eyelid-dir)")
    parser.add_argument("--calibration", metavar="FILE", default=None,
                        help=f"apply a fitted {CALIBRATION_FILE}: images.csv gains calibrated_meiboscore")
    parser.add_argument("--patient-regex", metavar="REGEX", default=None,
                        help="--calibrate: the patient of an image is the first capture group of this regex "
                             "in its name (default: everything before the last underscore, as make_folds)")
    parser.add_argument("--patient-csv", metavar="CSV", default=None,
                        help="--calibrate: a CSV 'name,patient' giving each image's patient instead")
    parser.add_argument("--cv-folds", metavar="K", type=int, default=DEFAULT_FOLDS,
                        help=f"--calibrate: cross-validation folds (at most the patients; default {DEFAULT_FOLDS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"--calibrate: seed of the fold assignment (default {DEFAULT_SEED})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError(f"--pixel-size must be > 0 (mm per pixel), got {args.pixel_size}")
    if args.min_area < 1:
        raise InputError(f"--min-area must be >= 1 pixel, got {args.min_area}")
    if not 0 <= args.split_ratio < 1:
        raise InputError(f"--split-ratio must be in [0, 1), got {args.split_ratio}")
    if not 0 < args.gap_fraction < 1:
        raise InputError(f"--gap-fraction must be in (0, 1), got {args.gap_fraction}")
    if not 0 < args.healthy_extent <= 1:
        raise InputError(f"--healthy-extent must be in (0, 1], got {args.healthy_extent}")
    if args.calibrate and args.calibration:
        raise InputError("--calibrate fits a calibration and --calibration applies one: pass one of them")
    if args.calibrate and not args.eyelid_dir:
        raise InputError("--calibrate needs --eyelid-dir: the measures it fits on need the eyelid masks")
    if (args.patient_regex or args.patient_csv) and not args.calibrate:
        raise InputError("--patient-regex / --patient-csv group images by patient for --calibrate only")
    if args.cv_folds < 2:
        raise InputError(f"--cv-folds must be at least 2, got {args.cv_folds}")
    if not args.margin_tolerance >= 0:
        raise InputError(f"--margin-tolerance must be >= 0, got {args.margin_tolerance}")


def _summary_line(image_rows: list[dict[str, Any]], gland_rows: list[dict[str, Any]], out_dir: Path,
                  unit: str) -> str:
    counts = [row["gland_count"] for row in image_rows]
    dropouts = [row["dropout"] for row in image_rows if math.isfinite(row["dropout"])]
    lost = f"mean dropout {np.mean(dropouts):.3f} over {len(dropouts)}" if dropouts else "no eyelid masks"
    return (f"{len(image_rows)} masks: {len(gland_rows)} glands (median {np.median(counts):g} per image), "
            f"{lost}; lengths in {unit}; wrote {out_dir / 'glands.csv'} and {out_dir / 'images.csv'}")


def measure_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`utils.clinical.measures.measure_image` the flags set."""
    return {"pixel_size": args.pixel_size or 1.0, "min_area": args.min_area, "split_ratio": args.split_ratio,
            "gap_fraction": args.gap_fraction, "margin_side": args.margin_side,
            "margin_tolerance": args.margin_tolerance, "dropout_definition": args.dropout_definition,
            "healthy_extent": args.healthy_extent}


def fit_calibration(args: argparse.Namespace, image_rows: list[dict[str, Any]], settings: dict[str, Any],
                    out_dir: Path) -> None:
    """--calibrate: fit, print, and write the calibration and its cross-validation."""
    grades = read_grades(args.calibrate)
    names = [row["name"] for row in image_rows]
    graded = [name for name in names if name in grades]
    unmatched = sorted(set(grades) - set(names))
    if unmatched:
        print(f"warning: {len(unmatched)} graded image(s) have no mask in {args.mask_dir} and are left out: "
              f"{short_list(unmatched)}", file=sys.stderr)
    if not graded:
        raise InputError(f"--calibrate {args.calibrate}: no graded image has a mask in {args.mask_dir} "
                         f"(names must match the mask file names without extension)")
    patients = patient_ids(graded, args.patient_regex, args.patient_csv)
    try:
        calibration = calibrate(image_rows, grades, patients, args.cv_folds, args.seed, settings,
                                {"mask_dir": str(args.mask_dir), "eyelid_dir": str(args.eyelid_dir),
                                 "grades_file": str(args.calibrate), "fitted": date.today().isoformat()})
    except ValueError as exc:
        raise InputError(f"--calibrate {args.calibrate}: {exc}") from None
    if calibration.fitted_on["graded_without_eyelid"]:
        print(f"warning: {calibration.fitted_on['graded_without_eyelid']} graded image(s) have no eyelid mask "
              f"and are left out of the calibration", file=sys.stderr)
    calibration.to_json(out_dir / CALIBRATION_FILE)
    write_csv(out_dir / "calibration_cv.csv", cv_rows(calibration), CV_COLUMNS)
    chosen = calibration.cross_validation["chosen"]
    confusion_figure(calibration.cross_validation["models"][chosen]["confusion"], out_dir / "calibration_confusion.png",
                     f"meiboscore, {chosen}: cross-validated by patient", "graders' grade", "calibrated estimate")
    print("\n".join(summary_lines(calibration)))
    print(f"wrote {out_dir / CALIBRATION_FILE}, {out_dir / 'calibration_cv.csv'} and "
          f"{out_dir / 'calibration_confusion.png'}; apply it with --calibration {out_dir / CALIBRATION_FILE}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _check_args(args)
    mask_dir = Path(args.mask_dir)
    out_dir = Path(args.output) if args.output is not None else mask_dir.resolve().parent
    settings = measure_settings(args)
    calibration = load_calibration(args.calibration, settings) if args.calibration else None
    image_rows, gland_rows, no_eyelid = measure_folder(
        mask_dir, Path(args.eyelid_dir) if args.eyelid_dir is not None else None, not args.no_progress,
        **settings)
    add_calibrated(image_rows, calibration)
    if no_eyelid:
        shown = ", ".join(no_eyelid[:5]) + (f" and {len(no_eyelid) - 5} more" if len(no_eyelid) > 5 else "")
        print(f"warning: no eyelid mask for {shown}; their eyelid columns are blank", file=sys.stderr)
    write_csv(out_dir / "glands.csv", gland_rows, GLAND_COLUMNS)
    write_csv(out_dir / "images.csv", image_rows, IMAGE_COLUMNS + ((CALIBRATED_COLUMN,) if calibration else ()))
    print(_summary_line(image_rows, gland_rows, out_dir, "mm" if args.pixel_size else "pixels"))
    if args.calibrate:
        fit_calibration(args, image_rows, settings, out_dir)


if __name__ == "__main__":
    run_cli(main)

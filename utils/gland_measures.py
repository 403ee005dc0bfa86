"""Command: clinical measures of a folder of gland masks (and eyelid masks).

    python -m utils.gland_measures MASK_DIR [--eyelid-dir DIR] [--pixel-size MM] [--min-area PX]
                                   [--output OUT_DIR] [--no-progress] ...

Writes ``glands.csv`` (one row per gland) and ``images.csv`` (one row per image); the
measures are :mod:`utils.clinical`.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.cli import OneLineErrorParser
from utils.clinical.dropout import DEFAULT_GAP_FRACTION
from utils.clinical.eyelid import DEFAULT_MARGIN_TOLERANCE, MARGIN_SIDES
from utils.clinical.glands import DEFAULT_MIN_AREA, DEFAULT_SPLIT_RATIO, GLAND_COLUMNS
from utils.clinical.measures import IMAGE_COLUMNS, measure_folder
from utils.errors import InputError, run_cli
from utils.files import write_csv


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.gland_measures",
        description="Clinical measures of every gland mask (png) in MASK_DIR: one row per gland in "
                    "glands.csv, one row per image in images.csv (every column: docs/CLINICAL.md).")
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
    parser.add_argument("--margin-side", choices=("auto",) + MARGIN_SIDES, default="auto",
                        help="edge of the eyelid mask that is the lid margin; auto = per image the edge "
                             "nearer to the glands (default auto)")
    parser.add_argument("--margin-tolerance", metavar="PX", type=float, default=DEFAULT_MARGIN_TOLERANCE,
                        help="a gland reaches the margin when it comes this close, in pixels "
                             f"(default {DEFAULT_MARGIN_TOLERANCE:g})")
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
    if not args.margin_tolerance >= 0:
        raise InputError(f"--margin-tolerance must be >= 0, got {args.margin_tolerance}")


def _summary_line(image_rows: list[dict[str, Any]], gland_rows: list[dict[str, Any]], out_dir: Path,
                  unit: str) -> str:
    counts = [row["gland_count"] for row in image_rows]
    dropouts = [row["dropout"] for row in image_rows if math.isfinite(row["dropout"])]
    lost = f"mean dropout {np.mean(dropouts):.3f} over {len(dropouts)}" if dropouts else "no eyelid masks"
    return (f"{len(image_rows)} masks: {len(gland_rows)} glands (median {np.median(counts):g} per image), "
            f"{lost}; lengths in {unit}; wrote {out_dir / 'glands.csv'} and {out_dir / 'images.csv'}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _check_args(args)
    mask_dir = Path(args.mask_dir)
    out_dir = Path(args.output) if args.output is not None else mask_dir.resolve().parent
    image_rows, gland_rows, no_eyelid = measure_folder(
        mask_dir, Path(args.eyelid_dir) if args.eyelid_dir is not None else None, not args.no_progress,
        pixel_size=args.pixel_size or 1.0, min_area=args.min_area, split_ratio=args.split_ratio,
        gap_fraction=args.gap_fraction, margin_side=args.margin_side, margin_tolerance=args.margin_tolerance)
    if no_eyelid:
        shown = ", ".join(no_eyelid[:5]) + (f" and {len(no_eyelid) - 5} more" if len(no_eyelid) > 5 else "")
        print(f"warning: no eyelid mask for {shown}; their eyelid columns are blank", file=sys.stderr)
    write_csv(out_dir / "glands.csv", gland_rows, GLAND_COLUMNS)
    write_csv(out_dir / "images.csv", image_rows, IMAGE_COLUMNS)
    print(_summary_line(image_rows, gland_rows, out_dir, "mm" if args.pixel_size else "pixels"))


if __name__ == "__main__":
    run_cli(main)

"""Command: the intra-patient affine pre-alignment (docs/METHOD.md section 1).

    python -m utils.prealign DATA_DIR [--workers N] [--resize W H] [--quiet]

Pre-aligns every ordered pair of images of each patient listed in the fold files
and caches the matrices in ``DATA_DIR/prealign.json``; the estimation and the
cache are :mod:`dataloaders.prealignment` (the trainers use them directly).
Prints one summary line, and one more when pairs fell back to the identity.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import numpy as np

from dataloaders.dataset import DatasetFolder
from dataloaders.folds import patient_groups
from dataloaders.prealignment.cache import CACHE_NAME, Prealignment, ensure_prealignment
from utils.cli import OneLineErrorParser
from utils.errors import run_cli


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.prealign",
        description="Affine pre-alignment of every ordered pair of images of each patient listed in "
                    "DATA_DIR/train_dict*.json (OpenCV ECC on an image pyramid). Matrices are cached in "
                    "DATA_DIR/prealign.json; a rerun only recomputes pairs whose images changed.")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder with Image/, Label/ and "
                        "train_dict*.json (made by python -m utils.make_folds)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help=f"worker processes (default: all {os.cpu_count() or 1} cores)")
    parser.add_argument("--resize", type=_positive_int, nargs=2, default=None, metavar=("W", "H"),
                        help="process images at W x H (needed when image sizes differ; the trainers must "
                             "use the same size, otherwise they recompute the cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> Prealignment:
    args = build_parser().parse_args(argv)
    folder = DatasetFolder(args.data_dir, resize=tuple(args.resize) if args.resize else None)
    patients = patient_groups(args.data_dir, folder)
    start = time.perf_counter()
    try:
        pre = ensure_prealignment(folder, patients, workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: the pairs finished so far are saved in {folder.root / CACHE_NAME}; "
              f"rerun the same command to compute the rest", file=sys.stderr)
        sys.exit(130)
    seconds = time.perf_counter() - start
    requested = pre.reused + pre.computed
    fallbacks = [pair for pair in requested if not pre.ok(*pair)]
    corrs = [pre.correlation(*pair) for pair in requested]
    height, width = pre.size
    print(f"prealign: {len(requested)} pairs of {len(patients)} patients at {width}x{height} (W x H): "
          f"{len(pre.computed)} computed, {len(pre.reused)} reused, {len(fallbacks)} fallbacks to identity; "
          f"mean correlation {np.mean(corrs) if corrs else float('nan'):.3f} "
          f"(min {min(corrs) if corrs else float('nan'):.3f}); {seconds:.1f} s -> {pre.path}")
    if fallbacks:
        print(pre.fallback_summary(requested), file=sys.stderr)
    return pre


if __name__ == "__main__":
    run_cli(main)

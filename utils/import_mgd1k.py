"""Command: import the public MGD-1k meibography dataset into this project's layout.

    python -m utils.import_mgd1k SRC DST [--lid upper|lower|both] [--no-mirror] [--overwrite]
                                 [--no-progress]

What it reads and writes: :mod:`dataloaders.importers.mgd1k`.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Sequence

from dataloaders.importers.mgd1k import LID_CHOICES, ImportReport, import_mgd1k
from utils.cli import OneLineErrorParser
from utils.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.import_mgd1k",
        description="Import the public MGD-1k meibography dataset (Saha et al., The Ocular Surface "
                    "2022) into this project's layout: DST/Image/, DST/Label/ (gland masks, 0/255), "
                    "DST/Eyelid/ (eyelid masks, 0/255) and DST/grades.csv (meiboscore). Images are "
                    "named mgd<ID>_<EYE>-<lid> (e.g. mgd0012_OS-upper), so make_folds' default "
                    "rule groups a patient's images. Unmirrored images are copied byte for byte; "
                    "mirrored ones are written as lossless PNG.")
    parser.add_argument("src", metavar="SRC",
                        help="the unpacked MGD-1k folder (holding 'Original Images', 'Meibomian Gland "
                             "Labels', 'Eyelid Lebels', 'Graded Meiboscore'), or the folder above it")
    parser.add_argument("dst", metavar="DST", help="output dataset folder; new or empty unless --overwrite")
    parser.add_argument("--lid", choices=LID_CHOICES, default="upper",
                        help="which eyelid's images to import: upper (default, the paper's setting: "
                             "at most two images per patient, OD and OS), lower, or both")
    parser.add_argument("--no-mirror", action="store_true",
                        help="keep left-eye (OS) images and masks as recorded (default: flip them "
                             "left-right so that both eyes of a patient share one orientation)")
    parser.add_argument("--overwrite", action="store_true",
                        help="import into a non-empty DST, replacing an earlier import's Image/, "
                             "Label/, Eyelid/ files and grades.csv (any other file in those folders "
                             "is an error; other files in DST are left alone)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def summary(report: ImportReport, lid: str, mirror: bool) -> str:
    """The final summary line."""
    left_out = f"; {report.left_out_lids} image(s) of the other lid left out" if report.left_out_lids else ""
    return (f"imported {len(report.names)} images of {report.patients} patients into {report.dst}: "
            f"{report.labels} gland labels, {report.eyelids} eyelid masks, {report.grades} grades "
            f"(--lid {lid}, OS {'mirrored' if mirror else 'not mirrored'}{left_out})")


def next_commands(dst: Path) -> list[str]:
    """What to run after an import; folds are remade with --overwrite when old ones exist."""
    quoted = shlex.quote(str(dst))
    stale = any(dst.glob("train_dict*.json"))
    folds = f"python -m utils.make_folds {quoted} --labelled-per-patient 1"
    return [folds + (" --overwrite" if stale else ""), f"python -m utils.prealign {quoted}"]


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    report = import_mgd1k(args.src, args.dst, lid=args.lid, mirror=not args.no_mirror,
                          overwrite=args.overwrite, progress=not args.no_progress)
    print(summary(report, args.lid, not args.no_mirror))
    commands = next_commands(Path(args.dst))
    print("next: " + "\n      ".join(commands))


if __name__ == "__main__":
    run_cli(main)

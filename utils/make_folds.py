"""Command: patient-disjoint 5-fold splits ``DATA_DIR/train_dict{1..5}.json``.

    python -m utils.make_folds DATA_DIR [--patient-regex REGEX | --patient-csv CSV]
        [--labelled-per-patient N] [--labelled-patients FRACTION] [--val-fraction F] [--seed S]
        [--resize W H] [--overwrite]
    python -m utils.make_folds DATA_DIR --check [--patient-regex REGEX | --patient-csv CSV]

How patients are split is :mod:`dataloaders.splits`; the file format :mod:`dataloaders.folds`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from dataloaders.folds import NUM_FOLDS, SPLITS, fold_path
from dataloaders.splits import (DEFAULT_PATIENT_REGEX, DEFAULT_SEED, MIN_VAL_PATIENTS, VAL_FRACTION, check_folds,
                               make_folds)
from utils.cli import OneLineErrorParser
from utils.errors import InputError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.make_folds",
        description="Write patient-disjoint 5-fold splits DATA_DIR/train_dict1.json ... train_dict5.json "
                    "(train:val:test about 7:1:2; the five test sets partition the patients).")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder holding Image/ and Label/")
    ids = parser.add_mutually_exclusive_group()
    ids.add_argument("--patient-regex", metavar="REGEX", default=None,
                     help="the first capture group of a search in each image name (no extension) is "
                          f"its patient id (default '{DEFAULT_PATIENT_REGEX}': all before the last '_')")
    ids.add_argument("--patient-csv", metavar="CSV", default=None,
                     help="CSV with header 'name,patient' giving every image's patient id "
                          "(names with or without extension)")
    parser.add_argument("--labelled-per-patient", metavar="N", type=int, default=1,
                        help="Atlas (labelled) images per labelled training patient, chosen at random "
                             "among its labelled images; at most its image count - 1 (default 1: "
                             "25%% labels with 4 images per patient)")
    parser.add_argument("--labelled-patients", metavar="FRACTION", type=float, default=1.0,
                        help="fraction in (0, 1] of each fold's training patients that get Atlas "
                             "images; the others are fully unlabelled (default 1.0)")
    parser.add_argument("--val-fraction", metavar="F", type=float, default=VAL_FRACTION,
                        help=f"share of each fold's non-test patients in val, where checkpoints are "
                             f"selected (default {VAL_FRACTION:g} = 1/8); fewer than {MIN_VAL_PATIENTS} val "
                             f"patients is a warning, since selection on one or two patients is noise")
    parser.add_argument("--seed", metavar="S", type=int, default=DEFAULT_SEED,
                        help=f"seed of every random choice; same seed, same folds (default {DEFAULT_SEED})")
    parser.add_argument("--resize", metavar=("W", "H"), type=int, nargs=2, default=None,
                        help="process images at W x H (needed when image sizes differ)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing fold files whose content differs (default: refuse)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: validate the existing fold files (images, labels, "
                             "disjoint sets; with --patient-regex/--patient-csv also by patient id)")
    return parser


def _summary(folds: list[dict]) -> str:
    lines = []
    for k, fold in enumerate(folds, start=1):
        parts = []
        for split in SPLITS:
            subjects = fold[split]
            n_images = sum(len(s["Atlas"]) + len(s["OtherImg"]) for s in subjects)
            parts.append(f"{split} {len(subjects)} patients / {n_images} images")
        n_atlas = sum(len(s["Atlas"]) for s in fold["train"])
        n_lab = sum(1 for s in fold["train"] if s["Atlas"])
        lines.append(f"fold {k}: " + ", ".join(parts) + f"; {n_atlas} Atlas images on {n_lab} patients")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.resize is not None and min(args.resize) < 1:
        raise InputError(f"--resize W H must be positive, got {args.resize[0]} {args.resize[1]}")
    resize = tuple(args.resize) if args.resize is not None else None
    if args.check:
        folds = check_folds(args.data_dir, resize, args.patient_regex, args.patient_csv)
        as_dicts = [{split: [{"Atlas": s.atlas, "OtherImg": s.others} for s in fold.split(split)]
                     for split in SPLITS} for fold in folds]
        print(_summary(as_dicts))
        print(f"{args.data_dir}: the {NUM_FOLDS} fold files are valid")
        return
    folds = make_folds(args.data_dir, patient_regex=args.patient_regex,
                       patient_csv=args.patient_csv, labelled_per_patient=args.labelled_per_patient,
                       labelled_patients=args.labelled_patients, seed=args.seed, resize=resize,
                       overwrite=args.overwrite, val_fraction=args.val_fraction)
    print(_summary(folds))
    print(f"wrote {fold_path(args.data_dir, 1)} ... {fold_path(args.data_dir, NUM_FOLDS).name} (seed {args.seed})")


if __name__ == "__main__":
    run_cli(main)

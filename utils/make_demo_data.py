"""Command: synthetic infrared meibography for demos and tests.

    python -m utils.make_demo_data DATA_DIR [--patients P] [--images-per-patient N]
                                   [--size W H] [--seed S] [--style realistic|simple]
                                   [--dropout LO HI] [--grade-mix real|even] [--overwrite]

The generator is :mod:`utils.synthetic.generate` (what is drawn, and the file layout).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from utils.cli import OneLineErrorParser
from utils.errors import run_cli
from utils.synthetic.generate import (DEFAULT_GRADE_MIX, DEFAULT_IMAGES_PER_PATIENT, DEFAULT_PATIENTS, DEFAULT_SEED,
                                      DEFAULT_SIZE, DEFAULT_STYLE, DROPOUT_CSV, GRADE_MIXES, MAX_SIDE, MIN_SIDE,
                                      generate_dataset)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.make_demo_data",
        description="Generate a synthetic infrared meibography (everted upper eyelid) data set: "
                    "DATA_DIR/Image/P###_k.png (8-bit gray), DATA_DIR/Label/P###_k.png (0/255 "
                    "gland masks), DATA_DIR/Eyelid/P###_k.png (0/255 eyelid masks) and, for the "
                    "realistic style, DATA_DIR/dropout.csv (name,dropout,meiboscore: the true "
                    "gland dropout of each image and its Arita grade). The images of one patient "
                    "show the same anatomy under different smooth deformations and acquisition. "
                    "Output is deterministic for a seed.")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="output folder (created if missing)")
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS, metavar="P",
                        help=f"number of patients, >= 1 (default {DEFAULT_PATIENTS})")
    parser.add_argument("--images-per-patient", type=int, default=DEFAULT_IMAGES_PER_PATIENT,
                        metavar="N", help=f"images per patient, >= 2 "
                                          f"(default {DEFAULT_IMAGES_PER_PATIENT})")
    parser.add_argument("--size", type=int, nargs=2, default=list(DEFAULT_SIZE), metavar=("W", "H"),
                        help=f"image width and height in pixels, each {MIN_SIDE}..{MAX_SIDE} "
                             f"(default {DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]}; the paper's images "
                             f"are 740 350)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                        help=f"random seed, >= 0 (default {DEFAULT_SEED})")
    parser.add_argument("--style", default=DEFAULT_STYLE, metavar="{realistic,simple}",
                        help="realistic (default): skin, eyelashes, the eye, glints, low and "
                             "uneven gland contrast, known gland dropout, blur, noise, an "
                             "examiner's finger or a cotton swab and on-screen text in some "
                             "images, larger deformations between a patient's images; simple: "
                             "bright glands on a plain lid band (the earlier demo data, "
                             "unchanged for a seed)")
    parser.add_argument("--dropout", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="realistic style: draw every patient's dropout level (fraction of "
                             "the eyelid without glands) uniformly from LO..HI, 0 <= LO <= HI <= 1 "
                             "(default: a grade per patient, see --grade-mix, then a level in it)")
    parser.add_argument("--grade-mix", default=None, metavar="{" + ",".join(GRADE_MIXES) + "}",
                        help="realistic style: the patients' dropout grades (none, mild, moderate, "
                             "severe). real (default): in the shares of clinicians' meiboscores on "
                             "public upper-lid meibography, 21/58/17/3 %%; even: the patients cycle "
                             f"through the four grades (default {DEFAULT_GRADE_MIX})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo set in DATA_DIR (only P###_k.png files in "
                             "Image/, Label/ and Eyelid/ and dropout.csv are deleted; anything "
                             "else there is an error)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.data_dir)
    names = generate_dataset(out_dir, patients=args.patients,
                             images_per_patient=args.images_per_patient, size=tuple(args.size),
                             seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite,
                             style=args.style, dropout_range=args.dropout, grade_mix=args.grade_mix)
    written = [f"{out_dir}/{sub}" for sub in ("Image", "Label", "Eyelid")]
    if args.style == "realistic":
        written.append(f"{out_dir}/{DROPOUT_CSV}")
    print(f"wrote {len(names)} {args.style} images and masks ({args.patients} patients x "
          f"{args.images_per_patient}, {args.size[0]} x {args.size[1]}) to "
          f"{', '.join(written[:-1])} and {written[-1]}")
    stale = sorted(out_dir.glob("train_dict*.json"))
    if stale:
        print(f"note: {out_dir} still holds fold files from earlier data ({stale[0].name}, ...); "
              f"remake them: python -m utils.make_folds {out_dir}", file=sys.stderr)
    else:
        print(f"next: python -m utils.make_folds {out_dir}")


if __name__ == "__main__":
    run_cli(main)

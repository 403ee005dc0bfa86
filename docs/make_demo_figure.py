"""Draw docs/demo_realistic.png: four realistic synthetic patients, one per dropout grade.

    python docs/make_demo_figure.py [--seed 0] [--size 740 350] [--scale 0.45]

Patients 1-4 of ``python -m utils.make_demo_data --seed SEED --size W H --grade-mix even``
(grades none, mild, moderate, severe), one image each: the image, and beside it the gland
mask (red) and the eyelid mask's outline (green), with the image's true dropout, its
meiboscore and its occluder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.clinical.dropout import meiboscore  # noqa: E402
from utils.synthetic.generate import GRADE_RANGES, dataset_grade, generate_patient, patient_rng  # noqa: E402

IMAGES = (1, 3, 2, 1)     # which image of patients 1-4 is shown


def panel(image: np.ndarray, glands: np.ndarray, eyelid: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(np.round(image * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    marked = gray.copy()
    marked[glands > 0] = (40, 40, 230)
    contours, _ = cv2.findContours(eyelid.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(marked, contours, -1, (60, 220, 60), 2, cv2.LINE_AA)
    return np.concatenate([gray, np.full((gray.shape[0], 8, 3), 255, np.uint8), marked], axis=1)


def caption(text: str, width: int) -> np.ndarray:
    strip = np.full((26, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    ap.add_argument("--size", type=int, nargs=2, default=[740, 350], metavar=("W", "H"),
                    help="image size (default: 740 350)")
    ap.add_argument("--scale", type=float, default=0.45, help="size of the picture's panels (default: 0.45)")
    ap.add_argument("--output", default=str(ROOT / "docs" / "demo_realistic.png"), help="PNG to write")
    args = ap.parse_args()
    rows = []
    for patient, k in enumerate(IMAGES, start=1):
        grade = dataset_grade(args.seed, patient, "even")
        data = generate_patient(patient_rng(args.seed, patient), tuple(args.size), max(IMAGES),
                                dropout_range=GRADE_RANGES[grade])
        picture = panel(data["images"][k - 1], data["masks"][k - 1], data["lid_masks"][k - 1])
        picture = cv2.resize(picture, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA)
        true = data["dropout"][k - 1]
        occluder = data["acquisition"][k - 1]["occluder"] or "no"
        rows += [picture, caption(f"P{patient:03d}_{k}: true dropout {true:.2f}, meiboscore {meiboscore(true)}, "
                                  f"{occluder} occluder", picture.shape[1])]
    width = rows[0].shape[1]
    title = caption(f"realistic demo style, {args.size[0]} x {args.size[1]}: image | glands (red) and eyelid "
                    f"outline (green)", width)
    picture = np.concatenate([title] + rows, axis=0)
    # a 256-colour palette keeps the PNG small (the images' sensor noise compresses badly)
    palette = Image.fromarray(picture[:, :, ::-1]).quantize(256, method=Image.Quantize.FASTOCTREE,
                                                            dither=Image.Dither.NONE)
    palette.save(args.output, optimize=True)
    print(args.output)


if __name__ == "__main__":
    main()

"""Benchmark of utils/gland_measures.py: all measures of one synthetic gland + eyelid mask pair, and the
test script's per-image metrics for thin, many-component structures.

    python benchmarks/bench_gland_measures.py [--height 640] [--width 1280] [--glands 30]
                                              [--repeats 20] [--seed 0]

The pair: a lens-shaped eyelid band across the image and ``--glands`` tapered, tortuous,
roughly vertical glands in it (some shortened, every fifth pair joined by a short neck).
Prints the glands drawn and found, and the seconds per call (min / median over the
repeats, after one warm-up) of ``measure_image`` (span dropout, the default), of its main
parts (dropout under both definitions), of applying a calibration to its row, and of
``instance_metrics`` (clDice, gland-level detection, AJI: what the test script adds per
image) of the gland mask against a copy shifted by two pixels.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.clinical import calibration as calibration_mod  # noqa: E402
from utils.clinical import dropout as dropout_mod  # noqa: E402
from utils.clinical import glands as glands_mod  # noqa: E402
from utils.clinical import measures as measures_mod  # noqa: E402
from utils.evaluation.instance_metrics import instance_metrics  # noqa: E402


def lid_band(height: int, width: int) -> tuple[np.ndarray, Callable, Callable]:
    """Eyelid mask and the band's top(x) / bottom(x) edges."""
    cx, half_w, thick = width / 2, 0.44 * width, 0.5 * height

    def half(x):
        return 0.5 * thick * np.sqrt(np.clip(1 - ((x - cx) / half_w) ** 6, 0, 1))

    def centre(x):
        return 0.5 * height + 0.08 * height * ((x - cx) / half_w) ** 2

    xs = np.linspace(cx - half_w, cx + half_w, 400)
    outline = np.concatenate([np.stack([xs, centre(xs) - half(xs)], 1),
                              np.stack([xs, centre(xs) + half(xs)], 1)[::-1]])
    eyelid = np.zeros((height, width), np.uint8)
    cv2.fillPoly(eyelid, [np.round(outline).astype(np.int32)], 1)
    return eyelid, (lambda x: centre(x) - half(x)), (lambda x: centre(x) + half(x))


def gland_outline(rng: np.random.Generator, x0: float, top: float, bottom: float,
                  radius: float) -> np.ndarray:
    """Closed (x, y) outline of a tube from ``bottom`` (the margin) up to ``top``, wiggling
    sideways and narrowing towards its far end."""
    t = np.linspace(0.0, 1.0, 80)
    y = bottom - t * (bottom - top)
    x = x0 + 0.6 * radius * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi))
    r = radius * (1.0 - 0.3 * t)
    return np.concatenate([np.stack([x - r, y], 1), np.stack([x + r, y], 1)[::-1]])


def synthetic_pair(height: int, width: int, glands: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(gland mask, eyelid mask), uint8 0/1 ``[height, width]``."""
    rng = np.random.default_rng(seed)
    eyelid, top, bottom = lid_band(height, width)
    mask = np.zeros_like(eyelid)
    xs = np.linspace(0.1 * width, 0.9 * width, glands)
    spacing = xs[1] - xs[0] if glands > 1 else width
    for i, x0 in enumerate(xs):
        lo, hi = float(bottom(x0)) - 0.01 * height, float(top(x0)) + 0.03 * height
        reach = rng.uniform(0.3, 0.6) if rng.random() < 0.2 else rng.uniform(0.8, 1.0)
        outline = gland_outline(rng, x0, lo - reach * (lo - hi), lo, spacing * rng.uniform(0.18, 0.25))
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
        if i % 5 == 1 and i + 1 < glands:     # a short neck to the next gland
            y = int(lo - 0.3 * (lo - hi))
            mask[y:y + 3, int(x0):int(x0 + spacing) + 1] = 1
    return mask * eyelid.astype(np.uint8), eyelid


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=640, help="mask height in pixels (default: 640)")
    ap.add_argument("--width", type=int, default=1280, help="mask width in pixels (default: 1280)")
    ap.add_argument("--glands", type=int, default=30, help="glands drawn (default: 30)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls after one warm-up (default: 20)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the synthetic pair (default: 0)")
    args = ap.parse_args()
    glands, eyelid = synthetic_pair(args.height, args.width, args.glands, args.seed)
    result = measures_mod.measure_image(glands, eyelid)
    print(f"{args.width} x {args.height} pair: {args.glands} glands drawn, "
          f"{result.gland_count} glands found, "
          f"dropout {result.dropout:.3f}, meiboscore {result.meiboscore}")
    row = result.row("pair")
    ordinal = calibration_mod.fit_model("ordinal", calibration_mod.feature_rows([row, row])[0], np.array([1, 2]))
    cases = {"measure_image (all measures)": lambda: measures_mod.measure_image(glands, eyelid),
             "  split_glands": lambda: glands_mod.split_glands(glands),
             "  dropout (span, default)": lambda: dropout_mod.dropout(glands, eyelid),
             "  dropout (span, margin side known)": lambda: dropout_mod.dropout(glands, eyelid,
                                                                              margin_side=result.margin_side),
             "  dropout (area)": lambda: dropout_mod.dropout(glands, eyelid, definition="area"),
             "calibrated grade (ordinal model)": lambda: ordinal.predict_rows([row]),
             "instance_metrics (shifted copy)": lambda: instance_metrics(np.roll(glands, 2, axis=1), glands)}
    print(f"seconds per mask pair (min / median over {args.repeats}):")
    for name, fn in cases.items():
        times = timed(fn, args.repeats)
        print(f"  {name:36s} {min(times):.4f} / {statistics.median(times):.4f}")


if __name__ == "__main__":
    main()

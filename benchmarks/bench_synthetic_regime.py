"""How close the realistic synthetic lids come to real meibography, and how the meiboscore agrees on them.

    python benchmarks/bench_synthetic_regime.py [--patients 50] [--images-per-patient 2]
                                                [--size 256 128] [--seeds 0 1 2] [--folds 5]

For each generator seed: ``--patients`` patients of the default realistic data (grades in
MGD-1k's shares), measured from their true gland and eyelid masks. Prints per seed, then the
mean and standard deviation over seeds, beside the figures reported for real MGD-1k upper
lids: the grades' shares, the medians by grade of the gland area ratio and of the dropout
under both definitions (span, the default, and area, the earlier one), the largest error of
the span dropout against the generator's truth, the agreement (accuracy, quadratic kappa) of
the default meiboscore (Arita's grade of the measured dropout) with the generator's grades,
and the cross-validated agreement of the calibration (``utils.clinical.calibration``, folds
grouped by patient) with two kinds of graders: the generator's grades, and simulated graders
who grade with other cut points on a noisy view of the true dropout (``--grader-cuts``,
``--grader-noise``: what a clinic whose grades do not follow Arita's thresholds looks like; a
simulation, not real graders). Also the seconds per generated image.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.clinical.calibration import calibrate  # noqa: E402
from utils.clinical.dropout import meiboscore  # noqa: E402
from utils.clinical.agreement import weighted_kappa  # noqa: E402
from utils.clinical.measures import measure_image  # noqa: E402
from utils.synthetic.generate import GRADE_RANGES, dataset_grade, demo_name, generate_patient, patient_rng  # noqa: E402

REAL = {"shares": (0.21, 0.58, 0.17, 0.03), "ratio": (0.34, 0.27, 0.21, 0.17), "area": (0.48, 0.57, 0.64, 0.71)}
REAL_AGREEMENT = "Arita on area dropout: accuracy 0.126, kappa 0.12; thresholds fitted on half the lids: kappa 0.52-0.53"


def lids(seed: int, patients: int, images: int, size: tuple[int, int]) -> tuple[list[dict], float]:
    """Per-image rows (measures under both definitions, the true dropout and grade) and seconds per image."""
    rows, spent = [], 0.0
    for patient in range(1, patients + 1):
        start = time.perf_counter()
        data = generate_patient(patient_rng(seed, patient), size, images,
                                dropout_range=GRADE_RANGES[dataset_grade(seed, patient)])
        spent += time.perf_counter() - start
        for k, (glands, eyelid, true) in enumerate(zip(data["masks"], data["lid_masks"], data["dropout"]), start=1):
            row = measure_image(glands, eyelid).row(demo_name(patient, k))
            row["area_dropout"] = measure_image(glands, eyelid, dropout_definition="area").dropout
            row["true_dropout"], row["grade"], row["patient"] = true, meiboscore(true), f"P{patient:03d}"
            rows.append(row)
    return rows, spent / (patients * images)


def agreement(true: list[int], estimated: list[int]) -> tuple[float, float]:
    return float(np.mean(np.equal(true, estimated))), weighted_kappa(true, estimated, range(4))


def by_grade(rows: list[dict], key: str) -> list[float]:
    return [float(np.median([r[key] for r in rows if r["grade"] == g])) if any(r["grade"] == g for r in rows)
            else float("nan") for g in range(4)]


def seed_figures(rows: list[dict], folds: int, cuts: list[float], noise: float,
                 seed: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """The figures of one seed's lids, and the calibration chosen for each kind of graders."""
    grades = [r["grade"] for r in rows]
    figures = {"shares": [grades.count(g) / len(grades) for g in range(4)], "ratio": by_grade(rows, "gland_area_ratio"),
               "span": by_grade(rows, "dropout"), "area": by_grade(rows, "area_dropout"),
               "true": by_grade(rows, "true_dropout"),
               "span error max": [max(abs(r["dropout"] - r["true_dropout"]) for r in rows)]}
    figures["default meiboscore (span) acc, kappa"] = list(agreement(grades, [r["meiboscore"] for r in rows]))
    figures["Arita on area dropout acc, kappa"] = list(agreement(grades, [meiboscore(r["area_dropout"]) for r in rows]))
    patients = {r["name"]: r["patient"] for r in rows}
    rng = np.random.default_rng(seed)
    graders = {"generator's grades": {r["name"]: r["grade"] for r in rows},
               "simulated graders": {r["name"]: int(np.searchsorted(cuts, r["true_dropout"] + rng.normal(0, noise),
                                                                    side="right")) for r in rows}}
    chosen = {}
    for who, graded in graders.items():
        fitted = calibrate(rows, graded, patients, folds=folds, seed=seed)
        models = fitted.cross_validation["models"]
        chosen[who] = fitted.cross_validation["chosen"]
        figures[f"{who}: Arita acc, kappa"] = [models["arita"]["accuracy"], models["arita"]["kappa"]]
        figures[f"{who}: calibrated CV acc, kappa"] = [models[chosen[who]]["accuracy"], models[chosen[who]]["kappa"]]
    return figures, chosen


def fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=50, help="patients per seed (default: 50)")
    ap.add_argument("--images-per-patient", type=int, default=2, help="images per patient (default: 2)")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("W", "H"),
                    help="image size (default: 256 128)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="generator seeds (default: 0 1 2)")
    ap.add_argument("--folds", type=int, default=5, help="calibration cross-validation folds (default: 5)")
    ap.add_argument("--grader-cuts", type=float, nargs=3, default=[0.12, 0.3, 0.45],
                    help="simulated graders' cut points on the true dropout (default: 0.12 0.3 0.45)")
    ap.add_argument("--grader-noise", type=float, default=0.06,
                    help="standard deviation of the simulated graders' view of the dropout (default: 0.06)")
    args = ap.parse_args()
    size = (args.size[0], args.size[1])
    per_seed, speeds, choices = [], [], []
    for seed in args.seeds:
        rows, speed = lids(seed, args.patients, args.images_per_patient, size)
        speeds.append(speed)
        figures, chosen = seed_figures(rows, args.folds, args.grader_cuts, args.grader_noise, seed)
        per_seed.append(figures)
        choices.append(chosen)
        print(f"seed {seed}: {len(rows)} lids at {size[0]} x {size[1]}, {speed:.3f} s per generated image")
        for key, values in figures.items():
            print(f"  {key:52s} {fmt(values)}")
        print("  calibration chosen: " + ", ".join(f"{who}: {model}" for who, model in chosen.items()))
    print(f"\nover {len(args.seeds)} seeds, mean (sd); by grade 0 / 1 / 2 / 3:")
    for key in per_seed[0]:
        columns = np.array([f[key] for f in per_seed], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)          # a grade no seed drew: NaN
            means = np.nanmean(columns, axis=0)
            sds = np.nanstd(columns, axis=0, ddof=1) if len(per_seed) > 1 else np.zeros_like(means)
        real = f"   real: {fmt(REAL[key])}" if key in REAL else ""
        print(f"  {key:52s} " + " / ".join(f"{m:.3f} ({s:.3f})" for m, s in zip(means, sds)) + real)
    for who in choices[0]:
        models = [c[who] for c in choices]
        print(f"  calibration chosen for {who}: " + ", ".join(f"{m} {models.count(m)}x" for m in sorted(set(models))))
    print(f"  real MGD-1k (reported): {REAL_AGREEMENT}")
    print(f"seconds per generated image: min {min(speeds):.3f}, median {statistics.median(speeds):.3f}")


if __name__ == "__main__":
    main()

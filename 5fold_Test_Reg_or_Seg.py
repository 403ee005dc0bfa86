"""Test trained models on each fold's test patients, or segment new images.

    python 5fold_Test_Reg_or_Seg.py --mode seg --data-dir D --fold all --exp SEG SUP [--save-images]
    python 5fold_Test_Reg_or_Seg.py --mode reg --data-dir D --fold all --exp REG [--save-images]
    python 5fold_Test_Reg_or_Seg.py --mode predict --exp SEG --fold all --input IMG_DIR --output OUT_DIR

seg and reg score every run of each fold (each RUNS/EXP/seed<S>/fold<K>/, or the one
RUNS/EXP/fold<K>/) and write RUNS/EXP/test/per_image.csv (per_pair.csv), runs.csv (one
row per run) and summary.csv and print tables (seg: the pixel metrics, and clDice,
gland-level detection and AJI of utils.evaluation.instance_metrics). seg also compares
the clinical measures on predicted and true masks of one run per fold (measures.csv,
clinical_summary.csv, Bland-Altman and confusion-matrix PNGs; with --grades, the
estimated meiboscore with clinicians' grades, calibrated with --calibration), and with
several --exp every experiment with the first, within runs (per image: bootstrap
interval, Wilcoxon p) and over runs (t interval, sign-flip p, patient-level interval,
noise floor, verdict; docs/COMPARISON.md), in RUNS/<first>/test/comparison.csv. predict
writes OUT_DIR/masks/, overlays/, gland_area.csv, glands.csv and images.csv
(--eyelid-exp: eyelid masks and the eyelid-dependent measures). Each fold's model is
its best checkpoint on val (best.json), never one chosen on test.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dataloaders.dataset import IMAGE_EXTS, DatasetFolder
from dataloaders.fold_data import open_fold
from dataloaders.folds import parse_folds
from dataloaders.grades import read_grades
from dataloaders.registration_data import RegistrationPairSet
from dataloaders.segmentation_data import SegmentationEvalSet
from networks.segmentation_net import SegmentationNet
from utils.cli import OneLineErrorParser, add_common_args
from utils.clinical.calibration import load_calibration
from utils.clinical.measures import default_settings
from utils.clinical.report import measure_pair, write_report
from utils.errors import InputError, run_cli
from utils.evaluation.comparison import compare, format_comparison
from utils.evaluation.loops import evaluate_registration, evaluate_segmentation
from utils.evaluation.metrics import HD95_EMPTY_POLICY, masks_from_scores
from utils.evaluation.prediction import check_targets, gland_probability, load_fold_models, predict_folder
from utils.evaluation.run_comparison import COMPARISON_COLUMNS, RUN_COLUMNS
from utils.evaluation.run_comparison import (difference_rows, experiment_rows, format_differences,
                                             format_experiments, run_means)
from utils.evaluation.savers import registration_panel_saver, segmentation_overlay_saver
from utils.evaluation.summaries import (REG_COLUMNS, REG_METRICS, SEG_COLUMNS, SEG_METRICS, SEG_PIXEL_METRICS,
                                        SEG_THIN_METRICS, summary_columns, summary_rows, table_lines)
from utils.files import write_csv
from utils.stages.registration import load_registration_network
from utils.stages.segmentation_methods import method_of, training_setting
from utils.training.checkpoints import find_best_checkpoint, find_runs, load_network
from utils.training.runtime import select_device, use_amp


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        description="Score each fold's best (on val) segmentation or registration checkpoint on that "
                    "fold's test patients, or segment new images with one fold or a 5-fold ensemble.")
    parser.add_argument("--mode", required=True, choices=("seg", "reg", "predict"),
                        help="seg: segmentation metrics per test image; reg: warped-mask metrics per "
                             "ordered test pair; predict: masks for the images in --input")
    add_common_args(parser, data_required=False, several_exps=True)
    parser.add_argument("--checkpoint", default=None,
                        help="score this checkpoint file instead of the fold's best (one fold, one exp)")
    parser.add_argument("--pixel-size", type=float, default=1.0,
                        help="physical size of a pixel (e.g. mm) for HD95 and the clinical measures' lengths "
                             "and areas (default: 1 = pixels)")
    parser.add_argument("--save-images", action="store_true",
                        help="seg: TP/FP/FN overlay PNG per test image; reg: panel PNG per test pair "
                             "(under RUNS/EXP/test/images/)")
    parser.add_argument("--grades", default=None, metavar="CSV",
                        help="seg: clinicians' meiboscores (name,grade 0-3) to compare with the meiboscore "
                             "estimated from each predicted mask and the image's eyelid mask")
    parser.add_argument("--input", default=None, help="predict: folder of images to segment")
    parser.add_argument("--output", default=None,
                        help="predict: folder for masks, overlays, gland_area.csv, glands.csv and images.csv")
    parser.add_argument("--eyelid-exp", default=None,
                        help="experiment trained with --target eyelid, whose models segment the eyelid, which "
                             "gives the eyelid-dependent measures (area ratio, dropout, meiboscore); predict: "
                             "its folds' ensemble; seg: for test images without an Eyelid/ mask, its model of "
                             "the same fold")
    parser.add_argument("--calibration", default=None, metavar="FILE",
                        help="a meiboscore_calibration.json (python -m utils.gland_measures --calibrate): "
                             "seg compares its calibrated meiboscore with --grades, predict adds it to "
                             "images.csv as calibrated_meiboscore")
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                        help="mixed precision: auto = on with CUDA only (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def runs_of(args: argparse.Namespace, exp: str, k: int, trainer: str) -> list[tuple[int | None, Path]]:
    """``(seed of its seed<S> folder or None, best checkpoint)`` of every run of ``exp`` and fold
    ``k`` (``utils.training.checkpoints.find_runs``), or the one ``--checkpoint``."""
    if args.checkpoint:
        return [(None, Path(args.checkpoint))]
    hint = f"python {trainer} --data-dir {args.data_dir} --fold {k} --exp {exp}"
    return [(run.seed, find_best_checkpoint(run.run_dir, hint)) for run in find_runs(args.runs_dir, exp, k, hint)]


def run_seed(folder_seed: int | None, trained: dict) -> int | None:
    """A run's seed: that of its seed<S> folder, else the ``--seed`` saved in its checkpoint."""
    return folder_seed if folder_seed is not None else trained.get("seed")


def score_experiments(args: argparse.Namespace, folds: list[int], score_run, csv_name: str,
                      columns: list[str], metrics: list[str], tables: list[tuple[str, list[str]]],
                      trainer: str) -> dict[str, list[dict]]:
    """For each ``--exp``: rows of every run of every fold (``score_run(exp, k, folder seed,
    checkpoint, folder, out_dir)``, rows tagged with their ``seed``), the per-item CSV,
    runs.csv (one row per run), summary.csv, and one line of each printed side-by-side
    table (``tables``: ``(title, metrics)``). Returns the rows by experiment."""
    folder = DatasetFolder(args.data_dir, resize=args.resize)
    table, scored = [], {}
    for exp in args.exp:
        out_dir = Path(args.runs_dir) / exp / "test"
        rows = [row for k in folds for seed, path in runs_of(args, exp, k, trainer)
                for row in score_run(exp, k, seed, path, folder, out_dir)]
        write_csv(out_dir / csv_name, rows, columns)
        write_csv(out_dir / "runs.csv", run_means(rows, metrics), RUN_COLUMNS + metrics)
        summary = summary_rows(rows, metrics, folds)
        write_csv(out_dir / "summary.csv", summary, summary_columns(metrics, summary))
        empties = summary[-1].get("hd95_empty_cases", 0)
        print(f"{exp}: {len(rows)} rows -> {out_dir / csv_name}, {out_dir / 'runs.csv'}, {out_dir / 'summary.csv'}"
              + (f"; {empties} image(s) with an empty mask ({HD95_EMPTY_POLICY})" if empties else ""))
        table.append((exp, summary[-1]))
        scored[exp] = rows
    for title, shown in tables:
        print("\n".join(table_lines(f"{title}, folds {','.join(map(str, folds))}", table, shown)))
    return scored


def print_comparison(args: argparse.Namespace, scored: dict[str, list[dict]], metrics: list[str]) -> None:
    """Each experiment's runs (mean +- sd over its (fold, seed) runs) when one has several; with
    several --exp, every experiment against the first one named, within runs (per image) and
    over runs (utils.evaluation.run_comparison), printed and written to
    RUNS/<first>/test/comparison.csv."""
    runs = {exp: run_means(rows, metrics) for exp, rows in scored.items()}
    spreads = experiment_rows(runs, metrics)
    if max(len(r) for r in runs.values()) > 1:
        print("\nRuns: each (fold, seed) run is one sample, its value the mean over its test images "
              "(mean +- sd over runs; sd over folds, and over seeds within a fold)")
        print("\n".join(format_experiments(spreads)))
    reference, *others = args.exp
    if not others:
        return
    images = [row for exp in others
              for row in compare(scored[reference], scored[exp], metrics, reference, exp, seed=args.seed)]
    differences = [row for exp in others
                   for row in difference_rows(reference, runs[reference], scored[reference], exp, runs[exp],
                                              scored[exp], metrics, seed=args.seed)]
    path = Path(args.runs_dir) / reference / "test" / "comparison.csv"
    write_csv(path, spreads + differences + images, COMPARISON_COLUMNS)
    print(f"\nWithin runs, per image (experiment - {reference} on the same test images of the same fold and seed; "
          f"95 % bootstrap interval over images, Wilcoxon p): blind to training noise, optimistic")
    print("\n".join(format_comparison(images)))
    print(f"\nOver runs (experiment - {reference}, paired by fold and seed; 95 % t interval over runs, exact "
          f"sign-flip p; within-run: 95 % interval with test patients resampled; noise floor: {reference}'s "
          f"run-to-run sd; HD95: lower is better) -> {path}")
    print("\n".join(format_differences(differences)))


def calibration_of(args: argparse.Namespace):
    """The --calibration file, checked against the measure settings this script uses (or None)."""
    return load_calibration(args.calibration, default_settings(args.pixel_size)) if args.calibration else None


def eyelid_models_of(args: argparse.Namespace, folds: list[int], device: torch.device) -> list:
    """The --eyelid-exp models of ``folds`` (checked to segment the eyelid), or []."""
    if not args.eyelid_exp:
        return []
    models = load_fold_models(args.runs_dir, args.eyelid_exp, folds, device,
                              hint=f"train it with: python 5fold_Train_SS_MGS.py --target eyelid --exp {args.eyelid_exp}")
    check_targets(models, "eyelid", "--eyelid-exp")
    return models


def test_segmentation(args: argparse.Namespace, folds: list[int], device: torch.device) -> None:
    amp = use_amp(args.amp, device)
    grades = read_grades(args.grades) if args.grades else None
    if args.calibration and not args.grades:
        raise InputError("--mode seg uses --calibration to compare the calibrated meiboscore with --grades: pass both")
    calibration = calibration_of(args)
    measured: dict[str, tuple[list[dict], list[dict]]] = {}
    clinical_runs: dict[tuple[str, int], int | None] = {}  # (exp, fold) -> the seed whose masks are measured
    settings: dict[str, str] = {}  # training setting -> the first experiment trained with it

    def score_run(exp: str, k: int, folder_seed: int | None, path: Path, folder: DatasetFolder,
                  out_dir: Path) -> list[dict]:
        data = open_fold(args.data_dir, k, folder=folder, need_prealign=False)
        net, state = load_network(path, SegmentationNet(), device)
        trained = state.get("args") or {}
        seed = run_seed(folder_seed, trained)
        print(f"{exp} fold {k} seed {seed}: {method_of(trained)}")
        settings.setdefault(training_setting(trained), exp)
        target = trained.get("target", "gland")
        images = out_dir / "images" / ("" if folder_seed is None else f"seed{folder_seed}")
        keepers = [segmentation_overlay_saver(images)] if args.save_images else []
        if target == "gland" and (exp, k) not in clinical_runs:  # one run per fold: image names stay unique
            clinical_runs[(exp, k)] = seed
            keepers.append(measure_collector(folder, measured.setdefault(exp, ([], [])), args.pixel_size,
                                             eyelid_models_of(args, [k], device), device, amp))
        rows = evaluate_segmentation(net, SegmentationEvalSet(data.folder, data.fold.test, target), device, k,
                                     amp=amp, pixel_size=args.pixel_size, progress=not args.no_progress,
                                     keep_outputs=lambda batch, pred: [keep(batch, pred) for keep in keepers],
                                     thin_structures=True)
        return [{**row, "seed": seed} for row in rows]

    unit = "pixels" if args.pixel_size == 1 else "units of --pixel-size"
    tables = [(f"Segmentation of test images (mean +- std over the images of every run; HD95 in {unit})",
               SEG_PIXEL_METRICS),
              ("Thin structures and glands (mean +- std over the images of every run; glands_merged, "
               "glands_split: glands per image)", SEG_THIN_METRICS)]
    scored = score_experiments(args, folds, score_run, "per_image.csv", SEG_COLUMNS, SEG_METRICS, tables,
                               "5fold_Train_SS_MGS.py")
    if len(settings) > 1:
        print("\nwarning: these models were trained with different settings ("
              + "; ".join(f"{exp}: {setting}" for setting, exp in settings.items())
              + "), so their differences are not those of the methods alone: train every method with one "
              "--augment and --dropout")
    print_comparison(args, scored, SEG_METRICS)
    for exp, (pred_rows, true_rows) in measured.items():
        seeds = {k: seed for (name, k), seed in clinical_runs.items() if name == exp}
        if len(run_means(scored[exp], [])) > len(seeds):
            print(f"\n{exp}: clinical measures of one run per fold ("
                  + ", ".join(f"seed {seed} of fold {k}" for k, seed in seeds.items()) + ")")
        print("\n".join(write_report(Path(args.runs_dir) / exp / "test", exp, pred_rows, true_rows, grades,
                                      calibration)))


def measure_collector(folder: DatasetFolder, rows: tuple[list[dict], list[dict]], pixel_size: float,
                      eyelid_models: Sequence = (), device: torch.device | None = None, amp: bool = False):
    """Clinical measures of each test image's predicted and true mask, with its true eyelid
    (``Eyelid/<name>.png``) or, without one, the eyelid ``eyelid_models`` segment (if any)."""
    def collect(batch: dict, pred: np.ndarray) -> None:
        name = batch["name"][0]
        if folder.has_eyelid(name):
            eyelid = folder.load_eyelid(name)
        elif eyelid_models:
            eyelid = gland_probability(eyelid_models, batch["image"][0, 0].numpy(), device, amp) > 0.5
        else:
            eyelid = None
        true = masks_from_scores(batch["label"])[0].numpy()
        predicted_row, true_row = measure_pair(name, pred, true, eyelid, pixel_size)
        rows[0].append(predicted_row)
        rows[1].append(true_row)
    return collect


def test_registration(args: argparse.Namespace, folds: list[int], device: torch.device) -> None:
    if args.calibration or args.eyelid_exp:
        raise InputError("--calibration and --eyelid-exp belong to --mode seg and predict (clinical measures)")

    def score_run(exp: str, k: int, folder_seed: int | None, path: Path, folder: DatasetFolder,
                  out_dir: Path) -> list[dict]:
        data = open_fold(args.data_dir, k, folder=folder, progress=not args.no_progress)
        net, state = load_registration_network(path, device)
        seed = run_seed(folder_seed, state.get("args") or {})
        images = out_dir / "images" / ("" if folder_seed is None else f"seed{folder_seed}")
        save = registration_panel_saver(images) if args.save_images else None
        rows = evaluate_registration(net, RegistrationPairSet(data.folder, data.fold.test, data.prealign),
                                     device, k, progress=not args.no_progress, keep_outputs=save)
        return [{**row, "seed": seed} for row in rows]

    score_experiments(args, folds, score_run, "per_pair.csv", REG_COLUMNS, REG_METRICS,
                      [("Registration of ordered test pairs (mean +- std over the pairs of every run)", REG_METRICS)],
                      "5fold_Train_Reg.py")


def predict(args: argparse.Namespace, folds: list[int], device: torch.device) -> None:
    if not args.input or not args.output:
        raise InputError("--mode predict needs --input IMG_DIR and --output OUT_DIR")
    if len(args.exp) != 1:
        raise InputError("--mode predict takes one --exp (its folds' runs form the ensemble)")
    in_dir, out_dir = Path(args.input), Path(args.output)
    if not in_dir.is_dir():
        raise InputError(f"--input {in_dir} is not a folder")
    files = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise InputError(f"--input {in_dir} holds no images ({', '.join(IMAGE_EXTS)})")
    amp = use_amp(args.amp, device)
    if args.calibration and not args.eyelid_exp:
        raise InputError("--calibration needs --eyelid-exp in --mode predict: the calibrated meiboscore needs the eyelid")
    calibration = calibration_of(args)
    models = load_fold_models(args.runs_dir, args.exp[0], folds, device, args.checkpoint,
                              hint=f"train it with: python 5fold_Train_SS_MGS.py --exp {args.exp[0]}")
    check_targets(models, "gland", "--exp")
    eyelid_models = eyelid_models_of(args, folds, device)
    count = predict_folder(files, out_dir, models, eyelid_models, device, amp, args.pixel_size,
                           progress=not args.no_progress, calibration=calibration)
    print(f"{count} images segmented with {len(models)} model(s) (every run of the folds)"
          + (f" and {len(eyelid_models)} eyelid model(s)" if eyelid_models else "") + f" -> {out_dir}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.mode != "predict" and not args.data_dir:
        raise InputError(f"--mode {args.mode} needs --data-dir")
    if not math.isfinite(args.pixel_size) or args.pixel_size <= 0:
        raise InputError(f"--pixel-size must be > 0, got {args.pixel_size}")
    folds = parse_folds(args.fold)
    if args.checkpoint and (len(folds) > 1 or len(args.exp) > 1):
        raise InputError("--checkpoint scores one file: use it with one --fold and one --exp")
    device = select_device(args.device)
    {"seg": test_segmentation, "reg": test_registration, "predict": predict}[args.mode](args, folds, device)


if __name__ == "__main__":
    run_cli(main)

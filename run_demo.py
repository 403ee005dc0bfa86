"""Run the whole SS-MGS pipeline on the bundled synthetic demo, for one fold and several seeds.

    python run_demo.py

Steps (each is the command a user would type; they are printed as they run):
synthetic data -> folds -> affine pre-alignment -> registration training (one
model for the fold) -> the supervised-only baseline and SS-MGS (RSGM + RNSF), each
trained with every seed (``--seeds``: 3 by default) -> registration test ->
segmentation test: every run scored, the two methods' mean +- sd over runs, and
SS-MGS compared with the baseline over runs (difference, interval, p-value, noise
floor, verdict). ``--methods all`` (or a list) trains those methods instead, with
the same schedule, and compares each with the first named. The training runs go
``--jobs`` at once (default: one per CPU core), each on one CPU thread, so that the
results do not depend on the machine's core count (docs/COMPARISON.md). The schedule
is short so that it finishes in minutes on a laptop CPU; the paper's schedule is the
scripts' default (see README.md).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Sequence

from dataloaders.folds import parse_folds
from utils.cli import OneLineErrorParser
from utils.errors import InputError, run_cli
from utils.stages.segmentation_methods import METHODS, select_methods
from utils.training.commands import run_in_order, run_parallel
from utils.training.sweep import AFTER, INDEPENDENT, PREPARE, REGISTRATION, SEGMENTATION, build_plan

DEFAULT_METHODS = ["supervised", "ss-mgs"]
DEFAULT_SEEDS = 3
FIRST_SEED, SEED_STEP = 3407, 10  # seeds 3407, 3417, ...: a run of seed S and fold K is seeded with S + K


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Run the complete pipeline on synthetic demo data.")
    parser.add_argument("--data-dir", default="Datasets/Demo",
                        help="where the demo dataset is made (reused if present; default: Datasets/Demo)")
    parser.add_argument("--runs-dir", default="runs", help="output root (default: runs)")
    parser.add_argument("--fold", default="1", help="fold to train and test: 1..5 or all (default: 1)")
    parser.add_argument("--patients", type=int, default=12, help="demo patients (default: 12)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("W", "H"),
                        help="demo image size (default: 256 128)")
    parser.add_argument("--reg-epochs", type=int, default=6, help="registration epochs (default: 6)")
    parser.add_argument("--reg-iters", type=int, default=50, help="registration iterations/epoch (default: 50)")
    parser.add_argument("--seg-epochs", type=int, default=10, help="segmentation epochs (default: 10)")
    parser.add_argument("--seg-iters", type=int, default=50, help="segmentation iterations/epoch (default: 50)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="compute device (default: auto)")
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers (default: 1)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help=f"segmentation methods to train and compare with the first one named: 'all' "
                             f"({' '.join(METHODS)}) or a list of them (default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[DEFAULT_SEEDS], metavar="N",
                        help=f"one value N: N seeds ({FIRST_SEED}, {FIRST_SEED + SEED_STEP}, ...); two or more: "
                             f"those seeds. Every method trains once per seed and the test compares the runs "
                             f"(default: {DEFAULT_SEEDS})")
    parser.add_argument("--jobs", type=int, default=0, metavar="J",
                        help="training runs at once, each on one CPU thread (--threads 1, so that the results "
                             "are the same for any J and any core count); 1 runs them one after the other with "
                             "their progress on the terminal (default 0: one per CPU core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def chosen_seeds(values: list[int]) -> list[int]:
    """``--seeds`` -> the seeds: a count, or the list itself."""
    if len(values) == 1:
        if values[0] < 1:
            raise InputError(f"--seeds {values[0]}: give a number of seeds >= 1, or two or more seeds")
        return [FIRST_SEED + SEED_STEP * i for i in range(values[0])]
    if len(set(values)) < len(values):
        raise InputError(f"--seeds {' '.join(map(str, values))}: a seed is repeated")
    return list(values)


def experiment(method: str) -> str:
    """The demo's experiment name of a method (the default two keep their historical names)."""
    return {"ss-mgs": "demo_SS-MGS", "supervised": "demo_supervised"}.get(method, f"demo_{method}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    methods = select_methods(args.methods, DEFAULT_METHODS)
    seeds = chosen_seeds(args.seeds)
    folds = parse_folds(args.fold)
    jobs = args.jobs or os.cpu_count() or 1
    if jobs < 1:
        raise InputError(f"--jobs must be >= 1 (0: one per CPU core), got {args.jobs}")
    started = time.time()
    data = args.data_dir
    quiet = ["--no-progress"] if args.no_progress or jobs > 1 else []
    train = ["--workers", str(args.workers), "--panel-every", "2", "--overwrite", "--threads", "1", *quiet]
    if not (Path(data) / "Image").is_dir():
        run_in_order([["python", "-m", "utils.make_demo_data", data, "--patients", str(args.patients),
                       "--images-per-patient", "4", "--size", *map(str, args.size), "--seed", "0"]])
    else:
        print(f"using the existing dataset in {data}")
    run_in_order([["python", "-m", "utils.make_folds", data]])
    plan = build_plan(methods, {m: METHODS[m].uses_registration for m in methods}, folds, seeds, data,
                      args.runs_dir, args.device, reg_exp="demo_REG",
                      reg_args=["--epochs", str(args.reg_epochs), "--iters", str(args.reg_iters), *train],
                      seg_args=["--epochs", str(args.seg_epochs), "--iters", str(args.seg_iters), *train],
                      names={m: experiment(m) for m in methods})
    training = [PREPARE, REGISTRATION, SEGMENTATION, INDEPENDENT]
    if jobs == 1:
        run_in_order([command for _, command in plan.tasks(training)])
    else:
        print(f"\n{len(plan.commands()) - 2} training runs, {jobs} at once with one CPU thread each "
              f"(output in {Path(args.runs_dir) / 'demo_logs'}):")
        run_parallel(plan.tasks(training), AFTER, jobs, Path(args.runs_dir) / "demo_logs")
    where = ["--data-dir", data, "--fold", args.fold, "--runs-dir", args.runs_dir, "--device", args.device]
    if plan.registration:
        run_in_order([["python", "5fold_Test_Reg_or_Seg.py", "--mode", "reg", *where, "--exp", "demo_REG",
                       "--no-progress"]])
    run_in_order([[*plan.gather[0], "--no-progress"]])
    print(f"\ndemo finished in {(time.time() - started) / 60:.1f} min; TensorBoard: "
          f"tensorboard --logdir {args.runs_dir}")


if __name__ == "__main__":
    run_cli(main)

"""Run the whole SS-MGS pipeline on the bundled synthetic demo, for one fold and several seeds.

    python run_demo.py

Steps (each is the command a user would type; they are printed as they run):
synthetic data -> folds -> affine pre-alignment -> registration training (one
model for the fold) -> the supervised-only baseline and SS-MGS (RSGM + RNSF), each
trained with every seed (``--seeds``: 3 by default) -> registration test ->
segmentation test: every run scored, the two methods' mean +- sd over runs, and
SS-MGS compared with the baseline over runs (difference, interval, p-value, noise
floor, verdict). ``--methods all`` (or a list) trains those methods instead, with
the same schedule, and compares each with the first named. The schedule is short
so that it finishes in minutes on a laptop CPU; the paper's schedule is the
scripts' default (see README.md).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from utils.cli import OneLineErrorParser
from utils.errors import InputError, run_cli
from utils.stages.segmentation_methods import METHODS, select_methods

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


def run(command: list[str]) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    result = subprocess.run([sys.executable if c == "python" else c for c in command])
    if result.returncode != 0:
        raise InputError(f"step failed (exit {result.returncode}): {shlex.join(command)}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    methods = select_methods(args.methods, DEFAULT_METHODS)
    seeds = [str(seed) for seed in chosen_seeds(args.seeds)]
    started = time.time()
    data = args.data_dir
    common = ["--data-dir", data, "--fold", args.fold, "--runs-dir", args.runs_dir, "--device", args.device]
    quiet = ["--no-progress"] if args.no_progress else []
    train = ["--workers", str(args.workers), "--panel-every", "2", "--overwrite"] + quiet
    if not (Path(data) / "Image").is_dir():
        run(["python", "-m", "utils.make_demo_data", data, "--patients", str(args.patients),
             "--images-per-patient", "4", "--size", *map(str, args.size), "--seed", "0"])
    else:
        print(f"using the existing dataset in {data}")
    run(["python", "-m", "utils.make_folds", data])
    run(["python", "-m", "utils.prealign", data])
    registration = any(METHODS[m].uses_registration for m in methods)
    if registration:
        run(["python", "5fold_Train_Reg.py", *common, "--exp", "demo_REG", "--epochs", str(args.reg_epochs),
             "--iters", str(args.reg_iters), *train])
    for method in methods:
        run(["python", "5fold_Train_SS_MGS.py", *common, "--exp", experiment(method), "--method", method,
             *(["--reg-exp", "demo_REG"] if METHODS[method].uses_registration else []), "--seeds", *seeds,
             "--epochs", str(args.seg_epochs), "--iters", str(args.seg_iters), *train])
    if registration:
        run(["python", "5fold_Test_Reg_or_Seg.py", "--mode", "reg", *common, "--exp", "demo_REG", *quiet])
    run(["python", "5fold_Test_Reg_or_Seg.py", "--mode", "seg", *common, "--exp",
         *(experiment(m) for m in methods), *quiet])
    print(f"\ndemo finished in {(time.time() - started) / 60:.1f} min; TensorBoard: "
          f"tensorboard --logdir {args.runs_dir}")


if __name__ == "__main__":
    run_cli(main)

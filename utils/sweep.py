"""Command: train a comparison grid (methods x folds x seeds) here, print it, or write a SLURM script.

    python -m utils.sweep --data-dir D --methods all --folds all --seeds 1 2 3 [--print | --slurm FILE]

Without ``--print`` / ``--slurm`` the commands run here, one after the other (``--jobs J``:
J at once), ending with the test script's ``--mode seg`` over every experiment. The methods, and which of them
need a registration network, come from the method registry
(``utils/stages/segmentation_methods.py``); the plan is :mod:`utils.training.sweep`.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from dataloaders.folds import parse_folds
from utils.cli import DEFAULT_SEED, OneLineErrorParser
from utils.errors import InputError, run_cli
from utils.files import atomic_write
from utils.stages.segmentation_methods import METHODS, select_methods
from utils.training.commands import run_in_order, run_parallel
from utils.training.sweep import AFTER, build_plan, command_lines, slurm_script


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.sweep",
        description="Train every method x fold x seed of a comparison with the trainers' own commands: "
                    "the affine cache, registration per fold (for the methods that need it), one "
                    "segmentation run per method, fold and seed in RUNS/<prefix><method>/seed<S>/fold<K>/, "
                    "then one test-script call (--mode seg) that compares them at run level. Runs them here "
                    "in order, or prints them (--print), or writes a SLURM job-array script (--slurm).")
    parser.add_argument("--data-dir", required=True, help="dataset root with Image/, Label/ and the fold files")
    parser.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                        help=f"methods to train, the first named is the reference of the comparison: 'all' "
                             f"({' '.join(METHODS)}) or a list of them")
    parser.add_argument("--folds", default="all", help="folds: 1..5, a list such as 1,3, or all (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[DEFAULT_SEED], metavar="S",
                        help=f"seeds; each is one run per method and fold (default: {DEFAULT_SEED}). Use seeds "
                             f"at least 5 apart: a run of seed S and fold K is seeded with S + K")
    parser.add_argument("--runs-dir", default="runs", help="root folder of all outputs (default: runs)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="device of every command (default: auto)")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("W", "H"), default=None,
                        help="process every image at W x H (passed to every command)")
    parser.add_argument("--exp-prefix", default="",
                        help="experiment names are <prefix><method> (default: the method's name)")
    parser.add_argument("--reg-exp", default="REG", help="registration experiment (default: REG)")
    parser.add_argument("--reg-per-seed", action="store_true",
                        help="train registration per fold and seed (RUNS/REG/seed<S>/fold<K>), so that a seed "
                             "also varies the registration (default: one per fold, RUNS/REG/fold<K>, serving "
                             "every seed)")
    parser.add_argument("--reg-args", default="", metavar="FLAGS",
                        help="extra flags of every registration command, e.g. '--epochs 20 --diffeomorphic'")
    parser.add_argument("--seg-args", default="", metavar="FLAGS",
                        help="extra flags of every segmentation command, e.g. '--epochs 10 --iters 50' (flags "
                             "of one method only would be an error for the others)")
    parser.add_argument("--resume", action="store_true",
                        help="pass --resume to every training command (continue interrupted runs)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="run here: J commands at once, each into RUNS/sweep_logs/ (a command waits for the "
                             "part it needs); with J > 1 add '--threads 1' (or so) to --reg-args and --seg-args "
                             "so that the jobs do not compete for the cores (default: 1, one after the other)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--print", action="store_true", dest="print_only",
                     help="write the commands, one per line, in an order that works run one after the other")
    out.add_argument("--slurm", metavar="FILE", default=None,
                     help="write a bash script that submits the grid with sbatch (run it with: bash FILE): "
                          "prepare, the registration array, one array task per method x fold x seed (after "
                          "registration where the method needs it), and the gathering test job")
    parser.add_argument("--sbatch-args", default="", metavar="FLAGS",
                        help="--slurm: flags of every sbatch call, e.g. --sbatch-args='--gres=gpu:1 "
                             "--time=24:00:00' (with '=' when it is a single flag)")
    parser.add_argument("--setup", default="", metavar="COMMAND",
                        help="--slurm: shell line each job runs first, e.g. '. .venv/bin/activate'")
    return parser


def _split(flag: str, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise InputError(f"{flag} '{text}': cannot be split into flags ({exc})") from None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):
        raise InputError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated")
    if (args.sbatch_args or args.setup) and not args.slurm:
        raise InputError("--sbatch-args and --setup belong to --slurm")
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    methods = select_methods(args.methods, [])
    plan = build_plan(methods, {name: METHODS[name].uses_registration for name in methods},
                      parse_folds(args.folds), args.seeds, args.data_dir, args.runs_dir, args.device, args.reg_exp,
                      args.exp_prefix, args.reg_per_seed, args.resize, _split("--reg-args", args.reg_args),
                      _split("--seg-args", args.seg_args), args.resume)
    if args.print_only:
        print("\n".join(command_lines(plan)))
    elif args.slurm:
        path = Path(args.slurm)
        text = slurm_script(plan, Path.cwd().resolve(), _split("--sbatch-args", args.sbatch_args), args.setup,
                            title=f"python -m utils.sweep {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}")
        try:
            atomic_write(path, lambda handle: handle.write(text), "w")
        except OSError as exc:
            raise InputError(f"--slurm {path}: cannot write ({exc.strerror or exc})") from None
        print(f"wrote {path}: {len(plan.commands())} commands; submit them with: bash {path}")
    elif args.jobs == 1:
        run_in_order(plan.commands())
    else:
        run_parallel(plan.tasks(), AFTER, args.jobs, Path(args.runs_dir) / "sweep_logs")


if __name__ == "__main__":
    run_cli(main)

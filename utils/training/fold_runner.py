"""Train one stage per requested seed and fold: open the fold, prepare its run folder, seed, build, fit.

The trainers' ``main`` parses its arguments, picks the device and calls
:func:`train_folds` with the stage class; tests call it the same way. Without
``--seeds`` the one ``--seed`` trains ``RUNS/EXP/fold<K>``; with ``--seeds`` each seed S
trains ``RUNS/EXP/seed<S>/fold<K>`` (seeds in turn, each over the folds). A run of seed S
and fold K is seeded with ``S + K``; stages read the run's seed as ``args.seed``.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from dataloaders.dataset import DatasetFolder

from dataloaders.folds import parse_folds
from dataloaders.fold_data import FoldData, open_fold
from utils.training.checkpoints import prepare_run_dir, run_dir_for
from utils.training.engine import FitSettings, Stage, Validation, fit
from utils.training.runtime import seed_everything

#: ``build(args, fold number, fold data, device) -> Stage``.
StageBuilder = Callable[[argparse.Namespace, int, FoldData, torch.device], Stage]


def run_label(args: argparse.Namespace, k: int) -> str:
    """``"fold K"``, or ``"seed S fold K"`` with ``--seeds``."""
    return f"seed {args.seed} fold {k}" if getattr(args, "seeds", None) else f"fold {k}"


def run_dir_of(args: argparse.Namespace, k: int):
    """The run folder of ``args.seed`` and fold ``k``: ``RUNS/EXP/fold<K>``, or with ``--seeds``
    ``RUNS/EXP/seed<S>/fold<K>``."""
    return run_dir_for(args.runs_dir, args.exp, k, args.seed if getattr(args, "seeds", None) else None)


def fit_settings(args: argparse.Namespace, run_dir, k: int) -> FitSettings:
    """The :class:`FitSettings` of the trainers' common flags (``utils.cli.add_training_args``).
    Every checkpoint also records the CPU thread count (results depend on it; docs/COMPARISON.md)."""
    return FitSettings(run_dir=run_dir, epochs=args.epochs, batch_size=args.batch_size, workers=args.workers,
                       keep_best=args.keep_best, panel_every=args.panel_every, resume=args.resume,
                       progress=not args.no_progress, label=run_label(args, k),
                       extra={"args": vars(args), "fold": k, "cpu_threads": torch.get_num_threads()})


def train_fold(args: argparse.Namespace, k: int, device: torch.device, build: StageBuilder,
               folder: DatasetFolder | None = None, need_prealign: bool = True) -> Validation | None:
    """Fold ``k`` of seed ``args.seed``: validate the data, create its run folder
    (:func:`run_dir_of`; refusing to mix with an earlier run unless ``--resume`` or
    ``--overwrite``), seed with ``args.seed + k``, build the stage and train it. Returns the
    last validation."""
    data = open_fold(args.data_dir, k, resize=args.resize, folder=folder, progress=not args.no_progress,
                     need_prealign=need_prealign)
    run_dir = prepare_run_dir(run_dir_of(args, k), args.resume, args.overwrite)
    seed_everything(args.seed + k)
    stage = build(args, k, data, device)
    return fit(stage, fit_settings(args, run_dir, k))


def train_folds(args: argparse.Namespace, device: torch.device, build: StageBuilder,
                need_prealign: bool = True) -> list[Validation | None]:
    """:func:`train_fold` for each seed of ``--seeds`` (or the one ``--seed``) and each fold of
    ``--fold`` (one number, a list or ``all``), seeds in turn, each over the folds."""
    folds = parse_folds(args.fold)
    folder = DatasetFolder(args.data_dir, resize=args.resize)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        print(f"{torch.get_num_threads()} CPU threads (a seeded run repeats exactly with the same thread count, "
              f"CPU kind and torch build; --threads N pins the count)")
    runs = [args] if not getattr(args, "seeds", None) else [
        argparse.Namespace(**{**vars(args), "seed": seed}) for seed in args.seeds]
    return [train_fold(run_args, k, device, build, folder, need_prealign) for run_args in runs for k in folds]

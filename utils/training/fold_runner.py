"""Train one stage per requested fold: open the fold, prepare its run folder, seed, build, fit.

The trainers' ``main`` parses its arguments, picks the device and calls
:func:`train_folds` with the stage class; tests call it the same way.
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


def fit_settings(args: argparse.Namespace, run_dir, k: int) -> FitSettings:
    """The :class:`FitSettings` of the trainers' common flags (``utils.cli.add_training_args``)."""
    return FitSettings(run_dir=run_dir, epochs=args.epochs, batch_size=args.batch_size, workers=args.workers,
                       keep_best=args.keep_best, panel_every=args.panel_every, resume=args.resume,
                       progress=not args.no_progress, label=f"fold {k}",
                       extra={"args": vars(args), "fold": k})


def train_fold(args: argparse.Namespace, k: int, device: torch.device, build: StageBuilder,
               folder: DatasetFolder | None = None, need_prealign: bool = True) -> Validation | None:
    """Fold ``k``: validate the data, create ``RUNS/EXP/fold<k>`` (refusing to mix with an
    earlier run unless ``--resume`` or ``--overwrite``), seed with ``--seed + k``, build
    the stage and train it. Returns the last validation."""
    data = open_fold(args.data_dir, k, resize=args.resize, folder=folder, progress=not args.no_progress,
                     need_prealign=need_prealign)
    run_dir = prepare_run_dir(run_dir_for(args.runs_dir, args.exp, k), args.resume, args.overwrite)
    seed_everything(args.seed + k)
    stage = build(args, k, data, device)
    return fit(stage, fit_settings(args, run_dir, k))


def train_folds(args: argparse.Namespace, device: torch.device, build: StageBuilder,
                need_prealign: bool = True) -> list[Validation | None]:
    """:func:`train_fold` for each fold of ``--fold`` (one number or ``all``), in turn."""
    folds = parse_folds(args.fold)
    folder = DatasetFolder(args.data_dir, resize=args.resize)
    return [train_fold(args, k, device, build, folder, need_prealign) for k in folds]

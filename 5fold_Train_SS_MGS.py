"""Train the semi-supervised segmenter with RSGM + RNSF (docs/METHOD.md sections 3-6), per fold.

    python 5fold_Train_SS_MGS.py --data-dir Datasets/Demo --fold 1 --exp SEG --reg-exp REG

`--method supervised|mean-teacher|ua-mt|cps|bcp|unimatch` trains a baseline with
the same network, labels, schedule and selection instead (`supervised` is the same
as `--no-rsgm --no-rnsf`). Outputs in RUNS/EXP/fold<K>/ as for the registration
trainer (best_*.pth by val IoU, best.json, last.pth, events). The methods are
utils/stages/; the loop utils/training/engine.py.
"""
from __future__ import annotations

from typing import Sequence

from utils.errors import run_cli
from utils.stages.segmentation_methods import build_parser, build_stage, check_args
from utils.training.fold_runner import train_folds
from utils.training.memory import keep_freed_memory
from utils.training.runtime import select_device, use_amp


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    device = select_device(args.device)
    use_amp(args.amp, device)  # an impossible --amp fails before any work
    if device.type == "cpu":
        keep_freed_memory()  # faster CPU iterations; a process-wide allocator setting (docs/benchmarks.md)
    train_folds(args, device, build_stage)


if __name__ == "__main__":
    run_cli(main)

"""Train the intra-patient registration network (docs/METHOD.md section 2), per fold.

    python 5fold_Train_Reg.py --data-dir Datasets/Demo --fold 1 --exp REG

Outputs in RUNS/EXP/fold<K>/: best_*.pth (best N by val IoU + Dice + recall),
best.json (which one is best), last.pth (for --resume), TensorBoard events.
The stage itself is utils/stages/registration.py; the loop utils/training/engine.py.
"""
from __future__ import annotations

from typing import Sequence

from utils.cli import check_training_args
from utils.errors import run_cli
from utils.stages.registration import RegistrationStage, build_parser
from utils.training.fold_runner import train_folds
from utils.training.memory import keep_freed_memory
from utils.training.runtime import select_device


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_training_args(args)
    device = select_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # faster CPU iterations; a process-wide allocator setting (docs/benchmarks.md)
    train_folds(args, device, RegistrationStage)


if __name__ == "__main__":
    run_cli(main)

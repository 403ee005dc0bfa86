"""The segmentation methods that ``5fold_Train_SS_MGS.py`` trains, and its flags."""
from __future__ import annotations

import argparse

import torch

from dataloaders.fold_data import FoldData
from utils.cli import add_common_args, add_training_args, check_training_args
from utils.stages import segmentation, ss_mgs
from utils.stages.segmentation import SegmentationStage


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``5fold_Train_SS_MGS.py``."""
    parser = argparse.ArgumentParser(
        description="Train the UNet segmenter with registration sampling generation (RSGM) and "
                    "reliable-negative contrastive feature supervision (RNSF), for one fold or all "
                    "five. Needs the fold's registration checkpoint (5fold_Train_Reg.py). Defaults "
                    "reproduce the paper.")
    add_common_args(parser, exp_default="SEG")
    add_training_args(parser, epochs=50, iters=200, lr=1e-3)
    segmentation.add_arguments(parser)
    ss_mgs.add_arguments(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """One-line InputError for unusable values."""
    check_training_args(args, "temperature", "negatives", "t_max")


def build_stage(args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> SegmentationStage:
    """The stage that trains fold ``k`` with the chosen method."""
    return ss_mgs.SSMGSStage(args, k, data, device)

"""What the semi-supervised baselines share on top of :class:`SegmentationStage`.

Every baseline trains on the fold's Atlas images with ``L_seg`` (the one supervised
loss) and adds its own use of the unlabelled pool (``u_a``, ``u_b``: every non-Atlas
training image, fully unlabelled patients included). Their schedules are fractions
of the whole run (``epochs x iterations`` steps), so they mean the same thing for
any schedule; their random draws come from one checkpointed generator.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from dataloaders.fold_data import FoldData
from networks.segmentation_net import SegmentationNet
from utils.stages.segmentation import SegmentationStage
from utils.training.runtime import make_generator
from utils.training.schedules import ramp_up


class SemiSupervisedStage(SegmentationStage):
    """Adds the global step (one per iteration, counted from 0), the run's length in steps, and
    ``method_rng`` (checkpointed)."""

    pool_views = True

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.steps_per_epoch = args.iters  # iterations, whatever the batch size (len(train_set) = iters x batch)
        self.total_steps = args.epochs * self.steps_per_epoch
        self.step = 0
        self.method_rng = make_generator(args.seed + k)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "method_rng": self.method_rng}

    def start(self, first_epoch: int, writer: SummaryWriter) -> None:
        self.step = first_epoch * self.steps_per_epoch

    def ramp(self) -> float:
        """``sigmoid_rampup(step, total steps)``: 0 at the start of the run, 1 at its end."""
        return ramp_up(self.step, self.total_steps)

    def teacher_like(self, student: SegmentationNet) -> SegmentationNet:
        """A copy of ``student`` that takes no gradients (an EMA teacher). It stays in training
        mode, as SSL4MIS's and BCP's EMA models do: with ``--dropout`` its predictions are
        stochastic (what makes UA-MT's passes differ); the student is still validated in
        eval mode."""
        teacher = self.segmenter().to(self.device)
        teacher.load_state_dict(student.state_dict())
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return teacher.train()

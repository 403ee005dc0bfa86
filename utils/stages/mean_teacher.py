"""Mean Teacher and UA-MT (SSL4MIS ``train_mean_teacher_2D.py``,
``train_uncertainty_aware_mean_teacher_2D.py``), ported to the shared segmenter.

Student + EMA teacher (``a = min(1 - 1/(step + 1), 0.99)``, updated after every student
step; the student is validated and saved). The teacher sees the unlabelled image
plus ``clamp(0.1 N(0, 1), -0.2, 0.2)``, the student the clean image. Consistency =
mean squared difference of the two softmax maps, weight ``0.1 sigmoid_rampup(step,
total steps)`` (1 at the end of the run); Mean Teacher's consistency is 0 for the
first 1/30 of the run. UA-MT masks it where the teacher is uncertain: 8 noisy
teacher passes, entropy of their mean softmax below ``(0.75 + 0.25
sigmoid_rampup(step, total)) ln 2``, ``sum(mask d) / (2 sum(mask) + 1e-16)``. The
teacher predicts in training mode, as SSL4MIS's does, so with ``--dropout`` its passes
also differ by the encoder dropout, not by the input noise alone.

Port notes: the supervised loss is ``L_seg`` (as for every method here, not
SSL4MIS's ``(CE + Dice) / 2``); the ramp runs per step over the whole run (SSL4MIS
steps it every 150 of 30,000 iterations); AdamW and the cosine schedule of the
shared segmenter replace SGD with poly decay.
"""
from __future__ import annotations

import argparse
import math

import torch

from dataloaders.fold_data import FoldData
from networks.losses import deep_supervision_loss
from networks.weights import ema_decay, ema_update
from utils.onehot import class_index
from utils.stages.augmentations import clamped_noise
from utils.stages.segmentation import scaled_step, split_outputs, tile_panel
from utils.stages.semi_supervised import SemiSupervisedStage
from utils.training.engine import FiniteCheck


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mean-teacher and ua-mt")
    group.add_argument("--ema-decay", type=float, default=0.99,
                       help="largest EMA decay of the teacher (mean-teacher, ua-mt, bcp, abd, ad-mt; default: 0.99)")
    group.add_argument("--consistency", type=float, default=0.1,
                       help="consistency weight reached at the end of the run (mean-teacher, ua-mt; "
                            "default: 0.1)")
    group.add_argument("--consistency-start", type=float, default=1 / 30,
                       help="mean-teacher: fraction of the run before the consistency term is used "
                            "(default: 1/30, i.e. 1000 of 30000 iterations)")
    group.add_argument("--teacher-noise", type=float, default=0.1,
                       help="std of the teacher's input noise, clipped at twice this (default: 0.1)")
    group.add_argument("--uncertainty-passes", type=int, default=8,
                       help="ua-mt: noisy teacher passes for the uncertainty (default: 8)")


def uncertainty(mean_probs: torch.Tensor) -> torch.Tensor:
    """UA-MT's uncertainty ``[B, 1, H, W]``: entropy (nats) of the mean softmax ``[B, C, H, W]``,
    ``-sum_c p log(p + 1e-6)`` as the original computes it."""
    return -(mean_probs * torch.log(mean_probs + 1e-6)).sum(dim=1, keepdim=True)


def uncertainty_threshold(progress: float) -> float:
    """``(0.75 + 0.25 sigmoid_rampup) ln 2``, ``progress`` = that ramp's value in [0, 1]."""
    return (0.75 + 0.25 * progress) * math.log(2.0)


def masked_consistency(student_probs: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask (s - t)^2) / (2 sum(mask) + 1e-16)`` (the 2 is the number of classes)."""
    distance = (student_probs - teacher_probs) ** 2
    return (mask * distance).sum() / (2.0 * mask.sum() + 1e-16)


class MeanTeacherStage(SemiSupervisedStage):
    """Mean Teacher; :class:`UAMTStage` adds the uncertainty mask."""

    uses_gate = True

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.teacher = self.teacher_like(self.net)
        self.max_decay, self.weight, self.noise_std = args.ema_decay, args.consistency, args.teacher_noise
        self.gate_steps = args.consistency_start * self.total_steps if self.uses_gate else 0.0

    def state(self) -> dict:
        return {**super().state(), "teacher": self.teacher}

    def noisy(self, images: torch.Tensor) -> torch.Tensor:
        return images + clamped_noise(images, self.method_rng, self.noise_std, 2 * self.noise_std)

    def consistency(self, student_probs: torch.Tensor, unlabelled: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Mean Teacher's consistency term and the teacher's probabilities (for the panel)."""
        with torch.no_grad(), self.autocast():
            teacher_probs = torch.softmax(self.teacher(self.noisy(unlabelled))["out"].float(), dim=1)
        return torch.mean((student_probs - teacher_probs) ** 2), {"teacher": teacher_probs}

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], dict]:
        x_l, y_l, u = self.training_inputs(batch, "x_l", "y_l", "u_a")
        groups = {"x_l": x_l, "u": u}
        with self.autocast():
            out = split_outputs(self.net(torch.cat([x_l, u])), groups)
        student_probs = torch.softmax(out["u"]["out"].float(), dim=1)
        ramp = self.ramp()
        consistency, seen = self.consistency(student_probs, u)
        if self.step < self.gate_steps:
            consistency = consistency * 0.0
        weight = self.weight * ramp
        terms = {"seg": deep_supervision_loss(out["x_l"], y_l), "consistency": consistency}
        terms["total"] = terms["seg"] + weight * consistency
        check(terms)
        scaled_step(terms["total"], self.optimizer, self.scaler)
        ema_update(self.teacher, self.net, ema_decay(self.step, self.max_decay))
        self.step += 1
        logged = {name: value.item() for name, value in terms.items()}
        logged["w_consistency"] = weight
        if "certain" in seen:
            logged.update(certain_fraction=float(seen["certain"].mean()), uncertainty_threshold=uncertainty_threshold(ramp))
        return logged, {"images": {"x_l": x_l, "u": u}, "outputs": out, **seen}

    def panel(self, last: dict) -> tuple[str, torch.Tensor]:
        """x_l, u, the student's and the teacher's prediction on u (and UA-MT's certain pixels)."""
        tiles = {"x_l": last["images"]["x_l"][0, 0], "u": last["images"]["u"][0, 0],
                 "student_u": class_index(last["outputs"]["u"]["out"][:1])[0].float(),
                 "teacher_u": class_index(last["teacher"][:1])[0].float()}
        if "certain" in last:
            tiles["certain"] = last["certain"][0, 0]
        return tile_panel("train/panel", tiles)


class UAMTStage(MeanTeacherStage):
    """UA-MT: the consistency only where the teacher is certain; no early gate."""

    uses_gate = False

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.passes = args.uncertainty_passes

    def consistency(self, student_probs: torch.Tensor, unlabelled: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad(), self.autocast():
            teacher_probs = torch.softmax(self.teacher(self.noisy(unlabelled))["out"].float(), dim=1)
            # one pass at a time (the original batches two): the same mean, with a fraction of
            # the activations live at once, which keeps the passes fast on CPU
            mean_probs = sum(torch.softmax(self.teacher(self.noisy(unlabelled))["out"].float(), dim=1)
                             for _ in range(self.passes)) / self.passes
        certain = (uncertainty(mean_probs) < uncertainty_threshold(self.ramp())).float()
        return (masked_consistency(student_probs, teacher_probs, certain),
                {"teacher": teacher_probs, "certain": certain})

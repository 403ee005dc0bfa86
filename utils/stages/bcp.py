"""Bidirectional copy-paste (BCP repository, ``code/ACDC_BCP_train.py``), ported to the shared segmenter.

Two phases, as published:

- **Pre-training is half of the run** (``--bcp-pretrain 0.5`` of the epochs): the
  original's ACDC script pre-trains for its full ``max_iterations`` (30k) and then
  self-trains for as many again; its ``pre_iterations`` (10k) is parsed but never used.
- **The tested model is the best on val among the self-training epochs only**: a
  pre-training epoch is validated (its best weights start self-training) but never
  becomes a best checkpoint (``Validation.selectable`` is False), as the original
  selects its self-training model among self-training checkpoints.

One zero box of ``int(2H/3) x int(2W/3)`` at a uniform position; ``M`` is 1 outside
it. Pre-training: labelled copy-paste, ``x_l`` outside the box and an Atlas image of
another patient inside, each region supervised by its own label. At the first
self-training epoch the best-on-val pre-training weights (kept apart from the best
checkpoints, in the checkpointed :class:`WeightsSnapshot`) start both the student
and the EMA teacher (fixed decay 0.99, no warm-up). Self-training: the teacher's
argmax labels the unlabelled images ``u_a``, ``u_b``; mix 1 = ``u_a`` outside, ``x_l``
inside; mix 2 = ``x_l2`` outside, ``u_b`` inside. Every region takes Dice + CE on its
own pixels, weight 1 for ground truth and 0.5 for a pseudo-label; the step's loss is
``(sum of Dice terms + sum of CE terms) / 2``.

Port notes: the original keeps only the largest connected component per class of a
pseudo-label; meibomian glands are many components, so that step is dropped. With
one labelled image per step, pre-training mixes two Atlas images of different
patients. The Dice is the project's soft Dice restricted to the region. The
student keeps its optimizer state when the pre-training weights are loaded.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from dataloaders.fold_data import FoldData
from networks.losses import region_cross_entropy, region_dice_loss
from networks.weights import ema_update
from utils.errors import InputError
from utils.onehot import class_index, one_hot
from utils.stages.augmentations import box_mask, copy_paste_box
from utils.stages.segmentation import scaled_step, tile_panel
from utils.stages.semi_supervised import SemiSupervisedStage
from utils.training.engine import FiniteCheck, Validation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("bcp")
    group.add_argument("--bcp-pretrain", type=float, default=0.5, metavar="F",
                       help="bcp: fraction of the epochs spent on labelled copy-paste pre-training; the "
                            "tested model is chosen among the self-training epochs that follow, so at "
                            "least one must remain (default: 0.5, as the original's two equal phases)")
    group.add_argument("--bcp-box", type=float, default=2 / 3,
                       help="bcp, abd: side of the pasted box as a fraction of the image side (default: 2/3)")
    group.add_argument("--bcp-pseudo-weight", type=float, default=0.5,
                       help="bcp, abd: weight of the pseudo-labelled region against 1 for ground truth "
                            "(default: 0.5)")


def pretrain_epochs(epochs: int, fraction: float) -> int:
    """The number of pre-training epochs: ``fraction`` of ``epochs``, rounded to the nearest."""
    return int(round(int(epochs) * float(fraction)))


def check_schedule(epochs: int, fraction: float, flag: str = "--bcp-pretrain") -> None:
    """InputError when the pre-training fraction (``flag``) leaves no self-training epoch to select
    the tested model from."""
    if pretrain_epochs(epochs, fraction) >= epochs:
        raise InputError(f"{flag} {fraction:g} of --epochs {epochs} leaves no self-training epoch, "
                         f"and the tested model is chosen among those; use a smaller fraction or more epochs")


def mix(outside: torch.Tensor, inside: torch.Tensor, outside_mask: torch.Tensor) -> torch.Tensor:
    """``outside * M + inside * (1 - M)`` for images ``[B, C, H, W]`` and ``M [B, 1, H, W]``
    (labels: mix the one-hot maps, which stay one-hot)."""
    return outside * outside_mask + inside * (1.0 - outside_mask)


def mixed_loss(logits: torch.Tensor, outside_label: torch.Tensor, inside_label: torch.Tensor,
               outside_mask: torch.Tensor, outside_weight: float, inside_weight: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Dice, CE)`` of a mixed image: each region against its own one-hot label, weighted."""
    inside_mask = 1.0 - outside_mask
    dice = (outside_weight * region_dice_loss(logits, outside_label, outside_mask)
            + inside_weight * region_dice_loss(logits, inside_label, inside_mask))
    ce = (outside_weight * region_cross_entropy(logits, outside_label, outside_mask)
          + inside_weight * region_cross_entropy(logits, inside_label, inside_mask))
    return dice, ce


class WeightsSnapshot:
    """The best pre-training weights so far and their val score (checkpointed)."""

    def __init__(self) -> None:
        self.score = float("-inf")
        self.weights: dict[str, torch.Tensor] = {}

    def offer(self, score: float, net: torch.nn.Module) -> None:
        if score > self.score:
            self.score = float(score)
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.weights = float(state["score"]), dict(state["weights"])


class BCPStage(SemiSupervisedStage):
    """BCP: labelled copy-paste pre-training, then teacher-labelled bidirectional copy-paste."""

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.teacher = self.teacher_like(self.net)
        check_schedule(args.epochs, args.bcp_pretrain)
        self.pretrain_epochs = pretrain_epochs(args.epochs, args.bcp_pretrain)
        self.box_fraction, self.pseudo_weight, self.decay = args.bcp_box, args.bcp_pseudo_weight, args.ema_decay
        self.pretrained = WeightsSnapshot()
        self.pretraining = self.pretrain_epochs > 0

    def state(self) -> dict:
        return {**super().state(), "teacher": self.teacher, "pretrained": self.pretrained}

    def start(self, first_epoch: int, writer: SummaryWriter) -> None:
        super().start(first_epoch, writer)
        self.pretraining = first_epoch < self.pretrain_epochs

    def start_epoch(self, epoch: int) -> None:
        self.pretraining = epoch < self.pretrain_epochs
        if epoch == self.pretrain_epochs and self.pretrained.weights:
            self.net.load_state_dict(self.pretrained.weights)
            self.teacher.load_state_dict(self.pretrained.weights)
            print(f"fold {self.fold}: BCP self-training starts from the pre-training weights of val IoU "
                  f"{self.pretrained.score:.4f}")

    def validate(self, epoch: int) -> Validation:
        """Pre-training epochs: offered to the snapshot that starts self-training, never selectable."""
        validation = super().validate(epoch)
        if not self.pretraining:
            return validation
        self.pretrained.offer(validation.score, self.net)
        return replace(validation, selectable=False,
                       scalars={**validation.scalars, "best_pretraining_iou": self.pretrained.score},
                       note=f"{validation.note}; pre-training, not selectable, "
                            f"best pre-training IoU {self.pretrained.score:.4f}")

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {"bcp_pretraining": float(self.pretraining)}

    def outside_mask(self, like: torch.Tensor) -> torch.Tensor:
        """``M [B, 1, H, W]``: 0 in this step's box, 1 elsewhere (one box for the whole batch)."""
        height, width = like.shape[-2:]
        box = copy_paste_box(height, width, self.method_rng, self.box_fraction)
        return 1.0 - box_mask(height, width, box, like.shape[0], like.device)

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], dict]:
        x_l, y_l, x_l2, y_l2 = self.training_inputs(batch, "x_l", "y_l", "x_l2", "y_l2")
        keep = self.outside_mask(x_l)
        if self.pretraining:
            pairs = [(x_l, y_l, 1.0, x_l2, y_l2, 1.0)]
        else:
            u_a, u_b = self.training_inputs(batch, "u_a", "u_b")
            with torch.no_grad(), self.autocast():
                pseudo = one_hot(class_index(self.teacher(torch.cat([u_a, u_b]))["out"].float()))
            pseudo_a, pseudo_b = pseudo.split(u_a.shape[0])
            pairs = [(u_a, pseudo_a, self.pseudo_weight, x_l, y_l, 1.0),
                     (x_l2, y_l2, 1.0, u_b, pseudo_b, self.pseudo_weight)]
        images = torch.cat([mix(out_img, in_img, keep) for out_img, _, _, in_img, _, _ in pairs])
        with self.autocast():
            logits = self.net(images)["out"].split(x_l.shape[0])
        dice = ce = 0.0
        for (_, out_label, out_weight, _, in_label, in_weight), mixed_logits in zip(pairs, logits):
            d, c = mixed_loss(mixed_logits, out_label, in_label, keep, out_weight, in_weight)
            dice, ce = dice + d, ce + c
        terms = {"mix_dice": dice, "mix_ce": ce, "total": (dice + ce) / 2.0}
        check(terms)
        scaled_step(terms["total"], self.optimizer, self.scaler)
        if not self.pretraining:
            ema_update(self.teacher, self.net, self.decay)
        self.step += 1
        labels = torch.cat([mix(out_label, in_label, keep) for _, out_label, _, _, in_label, _ in pairs])
        return ({name: float(value.detach()) for name, value in terms.items()},
                {"images": images, "labels": labels, "logits": logits[0]})

    def panel(self, last: dict) -> tuple[str, torch.Tensor]:
        """The first mixed image, its mixed label and the student's prediction."""
        return tile_panel("train/panel", {"mixed": last["images"][0, 0], "mixed_label": last["labels"][0, 1],
                                          "prediction": class_index(last["logits"][:1])[0].float()})

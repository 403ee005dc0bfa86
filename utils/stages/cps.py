"""Cross pseudo supervision (SSL4MIS ``train_cross_pseudo_supervision_2D.py``), ported to the
shared segmenter.

Two segmenters, initialised differently (Kaiming normal, as the shared segmenter is,
and Xavier normal, as the original's second network is), each with its own AdamW and
cosine schedule. On the unlabelled image each takes cross-entropy against the other's
detached argmax (no threshold), weight ``0.1 sigmoid_rampup(step, total steps)``;
both take ``L_seg`` on the labelled image. One backward of the sum, both step. The
first network is the one validated, saved as ``"model"`` and tested (as the original
reports model 1).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataloaders.fold_data import FoldData
from networks.losses import deep_supervision_loss
from networks.segmentation_net import SegmentationNet
from utils.onehot import class_index
from utils.precision import no_autocast
from utils.stages.segmentation import split_outputs, tile_panel
from utils.stages.semi_supervised import SemiSupervisedStage
from utils.training.engine import FiniteCheck


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cps")
    group.add_argument("--cps-weight", type=float, default=0.1,
                       help="cps: weight of the cross pseudo supervision reached at the end of the run "
                            "(default: 0.1)")


def xavier_initialised(net: SegmentationNet) -> SegmentationNet:
    """``net`` with every convolution weight redrawn from Xavier normal (biases and norms kept)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight)
    return net


def cross_pseudo_losses(logits_1: torch.Tensor, logits_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CE(logits_1, argmax logits_2), CE(logits_2, argmax logits_1))``; the targets are
    detached, so no gradient reaches a network through its own pseudo-label."""
    with no_autocast(logits_1.device):
        logits_1, logits_2 = logits_1.float(), logits_2.float()
        target_1, target_2 = class_index(logits_1.detach()), class_index(logits_2.detach())
        return F.cross_entropy(logits_1, target_2), F.cross_entropy(logits_2, target_1)


class CPSStage(SemiSupervisedStage):
    """Two segmenters supervising each other on the unlabelled image."""

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.net2 = xavier_initialised(self.segmenter()).to(device)
        self.optimizer2, self.scheduler2 = self.make_optimizer(self.net2.parameters(), args)
        self.weight = args.cps_weight

    def state(self) -> dict:
        return {**super().state(), "net2": self.net2, "optimizer2": self.optimizer2, "scheduler2": self.scheduler2}

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        self.scheduler2.step()

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], dict]:
        x_l, y_l, u = self.training_inputs(batch, "x_l", "y_l", "u_a")
        groups = {"x_l": x_l, "u": u}
        with self.autocast():
            out1 = split_outputs(self.net(torch.cat([x_l, u])), groups)
            out2 = split_outputs(self.net2(torch.cat([x_l, u])), groups)
        cps1, cps2 = cross_pseudo_losses(out1["u"]["out"], out2["u"]["out"])
        weight = self.weight * self.ramp()
        terms = {"seg1": deep_supervision_loss(out1["x_l"], y_l), "seg2": deep_supervision_loss(out2["x_l"], y_l),
                 "cps1": cps1, "cps2": cps2}
        terms["total"] = terms["seg1"] + terms["seg2"] + weight * (cps1 + cps2)
        check(terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer2.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.step(self.optimizer2)
        self.scaler.update()
        self.step += 1
        logged = {name: value.item() for name, value in terms.items()}
        logged["w_cps"] = weight
        return logged, {"u": u, "out1": out1["u"]["out"], "out2": out2["u"]["out"]}

    def panel(self, last: dict) -> tuple[str, torch.Tensor]:
        """u and the two networks' predictions on it (each is the other's pseudo-label)."""
        return tile_panel("train/panel", {"u": last["u"][0, 0],
                                          "net1_u": class_index(last["out1"][:1])[0].float(),
                                          "net2_u": class_index(last["out2"][:1])[0].float()})

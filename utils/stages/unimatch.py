"""UniMatch (UniMatch repository, ``more-scenarios/medical/unimatch.py``), ported to the shared segmenter.

One network, no EMA. Per step: the labelled image, the unlabelled image ``u`` (its
weak view is the image itself), two strong views of it, and a second unlabelled
image as CutMix partner. Strong view: brightness/contrast jitter 0.5 with p 0.8,
Gaussian blur sigma U(0.1, 2) with p 0.5, then with p 0.5 a CutMix box (area
U(0.02, 0.4) of the image, aspect ratio U(0.3, 1/0.3)) filled with the partner's
strong view. Pseudo-label and confidence come from the weak view (no gradient);
inside a CutMix box they are the partner's (the partner predicted in eval mode).
Feature perturbation: ``Dropout2d(0.5)`` on every encoder feature map, decoded beside
the clean ones. Unlabelled losses: Dice on the pixels with confidence >= 0.95 for
the two strong views and the perturbed weak view. Total
``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``.

Port notes: ``L_x`` is ``L_seg`` (the supervised loss of every method here); the
weak view is the image as ``--augment`` left it (the original's weak view is a random
rotation and flip; here no method augments by default); the Dice is the
project's soft Dice restricted to the confident pixels; the model is selected on
val only (the original selects on val + test together).
"""
from __future__ import annotations

import argparse

import torch

from dataloaders.fold_data import FoldData
from networks.losses import deep_supervision_loss, region_dice_loss
from utils.onehot import class_index, one_hot
from utils.stages.augmentations import box_mask, channel_dropout, cutmix_box, strong_view
from utils.stages.segmentation import scaled_step, split_outputs, tile_panel
from utils.stages.semi_supervised import SemiSupervisedStage
from utils.training.engine import FiniteCheck

LOSS_WEIGHTS = {"s1": 0.25, "s2": 0.25, "fp": 0.5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("unimatch")
    group.add_argument("--unimatch-threshold", type=float, default=0.95,
                       help="unimatch: confidence a pseudo-labelled pixel needs to count (default: 0.95)")
    group.add_argument("--unimatch-dropout", type=float, default=0.5,
                       help="unimatch: channel dropout of the feature perturbation (default: 0.5)")


def confidence_and_label(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max softmax [B, 1, H, W], argmax [B, 1, H, W])`` of detached logits."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    label = class_index(probs, keepdim=True)
    return probs.gather(1, label), label


def cutmix_targets(label: torch.Tensor, confidence: torch.Tensor, partner_label: torch.Tensor,
                   partner_confidence: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-label and confidence of a CutMix image: the partner's inside ``box [B, 1, H, W]``
    (1 = pasted), the image's own elsewhere."""
    inside = box.bool()
    return torch.where(inside, partner_label, label), torch.where(inside, partner_confidence, confidence)


def unimatch_total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2`` from ``terms`` with keys ``x``, ``s1``, ``s2``, ``fp``."""
    return (terms["x"] + sum(LOSS_WEIGHTS[name] * terms[name] for name in LOSS_WEIGHTS)) / 2.0


class UniMatchStage(SemiSupervisedStage):
    """UniMatch: weak-to-strong consistency with two strong views and a feature perturbation."""

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.threshold, self.dropout = args.unimatch_threshold, args.unimatch_dropout

    def strong_views(self, u: torch.Tensor, partner: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Two strong views of ``u``, each with its CutMix box (``[B, 1, H, W]``, 1 = partner)."""
        height, width = u.shape[-2:]
        views, boxes = [], []
        for _ in range(2):
            own = torch.cat([strong_view(u[i:i + 1], self.method_rng) for i in range(u.shape[0])])
            pasted = torch.cat([strong_view(partner[i:i + 1], self.method_rng) for i in range(u.shape[0])])
            box = torch.cat([box_mask(height, width, cutmix_box(height, width, self.method_rng), 1, u.device)
                             for _ in range(u.shape[0])])
            views.append(torch.where(box.bool(), pasted, own))
            boxes.append(box)
        return views, boxes

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], dict]:
        x_l, y_l, u, partner = self.training_inputs(batch, "x_l", "y_l", "u_a", "u_b")
        views, boxes = self.strong_views(u, partner)
        self.net.eval()
        with torch.no_grad(), self.autocast():
            partner_conf, partner_label = confidence_and_label(self.net(partner)["out"])
        self.net.train()
        groups = {"x_l": x_l, "u": u}
        size = tuple(x_l.shape[-2:])
        with self.autocast():
            features = self.net.encode_image(torch.cat([x_l, u]))
            out = split_outputs(self.net.decode(features, size), groups)
            unlabelled = [f[x_l.shape[0]:] for f in features]
            perturbed = self.net.decode(tuple(channel_dropout(f, self.method_rng, self.dropout) for f in unlabelled),
                                        size)["out"]
            strong = self.net(torch.cat(views))["out"].split(u.shape[0])
        conf, label = confidence_and_label(out["u"]["out"])
        terms = {"x": deep_supervision_loss(out["x_l"], y_l)}
        for name, logits, box in (("s1", strong[0], boxes[0]), ("s2", strong[1], boxes[1])):
            target, target_conf = cutmix_targets(label, conf, partner_label, partner_conf, box)
            terms[name] = region_dice_loss(logits, one_hot(target), (target_conf >= self.threshold).float())
        terms["fp"] = region_dice_loss(perturbed, one_hot(label), (conf >= self.threshold).float())
        terms["total"] = unimatch_total(terms)
        check(terms)
        scaled_step(terms["total"], self.optimizer, self.scaler)
        self.step += 1
        logged = {name: value.item() for name, value in terms.items()}
        logged["confident_fraction"] = float((conf >= self.threshold).float().mean())
        return logged, {"u": u, "strong": views[0], "label": label, "confident": (conf >= self.threshold).float()}

    def panel(self, last: dict) -> tuple[str, torch.Tensor]:
        """u, its first strong view (CutMix included), the pseudo-label and the confident pixels."""
        return tile_panel("train/panel", {"u": last["u"][0, 0], "strong_1": last["strong"][0, 0],
                                          "pseudo_label": last["label"][0, 0].float(),
                                          "confident": last["confident"][0, 0]})

"""The registration stage (docs/METHOD.md section 2): its flags, its training step, its stage, and
loading a trained registration network.

Training pairs are affinely pre-aligned intra-patient pairs; each is trained in both
directions with ``(1 - SSIM) + NCC + 0.1 smooth``. Validation warps the pre-aligned
moving mask of every ordered val pair and selects on IoU + Dice + recall.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from dataloaders.fold_data import FoldData
from dataloaders.registration_data import RegistrationPairSet, RegistrationTrainSet
from networks.losses import ncc_loss, smoothness_loss, ssim_loss
from networks.registration_net import RegistrationNet
from networks.spatial_transformer import warp, warp_label
from utils.cli import OneLineErrorParser, add_common_args, add_training_args
from utils.evaluation.loops import evaluate_registration
from utils.evaluation.metrics import summarise
from utils.errors import InputError
from utils.training.checkpoints import load_checkpoint, load_network
from utils.training.engine import FiniteCheck, Stage, Validation
from utils.evaluation.visualise import deformation_grid, image_grid_panel, overlay_mask

VAL_KEYS = ("iou", "dice", "recall")
FIELD_KEYS = ("folding_fraction", "jacobian_mean", "jacobian_min")  # plausibility of the fields


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``5fold_Train_Reg.py``."""
    parser = OneLineErrorParser(
        description="Train the VoxelMorph-style registration network with SE + position attention "
                    "on intra-patient image pairs (affinely pre-aligned), for one fold or all five. "
                    "Defaults reproduce the paper.")
    add_common_args(parser, exp_default="REG", several_seeds=True)
    add_training_args(parser, epochs=200, iters=200, lr=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-6, help="Adam weight decay (default: 1e-6)")
    parser.add_argument("--w-ssim", type=float, default=1.0, help="weight of the 1 - SSIM term (default: 1)")
    parser.add_argument("--w-ncc", type=float, default=1.0, help="weight of the local NCC term (default: 1)")
    parser.add_argument("--w-smooth", type=float, default=0.1,
                        help="weight of the flow smoothness term (default: 0.1)")
    parser.add_argument("--diffeomorphic", action="store_true",
                        help="the network outputs a stationary velocity field, integrated by scaling and "
                             "squaring into a (nearly) invertible displacement that does not fold (the "
                             "paper: a direct displacement). Recorded in the checkpoint: SS-MGS and the test "
                             "script integrate the same way")
    parser.add_argument("--integration-steps", type=int, default=7,
                        help="scaling-and-squaring steps of --diffeomorphic (default: 7, as VoxelMorph)")
    return parser


@dataclass
class RegistrationWeights:
    ssim: float = 1.0
    ncc: float = 1.0
    smooth: float = 0.1


def registration_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, a: torch.Tensor,
                      b: torch.Tensor, a_on_b: torch.Tensor, b_on_a: torch.Tensor,
                      weights: RegistrationWeights, check: FiniteCheck = lambda terms: None,
                      ) -> dict[str, float]:
    """Train on the pair both ways (``a_on_b -> b`` and ``b_on_a -> a``); returns the
    loss terms summed over the two directions (``ssim``, ``ncc``, ``smooth``, ``total``).

    One backward per direction: the same gradients as one backward of the sum,
    with a lower peak memory. ``check(terms)`` runs before each backward.
    """
    optimizer.zero_grad(set_to_none=True)
    terms: dict[str, float] = {}
    for moving, fixed in ((a_on_b, b), (b_on_a, a)):
        flow = net(moving, fixed)
        warped = warp(moving, flow)
        part = {"ssim": ssim_loss(warped, fixed), "ncc": ncc_loss(warped, fixed),
                "smooth": smoothness_loss(flow)}
        part["total"] = weights.ssim * part["ssim"] + weights.ncc * part["ncc"] + weights.smooth * part["smooth"]
        check(part)
        part["total"].backward()
        for name, value in part.items():
            terms[name] = terms.get(name, 0.0) + value.item()
    optimizer.step()
    return terms


def load_registration_network(path: str | Path, device: torch.device) -> tuple[RegistrationNet, dict]:
    """The registration network of a checkpoint, rebuilt with the settings it was trained with
    (``"network"``: e.g. the velocity integration of ``--diffeomorphic``; a checkpoint
    without them is the paper's direct-displacement network)."""
    path = Path(path)
    state = load_checkpoint(path, map_location=device) if path.is_file() else None
    config = (state.get("network") or {}) if isinstance(state, dict) else {}
    try:
        net = RegistrationNet(**config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: unknown registration network settings {config} ({exc}); "
                         f"was it written by a newer version?") from None
    return load_network(path, net, device, state)


class RegistrationStage(Stage):
    """The registration network, Adam, the fold's training pairs and its val pairs."""

    kind = "registration"
    best_scalar = "val/best_score"
    score_label = "score"

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        self.device, self.fold, self.progress = device, k, not args.no_progress
        self.train_set = RegistrationTrainSet(data.folder, data.fold.train, data.prealign,
                                              args.iters * args.batch_size, args.seed + k).preload()
        self.val_pairs = RegistrationPairSet(data.folder, data.fold.val, data.prealign).preload()
        self.net = RegistrationNet(integration_steps=args.integration_steps if args.diffeomorphic else 0).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.weights = RegistrationWeights(ssim=args.w_ssim, ncc=args.w_ncc, smooth=args.w_smooth)

    def state(self) -> dict:
        return {"model": self.net, "optimizer": self.optimizer}

    def network_config(self) -> dict:
        return self.net.config()

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def start(self, first_epoch: int, writer: SummaryWriter) -> None:
        """A fresh run first scores the affine pre-alignment alone (``val_affine_only/*`` at 0)."""
        if first_epoch > 0:
            return
        rows = evaluate_registration(None, self.val_pairs, self.device, self.fold, self.progress)
        affine = summarise(rows, [f"affine_{key}" for key in VAL_KEYS])
        for key in VAL_KEYS:
            writer.add_scalar(f"val_affine_only/{key}", affine[f"affine_{key}_mean"], 0)
        print(f"fold {self.fold}: affine alone on val: IoU {affine['affine_iou_mean']:.4f} "
              f"Dice {affine['affine_dice_mean']:.4f} recall {affine['affine_recall_mean']:.4f} "
              f"({affine['n']} pairs)")

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], None]:
        device = self.device
        terms = registration_step(self.net, self.optimizer, batch["a"].to(device), batch["b"].to(device),
                                  batch["a_on_b"].to(device), batch["b_on_a"].to(device), self.weights, check)
        return terms, None

    def validate(self, epoch: int) -> Validation:
        rows = evaluate_registration(self.net, self.val_pairs, self.device, self.fold, self.progress)
        summary = summarise(rows, list(VAL_KEYS + FIELD_KEYS))
        score = sum(summary[f"{key}_mean"] for key in VAL_KEYS)
        scalars = {key: summary[f"{key}_mean"] for key in VAL_KEYS + FIELD_KEYS}
        scalars["score_iou+dice+recall"] = score
        message = (f"val IoU {summary['iou_mean']:.4f} Dice {summary['dice_mean']:.4f} "
                   f"recall {summary['recall_mean']:.4f}")
        return Validation(score=score, scalars=scalars, message=message)

    @torch.no_grad()
    def panel(self, last: None) -> tuple[str, torch.Tensor] | None:
        """Moving, fixed, warped, warped mask over fixed, deformation grid of the first val pair."""
        if len(self.val_pairs) == 0:
            return None
        item = self.val_pairs[0]
        self.net.eval()
        moving = item["moving_aligned"][None].to(self.device)
        fixed = item["fixed"][None].to(self.device)
        flow = self.net(moving, fixed)
        warped = warp(moving, flow)[0, 0].cpu()
        warped_mask = warp_label(item["moving_label_aligned"][None].to(self.device), flow)[0, 1].cpu()
        self.net.train()
        panel = image_grid_panel([moving[0, 0].cpu(), fixed[0, 0].cpu(), warped,
                                  overlay_mask(fixed[0, 0].cpu(), warped_mask > 0.5),
                                  deformation_grid(flow[0].cpu())])
        return "val/panel moving|fixed|warped|warped-mask-on-fixed|grid", panel

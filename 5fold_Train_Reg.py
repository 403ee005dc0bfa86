"""Train the intra-patient registration network (METHOD.md section 2), per fold.

    python 5fold_Train_Reg.py --data-dir Datasets/Demo --fold 1 --exp REG

Outputs in RUNS/EXP/fold<K>/: best_*.pth (best N by val IoU + Dice + recall),
best.json (which one is best), last.pth (for --resume), TensorBoard events.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from dataloaders.dataset import DatasetFolder, parse_folds
from dataloaders.fold_data import open_fold
from dataloaders.registration_data import RegistrationPairSet, RegistrationTrainSet
from networks.registration_net import RegistrationNet
from networks.spatial_transformer import warp
from utils.cli import add_common_args, add_training_args, check_training_args
from utils.errors import run_cli
from utils.evaluation import evaluate_registration
from utils.metrics import summarise
from utils.steps import RegistrationWeights, registration_step
from utils.training import (CheckpointManager, make_writer, prepare_run_dir,
                            run_dir_for, seed_everything, seed_worker, train_epoch,
                            training_device)
from utils.visualise import deformation_grid, image_grid_panel, overlay_mask

VAL_KEYS = ("iou", "dice", "recall")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the VoxelMorph-style registration network with SE + position attention "
                    "on intra-patient image pairs (affinely pre-aligned), for one fold or all five. "
                    "Defaults reproduce the paper.")
    add_common_args(parser, exp_default="REG")
    add_training_args(parser, epochs=200, iters=200, lr=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-6, help="Adam weight decay (default: 1e-6)")
    parser.add_argument("--w-ssim", type=float, default=1.0, help="weight of the 1 - SSIM term (default: 1)")
    parser.add_argument("--w-ncc", type=float, default=1.0, help="weight of the local NCC term (default: 1)")
    parser.add_argument("--w-smooth", type=float, default=0.1,
                        help="weight of the flow smoothness term (default: 0.1)")
    return parser


def log_validation_panel(writer, net, pairs: RegistrationPairSet, device, epoch: int) -> None:
    """Moving, fixed, warped, warped mask over fixed, deformation grid of the first val pair."""
    if len(pairs) == 0:
        return
    item = pairs[0]
    net.eval()
    with torch.no_grad():
        moving = item["moving_aligned"][None].to(device)
        fixed = item["fixed"][None].to(device)
        flow = net(moving, fixed)
        warped = warp(moving, flow)[0, 0].cpu()
        warped_mask = warp(item["moving_label_aligned"][None].to(device), flow, mode="nearest")[0, 1].cpu()
    net.train()
    panel = image_grid_panel([moving[0, 0].cpu(), fixed[0, 0].cpu(), warped,
                              overlay_mask(fixed[0, 0].cpu(), warped_mask > 0.5),
                              deformation_grid(flow[0].cpu())])
    writer.add_image("val/panel moving|fixed|warped|warped-mask-on-fixed|grid", panel, epoch)


def train_fold(args: argparse.Namespace, k: int, device: torch.device,
               folder: DatasetFolder | None) -> dict:
    progress = not args.no_progress
    data = open_fold(args.data_dir, k, resize=args.resize, folder=folder, progress=progress)
    run_dir = prepare_run_dir(run_dir_for(args.runs_dir, args.exp, k), args.resume, args.overwrite)

    seed_everything(args.seed + k)
    train_set = RegistrationTrainSet(data.folder, data.fold.train, data.prealign, args.iters * args.batch_size,
                                     args.seed + k).preload()
    val_pairs = RegistrationPairSet(data.folder, data.fold.val, data.prealign).preload()
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        worker_init_fn=seed_worker, persistent_workers=args.workers > 0, drop_last=True)

    net = RegistrationNet().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    checkpoints = CheckpointManager(run_dir, keep=args.keep_best)
    writer = make_writer(run_dir)
    stateful = {"model": net, "optimizer": optimizer}
    start_epoch, best_score = (checkpoints.resume(stateful, device, f"fold {k}") if args.resume
                               else (0, -np.inf))

    if start_epoch == 0:
        affine = summarise(evaluate_registration(None, val_pairs, device, k, progress),
                           ["affine_iou", "affine_dice", "affine_recall"])
        for key in VAL_KEYS:
            writer.add_scalar(f"val_affine_only/{key}", affine[f"affine_{key}_mean"], 0)
        print(f"fold {k}: affine alone on val: IoU {affine['affine_iou_mean']:.4f} "
              f"Dice {affine['affine_dice_mean']:.4f} recall {affine['affine_recall_mean']:.4f} "
              f"({affine['n']} pairs)")

    weights = RegistrationWeights(ssim=args.w_ssim, ncc=args.w_ncc, smooth=args.w_smooth)
    net.train()
    step = start_epoch * args.iters
    summary = {}
    for epoch in range(start_epoch, args.epochs):
        train_set.set_epoch(epoch)
        started = time.time()

        def step_fn(batch: dict, check) -> tuple[dict, None]:
            return registration_step(net, optimizer, batch["a"].to(device), batch["b"].to(device),
                                     batch["a_on_b"].to(device), batch["b_on_a"].to(device), weights, check), None

        step, _ = train_epoch(loader, step_fn, writer, step, epoch, f"fold {k} epoch {epoch + 1}/{args.epochs}",
                              f"last good checkpoint: {run_dir / 'last.pth'}", progress)

        rows = evaluate_registration(net, val_pairs, device, k, progress)
        summary = summarise(rows, list(VAL_KEYS) + ["folding_fraction"])
        score = sum(summary[f"{key}_mean"] for key in VAL_KEYS)
        for key in VAL_KEYS + ("folding_fraction",):
            writer.add_scalar(f"val/{key}", summary[f"{key}_mean"], epoch + 1)
        writer.add_scalar("val/score_iou+dice+recall", score, epoch + 1)
        best_score = checkpoints.save_epoch(stateful, epoch, score, args=vars(args), fold=k, kind="registration")
        writer.add_scalar("val/best_score", best_score, epoch + 1)
        if args.panel_every > 0 and ((epoch + 1) % args.panel_every == 0 or epoch + 1 == args.epochs):
            log_validation_panel(writer, net, val_pairs, device, epoch + 1)
        writer.flush()
        print(f"fold {k} epoch {epoch + 1}: val IoU {summary['iou_mean']:.4f} Dice {summary['dice_mean']:.4f} "
              f"recall {summary['recall_mean']:.4f} (best score {best_score:.4f}) "
              f"[{time.time() - started:.0f}s]")
    writer.close()
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_training_args(args)
    folds = parse_folds(args.fold)
    device = training_device(args.device)
    folder = DatasetFolder(args.data_dir, resize=args.resize)
    for k in folds:
        train_fold(args, k, device, folder)


if __name__ == "__main__":
    run_cli(main)

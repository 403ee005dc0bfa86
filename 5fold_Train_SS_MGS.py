"""Train the semi-supervised segmenter with RSGM + RNSF (METHOD.md sections 3-6), per fold.

    python 5fold_Train_SS_MGS.py --data-dir Datasets/Demo --fold 1 --exp SEG --reg-exp REG

`--no-rsgm --no-rnsf` trains the supervised-only baseline on the Atlas images
with the same network and schedule. Outputs in RUNS/EXP/fold<K>/ as for the
registration trainer (best_*.pth by val IoU, best.json, last.pth, events).
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
from dataloaders.segmentation_data import SegmentationEvalSet, SegmentationTrainSet
from networks.loading import freeze, load_network
from networks.registration_net import RegistrationNet
from networks.rsgm import RegistrationOutputCache
from networks.segmentation_net import SegmentationNet
from utils.cli import add_common_args, add_training_args, check_training_args
from utils.errors import run_cli
from utils.evaluation import evaluate_segmentation
from utils.metrics import summarise
from utils.steps import SegmentationConfig, segmentation_step
from utils.training import (CheckpointManager, find_best_checkpoint, make_generator, make_writer,
                            prepare_run_dir, ramp_up, run_dir_for,
                            seed_everything, seed_worker, train_epoch, training_device, use_amp)
from utils.visualise import image_grid_panel

VAL_KEYS = ("iou", "dice", "recall", "accuracy", "hd95")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the UNet segmenter with registration sampling generation (RSGM) and "
                    "reliable-negative contrastive feature supervision (RNSF), for one fold or all "
                    "five. Needs the fold's registration checkpoint (5fold_Train_Reg.py). Defaults "
                    "reproduce the paper.")
    add_common_args(parser, exp_default="SEG")
    add_training_args(parser, epochs=50, iters=200, lr=1e-3)
    parser.add_argument("--reg-exp", default="REG",
                        help="registration experiment whose best checkpoint of the same fold is loaded "
                             "from RUNS/REG_EXP/fold<K>/ (default: REG)")
    parser.add_argument("--reg-checkpoint", default=None,
                        help="explicit registration checkpoint file (overrides --reg-exp; with --fold all "
                             "the same file serves every fold)")
    parser.add_argument("--weight-decay", type=float, default=1e-6, help="AdamW weight decay (default: 1e-6)")
    parser.add_argument("--t-max", type=int, default=100,
                        help="cosine schedule period in epochs, stepped per epoch (default: 100)")
    parser.add_argument("--eta-min", type=float, default=1e-4, help="cosine schedule floor lr (default: 1e-4)")
    parser.add_argument("--rs-weight", type=float, default=0.5,
                        help="L_rs = RS_WEIGHT * (DiceCE(g1) + DiceCE(g2)) (default: 0.5)")
    parser.add_argument("--rnsf-weight", type=float, default=0.1,
                        help="weight of L_rnsf, times the ramp-up (default: 0.1)")
    parser.add_argument("--ramp-length", type=int, default=50,
                        help="epochs of the exp(-5(1-e/L)^2) ramp-up of the RNSF weight (default: 50)")
    parser.add_argument("--temperature", type=float, default=0.1, help="RNSF temperature (default: 0.1)")
    parser.add_argument("--negatives", type=int, default=250, help="RNSF negatives per anchor K (default: 250)")
    parser.add_argument("--negative-mode", default="reliable", choices=("reliable", "random", "mean"),
                        help="RNSF negative choice: the K most confident of the other class, K random "
                             "ones, or their mean (default: reliable)")
    parser.add_argument("--coefficients", default="uniform", choices=("uniform", "beta"),
                        help="RSGM alpha, beta ~ Uniform(0,1) or Beta(0.3,0.3) as in BRBS (default: uniform)")
    parser.add_argument("--no-rsgm", action="store_true",
                        help="drop the L_rs term (generated images are still made for RNSF when it is on)")
    parser.add_argument("--no-rnsf", action="store_true", help="drop the L_rnsf term")
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                        help="mixed precision: auto = on with CUDA only (default: auto)")
    return parser


def load_registration_net(args: argparse.Namespace, k: int, device: torch.device) -> RegistrationNet:
    """The fold's frozen registration net (eval mode, no gradients)."""
    path = args.reg_checkpoint or find_best_checkpoint(
        run_dir_for(args.runs_dir, args.reg_exp, k),
        hint=f"python 5fold_Train_Reg.py --data-dir {args.data_dir} --fold {k} --exp {args.reg_exp}")
    net, _ = load_network(path, RegistrationNet(), device)
    print(f"fold {k}: registration network from {path}")
    return freeze(net)


def log_panel(writer, last: dict, epoch: int) -> None:
    """x_l, g1, g2, y_g, u_neg and the predictions of the last training batch."""
    tiles = {}
    for name, image in last["images"].items():
        tiles[name] = image[0, 1] if name == "y_g" else image[0, 0]
        if name in last["outputs"]:
            tiles[f"pred_{name}"] = last["outputs"][name]["out"][0].argmax(0).float()
    panel = image_grid_panel([t.detach().float().cpu().clamp(0, 1) for t in tiles.values()])
    writer.add_image("train/panel " + "|".join(tiles), panel, epoch)


def train_fold(args: argparse.Namespace, k: int, device: torch.device, folder: DatasetFolder | None) -> dict:
    progress = not args.no_progress
    semi = not (args.no_rsgm and args.no_rnsf)
    amp = use_amp(args.amp, device)
    data = open_fold(args.data_dir, k, resize=args.resize, folder=folder, progress=progress)
    run_dir = prepare_run_dir(run_dir_for(args.runs_dir, args.exp, k), args.resume, args.overwrite)

    seed_everything(args.seed + k)
    train_set = SegmentationTrainSet(data.folder, data.fold.train, data.prealign,
                                     args.iters * args.batch_size, args.seed + k).preload()
    val_set = SegmentationEvalSet(data.folder, data.fold.val).preload()
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        worker_init_fn=seed_worker, persistent_workers=args.workers > 0, drop_last=True)
    cache = None
    if semi:
        reg_net = load_registration_net(args, k, device)
        cache = RegistrationOutputCache(reg_net, data.folder, data.fold.train, data.prealign, device,
                                        progress=progress)
        del reg_net

    config = SegmentationConfig(use_rsgm=not args.no_rsgm, use_rnsf=not args.no_rnsf, rs_weight=args.rs_weight,
                                rnsf_weight=args.rnsf_weight, temperature=args.temperature,
                                negatives=args.negatives, negative_mode=args.negative_mode,
                                coefficients=args.coefficients)
    net = SegmentationNet().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.t_max, eta_min=args.eta_min)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    coefficient_rng = make_generator(args.seed + k)
    checkpoints = CheckpointManager(run_dir, keep=args.keep_best)
    writer = make_writer(run_dir)
    stateful = {"model": net, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
                "coefficient_rng": coefficient_rng}
    start_epoch, best_score = (checkpoints.resume(stateful, device, f"fold {k}") if args.resume
                               else (0, -np.inf))

    net.train()
    step = start_epoch * args.iters
    summary = {}
    for epoch in range(start_epoch, args.epochs):
        train_set.set_epoch(epoch)
        ramp = ramp_up(epoch, args.ramp_length)
        started = time.time()

        def step_fn(batch: dict, check) -> tuple[dict, dict]:
            return segmentation_step(net, optimizer, scaler, batch, cache, config, ramp, coefficient_rng, device,
                                     amp, check)

        step, last = train_epoch(loader, step_fn, writer, step, epoch, f"fold {k} epoch {epoch + 1}/{args.epochs}",
                                 f"last good checkpoint: {run_dir / 'last.pth'}", progress)
        writer.add_scalar("train/rnsf_ramp_weight", args.rnsf_weight * ramp, epoch + 1)
        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], epoch + 1)
        if args.panel_every > 0 and ((epoch + 1) % args.panel_every == 0 or epoch + 1 == args.epochs):
            log_panel(writer, last, epoch + 1)
        scheduler.step()

        rows = evaluate_segmentation(net, val_set, device, k, amp=amp, progress=progress)
        summary = summarise(rows, list(VAL_KEYS))
        empties = sum(1 for r in rows if r["hd95_empty"])
        for key in VAL_KEYS:
            writer.add_scalar(f"val/{key}", summary[f"{key}_mean"], epoch + 1)
        writer.add_scalar("val/hd95_empty_cases", empties, epoch + 1)
        score = summary["iou_mean"]
        best_score = checkpoints.save_epoch(stateful, epoch, score, args=vars(args), fold=k, kind="segmentation")
        writer.add_scalar("val/best_iou", best_score, epoch + 1)
        writer.flush()
        print(f"fold {k} epoch {epoch + 1}: val IoU {summary['iou_mean']:.4f} Dice {summary['dice_mean']:.4f} "
              f"HD95 {summary['hd95_mean']:.2f} (empty-mask cases {empties}; best IoU {best_score:.4f}) "
              f"[{time.time() - started:.0f}s]")
    writer.close()
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_training_args(args, "temperature", "negatives", "t_max")
    folds = parse_folds(args.fold)
    device = training_device(args.device)
    use_amp(args.amp, device)
    folder = DatasetFolder(args.data_dir, resize=args.resize)
    for k in folds:
        train_fold(args, k, device, folder)


if __name__ == "__main__":
    run_cli(main)

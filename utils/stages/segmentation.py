"""What every segmentation method shares (docs/METHOD.md section 6): data, network, optimizer,
schedule, mixed precision, validation and checkpoint selection.

A method (SS-MGS, the supervised baseline, the semi-supervised baselines) derives
from :class:`SegmentationStage` and adds only its own networks, its training step,
its per-epoch scalars and its panel. Everything a method must keep fixed for a fair
comparison lives here: the backbone (:class:`networks.segmentation_net.SegmentationNet`),
the fold's Atlas images as the only labels, AdamW with a cosine schedule stepped
per epoch, validation on the val images and selection on their mean IoU.
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable

import torch

from dataloaders.fold_data import FoldData
from dataloaders.dataset import TARGETS
from dataloaders.segmentation_data import MaskTrainSet, SegmentationEvalSet, SegmentationTrainSet
from networks.segmentation_net import SegmentationNet
from utils.errors import InputError
from utils.evaluation.loops import evaluate_segmentation
from utils.evaluation.metrics import summarise
from utils.onehot import class_index
from utils.training.engine import Stage, Validation
from utils.training.runtime import use_amp
from utils.evaluation.visualise import image_grid_panel

VAL_KEYS = ("iou", "dice", "recall", "accuracy", "hd95")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Optimizer, schedule and precision flags shared by every segmentation method."""
    parser.add_argument("--weight-decay", type=float, default=1e-6, help="AdamW weight decay (default: 1e-6)")
    parser.add_argument("--t-max", type=int, default=100,
                        help="cosine schedule period in epochs, stepped per epoch (default: 100)")
    parser.add_argument("--eta-min", type=float, default=1e-4, help="cosine schedule floor lr (default: 1e-4)")
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                        help="mixed precision: auto = on with CUDA only (default: auto)")
    parser.add_argument("--target", default="gland", choices=TARGETS,
                        help="what to segment: gland (Label/ masks, Atlas images only, default) or eyelid "
                             "(Eyelid/ masks of every training image that has one; supervised only)")


def split_outputs(outputs: dict[str, torch.Tensor], groups: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Outputs of one batched forward pass over ``torch.cat(groups.values())`` -> one
    output dict per input group, in the groups' order."""
    sizes = [t.shape[0] for t in groups.values()]
    parts = {name: torch.split(value, sizes) for name, value in outputs.items()}
    return {group: {name: parts[name][i] for name in outputs} for i, group in enumerate(groups)}


def scaled_step(total: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Zero ``optimizer``'s gradients, back-propagate ``total`` (scaled under AMP) and step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()


def panel_tiles(images: dict[str, torch.Tensor], outputs: dict[str, dict]) -> dict[str, torch.Tensor]:
    """``[H, W]`` tiles of the first batch item: each image (a one-hot label shows its
    gland channel) followed by its predicted mask when the step segmented it."""
    tiles = {}
    for name, image in images.items():
        tiles[name] = image[0, 1] if image.shape[1] == 2 else image[0, 0]
        if name in outputs:
            tiles[f"pred_{name}"] = class_index(outputs[name]["out"][:1])[0].float()
    return tiles


def tile_panel(prefix: str, tiles: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """``(tag, [3, H, W] image)`` of ``tiles`` side by side, the tag naming them in order."""
    panel = image_grid_panel([t.detach().float().cpu().clamp(0, 1) for t in tiles.values()])
    return f"{prefix} " + "|".join(tiles), panel


class SegmentationStage(Stage):
    """The shared part of every segmentation method (see the module docstring).

    Construction order (it fixes what the seeded initialisation draws, and the memory
    layout): the data sets, then :meth:`build_before_network` (e.g. SS-MGS's frozen
    registration net), then the segmenter and its optimizer. ``self.net`` is the
    network that is validated, saved as ``"model"`` and used at test time.
    """

    kind = "segmentation"
    best_scalar = "val/best_iou"
    score_label = "IoU"
    pool_views = False  # whether training items carry the unlabelled-pool images (baselines)

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        self.device, self.fold, self.progress = device, k, not args.no_progress
        self.amp = use_amp(args.amp, device)
        self.target = args.target
        if self.target == "gland":
            self.train_set = SegmentationTrainSet(data.folder, data.fold.train, data.prealign,
                                                  args.iters * args.batch_size, args.seed + k,
                                                  pool_views=self.pool_views).preload()
        else:
            self.train_set = MaskTrainSet(data.folder, data.fold.train, self.target, args.iters * args.batch_size,
                                          args.seed + k).preload()
        self.val_set = SegmentationEvalSet(data.folder, data.fold.val, self.target).preload()
        if len(self.val_set) == 0:
            raise InputError(f"fold {k}: no val image has a {self.target} mask, so nothing can be validated; "
                             f"add {self.target.capitalize()}/ masks for the val patients")
        self.build_before_network(args, k, data)
        self.net = SegmentationNet().to(device)
        self.optimizer, self.scheduler = self.make_optimizer(self.net.parameters(), args)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)

    @staticmethod
    def make_optimizer(parameters: Iterable[torch.nn.Parameter], args: argparse.Namespace
                       ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW and its cosine schedule (the same for every network a method trains)."""
        optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.t_max, eta_min=args.eta_min)
        return optimizer, scheduler

    def build_before_network(self, args: argparse.Namespace, k: int, data: FoldData) -> None:
        """What a method needs before the segmenter exists (nothing by default)."""

    def state(self) -> dict[str, Any]:
        return {"model": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler}

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def autocast(self) -> torch.autocast:
        """Mixed precision for the forward passes (on CUDA only, see ``--amp``)."""
        return torch.autocast(device_type=self.device.type, enabled=self.amp)

    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()

    def validate(self, epoch: int) -> Validation:
        rows = evaluate_segmentation(self.net, self.val_set, self.device, self.fold, amp=self.amp,
                                     progress=self.progress)
        summary = summarise(rows, list(VAL_KEYS))
        empties = sum(1 for r in rows if r["hd95_empty"])
        scalars = {key: summary[f"{key}_mean"] for key in VAL_KEYS}
        scalars["hd95_empty_cases"] = empties
        message = (f"val IoU {summary['iou_mean']:.4f} Dice {summary['dice_mean']:.4f} "
                   f"HD95 {summary['hd95_mean']:.2f}")
        return Validation(score=summary["iou_mean"], scalars=scalars, message=message,
                          note=f"empty-mask cases {empties}")

"""What every segmentation method shares (docs/METHOD.md section 6): data, network, optimizer,
schedule, mixed precision, validation and checkpoint selection.

A method (SS-MGS, the supervised baseline, the semi-supervised baselines) derives
from :class:`SegmentationStage` and adds only its own networks, its training step,
its per-epoch scalars and its panel. Everything a method must keep fixed for a fair
comparison lives here: the backbone (:class:`networks.segmentation_net.SegmentationNet`),
the fold's Atlas images as the only labels, AdamW with a cosine schedule stepped
per epoch, validation on the val images and selection on their mean IoU, and the two
settings a comparison must share: ``--augment`` (geometric augmentation of every
training image, from the checkpointed ``augment_rng``) and ``--dropout`` (the
segmenter's encoder dropout). A method gets both by building its networks with
:meth:`SegmentationStage.segmenter` and taking its inputs from
:meth:`SegmentationStage.training_inputs` (or :meth:`SegmentationStage.augment` where it
makes images itself, as SS-MGS does).
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable, Sequence

import torch

from dataloaders.fold_data import FoldData
from dataloaders.dataset import TARGETS
from dataloaders.segmentation_data import MaskTrainSet, SegmentationEvalSet, SegmentationTrainSet
from networks.segmentation_net import SegmentationNet
from utils.errors import InputError
from utils.evaluation.loops import evaluate_segmentation
from utils.evaluation.metrics import summarise
from utils.onehot import class_index
from utils.stages.augmentations import MAX_ROTATION_DEGREES, flip_rotate, no_augmentation
from utils.training.engine import Stage, Validation
from utils.training.runtime import make_generator, use_amp
from utils.evaluation.visualise import image_grid_panel

VAL_KEYS = ("iou", "dice", "recall", "accuracy", "hd95")
AUGMENTATIONS = ("none", "flip-rotate")
#: The label that travels with each labelled image of a training batch (:meth:`SegmentationStage.training_inputs`).
LABEL_OF = {"x_l": "y_l", "x_l2": "y_l2"}
#: Added to ``seed + fold`` for ``augment_rng``, so that its stream is not that of the
#: methods' own generators (seeded ``seed + fold``).
AUGMENT_SEED_OFFSET = 104_729


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Optimizer, schedule and precision flags shared by every segmentation method."""
    parser.add_argument("--weight-decay", type=float, default=1e-6, help="AdamW weight decay (default: 1e-6)")
    parser.add_argument("--t-max", type=int, default=100,
                        help="cosine schedule period in epochs, stepped per epoch (default: 100)")
    parser.add_argument("--eta-min", type=float, default=1e-4, help="cosine schedule floor lr (default: 1e-4)")
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                        help="mixed precision: auto = on with CUDA only (default: auto)")
    parser.add_argument("--augment", default="none", choices=AUGMENTATIONS,
                        help="geometric augmentation of every training image, the same for every method: "
                             "none (the paper) or flip-rotate: per image a left-right flip with p 0.5 and a "
                             f"rotation by up to {MAX_ROTATION_DEGREES:g} degrees with p 0.5, a label with its "
                             "image, before a method's own views (no 90-degree turns: a lid never stands "
                             "upright). Compare methods at one setting (default: none)")
    parser.add_argument("--dropout", type=float, default=0.0, metavar="P",
                        help="dropout in the segmenter's encoder, the same for every method: P in the deepest "
                             "block, SSL4MIS's profile 0.05-0.1-0.2-0.3-0.5 scaled to it in the others (0.5 is "
                             "SSL4MIS's); teachers predict with it (UA-MT's passes become stochastic). Compare "
                             "methods at one setting (default: 0)")
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
        self.augmentation, self.dropout = args.augment, args.dropout
        self.augment_rng = make_generator(args.seed + k + AUGMENT_SEED_OFFSET)
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
        self.net = self.segmenter().to(device)
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

    def segmenter(self) -> SegmentationNet:
        """A new segmenter with this run's ``--dropout``, on the CPU (a seeded run initialises
        it alike on any device); every network a method trains or follows is one."""
        return SegmentationNet(dropout=self.dropout)

    def augment(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor] = ()
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``--augment`` on one group of tensors: one random transform per batch item, shared by
        every image ``[B, 1, H, W]`` and one-hot label ``[B, C, H, W]`` of the group (an image and
        its label; SS-MGS's g1, g2 and y_g), drawn from ``augment_rng``. With ``--augment none``
        the tensors come back as they are and nothing is drawn."""
        if self.augmentation == "none":
            return no_augmentation(images, labels)
        return flip_rotate(images, labels, self.augment_rng)

    def training_inputs(self, batch: dict, *names: str) -> list[torch.Tensor]:
        """``batch[name]`` for each of ``names``, on the device and augmented (:meth:`augment`):
        every image with a transform of its own, a labelled image (``x_l``, ``x_l2``) with its
        label (``y_l``, ``y_l2``, named with it). A method takes its inputs from here and makes
        its own views (noise, strong views, mixes) of what this returns."""
        tensors = {name: batch[name].to(self.device) for name in names}
        labels = {LABEL_OF[name] for name in names if name in LABEL_OF}
        orphans = [name for name in names if name in LABEL_OF.values() and name not in labels]
        if orphans:
            raise ValueError(f"training_inputs: {orphans} must be named with their images")
        for name in names:
            if name in labels:
                continue
            label = [LABEL_OF[name]] if LABEL_OF.get(name) in tensors else []
            (tensors[name],), augmented = self.augment([tensors[name]], [tensors[n] for n in label])
            tensors.update(zip(label, augmented))
        return [tensors[name] for name in names]

    def state(self) -> dict[str, Any]:
        """The segmenter, its optimizer, schedule and scaler; ``augment_rng`` when augmenting."""
        state = {"model": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler,
                 "scaler": self.scaler}
        if self.augmentation != "none":
            state["augment_rng"] = self.augment_rng
        return state

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

"""Evaluation loops shared by the trainers' validation and the test script.

Registration: for every ordered pair of labelled images of a patient, the
moving mask (already carried by the affine pre-alignment) is warped with the
predicted deformable flow and compared with the fixed mask.
Segmentation: argmax masks of every image against its label.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from networks.spatial_transformer import warp, warp_label
from utils.evaluation.instance_metrics import instance_metrics
from utils.evaluation.metrics import evaluate_mask, jacobian_statistics, masks_from_scores, warped_mask_metrics


def _loader(dataset: Dataset, workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers)


@torch.no_grad()
def evaluate_registration(net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                          pairs: Dataset, device: torch.device, fold: int | None = None,
                          progress: bool = True, keep_outputs: Callable[[dict, dict], None] | None = None,
                          ) -> list[dict]:
    """Warped-mask metrics per ordered pair; ``net = None`` scores the affine alone.

    Each row: ``moving, fixed, patient, fold, affine_iou, affine_dice, affine_recall``
    and, with a net, ``iou, dice, recall`` and :func:`utils.evaluation.metrics.jacobian_statistics` of the flow.
    ``keep_outputs(batch, outputs)`` (optional) receives each pair's tensors for panels.
    """
    was_training = getattr(net, "training", False)
    if net is not None and hasattr(net, "eval"):
        net.eval()
    rows = []
    for batch in tqdm(_loader(pairs), desc="registration eval", leave=False, disable=not progress):
        fixed_label = batch["fixed_label"].to(device)
        aligned_label = batch["moving_label_aligned"].to(device)
        affine = warped_mask_metrics(aligned_label, fixed_label)[0]
        row = {"moving": batch["moving_name"][0], "fixed": batch["fixed_name"][0],
               "patient": batch["patient"][0], "fold": fold,
               "affine_iou": affine["iou"], "affine_dice": affine["dice"], "affine_recall": affine["recall"]}
        if net is not None:
            moving = batch["moving_aligned"].to(device)
            flow = net(moving, batch["fixed"].to(device))
            warped_label = warp_label(aligned_label, flow)
            scores = warped_mask_metrics(warped_label, fixed_label)[0]
            row.update(iou=scores["iou"], dice=scores["dice"], recall=scores["recall"],
                       **jacobian_statistics(flow[0]))
            if keep_outputs is not None:
                keep_outputs(batch, {"flow": flow.cpu(), "warped": warp(moving, flow).cpu(),
                                     "warped_label": warped_label.cpu()})
        rows.append(row)
    if net is not None and was_training:
        net.train()
    return rows


@torch.no_grad()
def segment_probabilities(net: torch.nn.Module, images: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Softmax probabilities ``[B, 2, H, W]`` (float32) of ``images [B, 1, H, W]``."""
    with torch.autocast(device_type=images.device.type, enabled=amp):
        logits = net(images)["out"]
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def evaluate_segmentation(net: torch.nn.Module, images: Dataset, device: torch.device,
                          fold: int | None = None, amp: bool = False, pixel_size: float = 1.0,
                          progress: bool = True,
                          keep_outputs: Callable[[dict, np.ndarray], None] | None = None,
                          thin_structures: bool = False) -> list[dict]:
    """Per-image ``name, patient, fold, iou, dice, hd95, recall, accuracy, hd95_empty`` rows; with
    ``thin_structures`` (the test script; validation leaves it off) also clDice, gland-level
    detection and AJI (:func:`utils.evaluation.instance_metrics.instance_metrics`).

    ``keep_outputs(batch, predicted_mask)`` (optional) receives each prediction.
    """
    was_training = net.training
    net.eval()
    rows = []
    for batch in tqdm(_loader(images), desc="segmentation eval", leave=False, disable=not progress):
        probs = segment_probabilities(net, batch["image"].to(device), amp)
        pred = masks_from_scores(probs)[0].cpu().numpy()
        gt = masks_from_scores(batch["label"])[0].numpy()
        scores = evaluate_mask(pred, gt, pixel_size=pixel_size)
        rows.append({"name": batch["name"][0], "patient": batch["patient"][0], "fold": fold,
                     "iou": scores["iou"], "dice": scores["dice"], "hd95": scores["hd95"],
                     "recall": scores["recall"], "accuracy": scores["accuracy"],
                     "hd95_empty": scores["hd95_empty"]})
        if thin_structures:
            rows[-1].update(instance_metrics(pred, gt))
        if keep_outputs is not None:
            keep_outputs(batch, pred)
    if was_training:
        net.train()
    return rows

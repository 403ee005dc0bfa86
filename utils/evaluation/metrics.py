"""Segmentation metrics: IoU, Dice, recall, accuracy and HD95 with an explicit empty-mask policy.

The one metrics module used by the validation loops and the test script.

Masks are boolean (or 0/1, or any number: non-zero = gland) arrays of one shape,
usually ``[H, W]``. With ``TP, FP, FN, TN`` the pixel counts of ``pred`` vs ``gt``:

    iou      = TP / (TP + FP + FN)
    dice     = 2 TP / (2 TP + FP + FN)
    recall   = TP / (TP + FN)
    accuracy = (TP + TN) / (TP + FP + FN + TN)

all fractions in [0, 1]. Empty masks (a denominator of 0):

* both empty: ``iou = dice = recall = 1`` (a perfect prediction of "no gland");
* ``gt`` empty, ``pred`` not: ``iou = dice = 0`` (from the formulas) and
  ``recall = 1`` (recall is undefined with no gland to find; nothing was missed);
* ``pred`` empty, ``gt`` not: ``iou = dice = recall = 0`` (from the formulas).

HD95 (:func:`hd95`) is ``medpy.metric.binary.hd95`` computed in pixel units and
multiplied by ``pixel_size``. It is undefined when a mask is empty; the policy
(:data:`HD95_EMPTY_POLICY`) is never to crash and never to drop the case:

* both empty: 0.0, tag ``"both_empty"``;
* exactly one empty: the image diagonal ``sqrt(H^2 + W^2) * pixel_size`` (the
  largest distance possible inside the image), tag ``"pred_empty"`` or ``"gt_empty"``.

The tag is returned with the value so that callers can count and report these cases.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from medpy.metric.binary import hd95 as _medpy_hd95

from utils.onehot import class_index

HD95_EMPTY_POLICY = ("HD95 with an empty mask: both empty -> 0, exactly one empty -> the image "
                     "diagonal sqrt(H^2 + W^2) (times the pixel size); such images are counted, "
                     "not dropped")


def _as_bool(mask: Any) -> np.ndarray:
    """numpy / torch mask -> numpy bool array (non-zero = gland)."""
    if torch.is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask) != 0


def mask_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two masks as bool arrays of one shape (ValueError when the shapes differ or are empty)."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    if pred.size == 0:
        raise ValueError("masks must have at least one pixel")
    return pred, gt


def _rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """The project's one set of overlap formulas (with the empty-mask policy) from pixel counts."""
    union = tp + fp + fn
    return {
        "iou": tp / union if union else 1.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "accuracy": (tp + tn) / (union + tn),
    }


def mask_metrics(pred: Any, gt: Any) -> dict[str, float]:
    """IoU, Dice, recall, accuracy of a predicted mask against the ground truth.

    ``pred``, ``gt``: same-shape masks (bool / 0-1 numpy arrays or tensors, usually
    ``[H, W]``). Returns ``{"iou", "dice", "recall", "accuracy"}`` as floats in
    [0, 1]; the empty cases follow the module docstring.
    """
    pred, gt = mask_pair(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return _rates(tp, fp, fn, pred.size - tp - fp - fn)


def hd95(pred: Any, gt: Any, pixel_size: float = 1.0) -> tuple[float, str | None]:
    """95th-percentile symmetric Hausdorff distance between two masks.

    Computed by ``medpy.metric.binary.hd95`` with unit voxel spacing (pixels,
    4-connected surfaces as medpy's default), then multiplied by ``pixel_size``.
    Returns ``(value, tag)``: ``tag`` is ``None`` for a normal case, or
    ``"both_empty"`` (value 0.0), ``"pred_empty"`` / ``"gt_empty"`` (value = image
    diagonal times ``pixel_size``) when the distance is undefined. Never raises
    for empty masks.
    """
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    pred, gt = mask_pair(pred, gt)
    pred_empty, gt_empty = not pred.any(), not gt.any()
    if pred_empty and gt_empty:
        return 0.0, "both_empty"
    if pred_empty or gt_empty:
        diagonal = math.sqrt(sum(float(s) ** 2 for s in pred.shape))
        return diagonal * pixel_size, "pred_empty" if pred_empty else "gt_empty"
    return float(_medpy_hd95(pred, gt, voxelspacing=1.0)) * pixel_size, None


def evaluate_mask(pred: Any, gt: Any, pixel_size: float = 1.0) -> dict[str, float | str]:
    """All per-image metrics: iou, dice, recall, accuracy, hd95 and ``hd95_empty``.

    ``hd95_empty`` is the empty-case tag of :func:`hd95` (``"both_empty"``,
    ``"pred_empty"``, ``"gt_empty"``), or ``""`` when HD95 was defined, so it is
    falsy exactly when the value is a real distance.
    """
    row: dict[str, float | str] = dict(mask_metrics(pred, gt))
    value, tag = hd95(pred, gt, pixel_size)
    row["hd95"] = value
    row["hd95_empty"] = tag or ""
    return row


def summarise(rows: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, float | int]:
    """Mean and population standard deviation (``ddof=0``) of ``keys`` over ``rows``.

    Returns ``{f"{k}_mean", f"{k}_std" for k in keys} | {"n": len(rows)}``.
    With no rows the means and stds are NaN and ``n`` is 0.
    """
    out: dict[str, float | int] = {}
    for key in keys:
        values = np.asarray([float(row[key]) for row in rows], dtype=np.float64)
        if values.size:
            out[f"{key}_mean"] = float(values.mean())
            out[f"{key}_std"] = float(values.std(ddof=0))
        else:
            out[f"{key}_mean"] = out[f"{key}_std"] = float("nan")
    out["n"] = len(rows)
    return out


def masks_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """Class scores / logits / one-hot ``[B, C, H, W]`` -> bool gland mask ``[B, H, W]``.

    Argmax over channels; channel 1 = gland. Stays on the input's device.
    """
    if scores.dim() != 4 or scores.shape[1] < 2:
        raise ValueError(f"expected [B, C>=2, H, W] scores, got {tuple(scores.shape)}")
    return class_index(scores) == 1


@torch.no_grad()
def warped_mask_metrics(warped_onehot: torch.Tensor,
                        fixed_onehot: torch.Tensor) -> list[dict[str, float]]:
    """Per-pair overlap of warped moving labels with fixed labels (registration validation).

    ``warped_onehot``, ``fixed_onehot``: ``[B, 2, H, W]`` one-hot (or scores), on
    any device; both are turned into masks by argmax (channel 1 = gland). Counts
    are taken on the device; the formulas and empty-mask policy are those of
    :func:`mask_metrics`. Returns one dict per batch item with ``iou``, ``dice``,
    ``recall``, ``accuracy``.
    """
    if warped_onehot.shape != fixed_onehot.shape:
        raise ValueError(f"warped {tuple(warped_onehot.shape)} and fixed "
                         f"{tuple(fixed_onehot.shape)} differ in shape")
    pred = masks_from_scores(warped_onehot).flatten(1)
    gt = masks_from_scores(fixed_onehot).flatten(1)
    counts = torch.stack([(pred & gt).sum(1), (pred & ~gt).sum(1), (~pred & gt).sum(1)], 1)
    total = pred.shape[1]
    return [_rates(tp, fp, fn, total - tp - fp - fn) for tp, fp, fn in counts.cpu().tolist()]


def jacobian_determinant(field: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant ``[H - 1, W - 1]`` (float64) of the map ``p -> p + d(p)`` for a
    displacement ``field [2, H, W]`` (pixels, row first), by forward differences."""
    d = field.detach().double()
    dy_dr = d[0, 1:, :-1] - d[0, :-1, :-1]
    dy_dc = d[0, :-1, 1:] - d[0, :-1, :-1]
    dx_dr = d[1, 1:, :-1] - d[1, :-1, :-1]
    dx_dc = d[1, :-1, 1:] - d[1, :-1, :-1]
    return (1.0 + dy_dr) * (1.0 + dx_dc) - dy_dc * dx_dr


def jacobian_statistics(field: torch.Tensor) -> dict[str, float]:
    """Plausibility of a deformation ``field [2, H, W]``: ``folding_fraction`` (share of pixels
    whose Jacobian determinant is <= 0: the map folds there), ``jacobian_mean``,
    ``jacobian_min`` and ``jacobian_std``. An identity map gives ``0, 1, 1, 0``."""
    det = jacobian_determinant(field)
    return {"folding_fraction": float((det <= 0).double().mean()), "jacobian_mean": float(det.mean()),
            "jacobian_min": float(det.min()), "jacobian_std": float(det.std(unbiased=False))}

"""Metrics for thin, many-component structures: clDice, gland-level detection and AJI.

Dice and HD95 barely move when two glands merge or one breaks in two; these do. Masks are
2-D ``[H, W]`` arrays (non-zero = gland) as in :mod:`utils.evaluation.metrics`; label images
are int ``[H, W]``, 0 = background and 1..n the glands.

clDice (centre-line Dice, Shit et al., CVPR 2021), :func:`cldice`. With ``S_p``, ``S_g`` the
skeletons (``skimage.morphology.skeletonize``) of the predicted and true masks ``P``, ``G``:
``Tprec = |S_p & G| / |S_p|`` (how much of the predicted centre lines lies in true glands),
``Tsens = |S_g & P| / |S_g|`` and ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``. Both masks
empty: 1; exactly one empty: 0 (no centre line to compare); ``Tprec + Tsens = 0``: 0.

Glands (:func:`instance_metrics`): the glands of each mask are its components after the
split of the clinical measures (:func:`utils.clinical.glands.split_glands`: 8-connected
components of at least 20 pixels, split at necks), so a speck of under 20 pixels is no gland.

Gland-level detection (:func:`gland_detection`). A predicted and a true gland can match when
their IoU is at least 0.5. Above 0.5 a gland has at most one such partner (two disjoint
glands cannot each share more than half of the union with it), so the matching is unique.
At exactly 0.5 a gland can have two, and only when they are its two halves; those halves
have no other partner, so every one-to-one matching has the same number of matches. The
matching is the Hungarian assignment of largest total IoU over the candidate pairs
(``scipy.optimize.linear_sum_assignment``): a standard rule that also fixes which half is
matched in such a tie (a greedy matching by IoU would give the same counts). With ``TP`` matches,
``precision = TP / predicted glands`` (1 when none is predicted: none is wrong),
``recall = TP / true glands`` (1 when there is none: none is missed) and
``F1 = 2 TP / (predicted + true glands)`` (1 when both have none). A predicted gland *covers*
a true gland when they share at least half of the smaller one's pixels,
``|p & g| >= min(|p|, |g|) / 2``; ``merged`` counts the predicted glands that cover two or
more true glands, ``split`` the true glands covered by two or more predicted glands.

AJI (aggregated Jaccard index, Kumar et al., IEEE TMI 2017), :func:`aji`. Each true gland
``G_i`` is paired with the predicted gland ``S_j`` of the largest IoU with it (the lowest
label on a tie; none when no predicted gland overlaps it); ``C`` sums ``|G_i & S_j|`` and ``U``
sums ``|G_i | S_j|`` (``|G_i|`` when unpaired) over the true glands, and ``U`` adds the area of
every predicted gland paired with none. ``AJI = C / U``; 1 when both have no gland, 0 when
exactly one has none. A predicted gland may be paired with several true glands (a merge
then counts its pixels once per pairing, which is what makes AJI fall).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.morphology import skeletonize

from utils.clinical.glands import split_glands
from utils.evaluation.metrics import mask_pair

MATCH_IOU = 0.5
COVER_FRACTION = 0.5
THIN_METRICS = ["cldice", "gland_precision", "gland_recall", "gland_f1", "glands_merged", "glands_split", "aji"]
GLAND_COUNTS = ["pred_glands", "true_glands"]


def cldice(pred: Any, gt: Any) -> float:
    """Centre-line Dice of two masks (definition and empty cases in the module docstring)."""
    pred, gt = mask_pair(pred, gt)
    pred_skeleton, true_skeleton = skeletonize(pred), skeletonize(gt)
    if not pred_skeleton.any() and not true_skeleton.any():
        return 1.0
    if not pred_skeleton.any() or not true_skeleton.any():
        return 0.0
    precision = np.count_nonzero(pred_skeleton & gt) / np.count_nonzero(pred_skeleton)
    sensitivity = np.count_nonzero(true_skeleton & pred) / np.count_nonzero(true_skeleton)
    total = precision + sensitivity
    return float(2.0 * precision * sensitivity / total) if total > 0 else 0.0


def overlaps(pred_labels: np.ndarray, true_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(intersections [n_pred, n_true], predicted areas [n_pred], true areas [n_true])`` in pixels
    of two label images of one shape (labels 1..n; numbering gaps give empty glands)."""
    pred_labels, true_labels = np.asarray(pred_labels, dtype=np.int64), np.asarray(true_labels, dtype=np.int64)
    if pred_labels.shape != true_labels.shape:
        raise ValueError(f"label images {pred_labels.shape} and {true_labels.shape} differ in shape")
    n_pred, n_true = int(pred_labels.max(initial=0)), int(true_labels.max(initial=0))
    table = np.bincount((pred_labels * (n_true + 1) + true_labels).ravel(),
                        minlength=(n_pred + 1) * (n_true + 1)).reshape(n_pred + 1, n_true + 1)
    return table[1:, 1:], table[1:, :].sum(axis=1), table[:, 1:].sum(axis=0)


def _iou(intersections: np.ndarray, pred_areas: np.ndarray, true_areas: np.ndarray) -> np.ndarray:
    unions = pred_areas[:, None] + true_areas[None, :] - intersections
    return np.divide(intersections, unions, out=np.zeros(intersections.shape), where=unions > 0)


def gland_detection(pred_labels: np.ndarray, true_labels: np.ndarray, match_iou: float = MATCH_IOU
                    ) -> dict[str, float | int]:
    """Precision, recall, F1 of one-to-one matched glands and the merged / split counts
    (definitions in the module docstring). Returns ``gland_precision``, ``gland_recall``,
    ``gland_f1``, ``glands_merged``, ``glands_split``, ``pred_glands``, ``true_glands``."""
    intersections, pred_areas, true_areas = overlaps(pred_labels, true_labels)
    n_pred, n_true = len(pred_areas), len(true_areas)
    iou = _iou(intersections, pred_areas, true_areas)
    candidate = iou >= match_iou
    matches = 0
    if candidate.any():
        rows, cols = linear_sum_assignment(np.where(candidate, iou, 0.0), maximize=True)
        matches = int(candidate[rows, cols].sum())
    smaller = np.minimum(pred_areas[:, None], true_areas[None, :])
    covers = (intersections > 0) & (intersections >= COVER_FRACTION * smaller)
    return {"gland_precision": matches / n_pred if n_pred else 1.0,
            "gland_recall": matches / n_true if n_true else 1.0,
            "gland_f1": 2.0 * matches / (n_pred + n_true) if n_pred + n_true else 1.0,
            "glands_merged": int((covers.sum(axis=1) >= 2).sum()),
            "glands_split": int((covers.sum(axis=0) >= 2).sum()),
            "pred_glands": n_pred, "true_glands": n_true}


def aji(pred_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Aggregated Jaccard index of two label images (Kumar et al. 2017; module docstring)."""
    intersections, pred_areas, true_areas = overlaps(pred_labels, true_labels)
    if not len(pred_areas) and not len(true_areas):
        return 1.0
    iou = _iou(intersections, pred_areas, true_areas)
    paired = np.zeros(len(pred_areas), dtype=bool)
    inter = union = 0
    for i, true_area in enumerate(true_areas):
        if len(pred_areas) and iou[:, i].max() > 0:
            j = int(np.argmax(iou[:, i]))
            inter += int(intersections[j, i])
            union += int(pred_areas[j] + true_area - intersections[j, i])
            paired[j] = True
        else:
            union += int(true_area)
    union += int(pred_areas[~paired].sum())
    return inter / union if union else 1.0


def instance_metrics(pred: Any, gt: Any) -> dict[str, float | int]:
    """Every metric of this module for one image (keys :data:`THIN_METRICS` + :data:`GLAND_COUNTS`)."""
    pred, gt = mask_pair(pred, gt)
    pred_labels, true_labels = split_glands(pred), split_glands(gt)
    return {"cldice": cldice(pred, gt), **gland_detection(pred_labels, true_labels),
            "aji": aji(pred_labels, true_labels)}

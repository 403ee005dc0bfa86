"""utils.evaluation.metrics against hand-computed values and a brute-force HD95."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.evaluation.metrics import (evaluate_mask, hd95, mask_metrics, masks_from_scores, summarise,
                           warped_mask_metrics)
from utils.onehot import class_index, one_hot


def _mask(rows, shape=(4, 4)):
    m = np.zeros(shape, dtype=bool)
    for r, c in rows:
        m[r, c] = True
    return m


# 4x4, pred = 2x2 block at the top-left, gt = the same block shifted one column right:
# TP = 2, FP = 2, FN = 2, TN = 10.
PRED_A = _mask([(0, 0), (0, 1), (1, 0), (1, 1)])
GT_A = _mask([(0, 1), (0, 2), (1, 1), (1, 2)])
# pred = one pixel inside a 3-pixel gt: TP = 1, FP = 0, FN = 2, TN = 13.
PRED_B = _mask([(0, 0)])
GT_B = _mask([(0, 0), (0, 1), (0, 2)])


def test_mask_metrics_hand_values():
    m = mask_metrics(PRED_A, GT_A)
    assert m["iou"] == pytest.approx(2 / 6)
    assert m["dice"] == pytest.approx(4 / 8)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["accuracy"] == pytest.approx(12 / 16)
    m = mask_metrics(PRED_B, GT_B)
    assert m["iou"] == pytest.approx(1 / 3)
    assert m["dice"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(14 / 16)


def test_mask_metrics_accepts_01_and_tensors():
    ref = mask_metrics(PRED_B, GT_B)
    assert mask_metrics(PRED_B.astype(np.uint8), GT_B.astype(np.float32)) == ref
    assert mask_metrics(torch.from_numpy(PRED_B), torch.from_numpy(GT_B.astype(np.uint8))) == ref


def test_mask_metrics_empty_cases():
    empty = np.zeros((4, 4), dtype=bool)
    assert mask_metrics(empty, empty) == {"iou": 1.0, "dice": 1.0, "recall": 1.0, "accuracy": 1.0}
    gt_empty = mask_metrics(PRED_B, empty)  # 1 FP, 15 TN
    assert gt_empty == {"iou": 0.0, "dice": 0.0, "recall": 1.0, "accuracy": pytest.approx(15 / 16)}
    pred_empty = mask_metrics(empty, GT_B)  # 3 FN, 13 TN
    assert pred_empty == {"iou": 0.0, "dice": 0.0, "recall": 0.0, "accuracy": pytest.approx(13 / 16)}


def test_mask_metrics_shape_mismatch():
    with pytest.raises(ValueError):
        mask_metrics(np.zeros((4, 4)), np.zeros((4, 5)))


def _border(mask: np.ndarray) -> list[tuple[int, int]]:
    """Mask pixels with a 4-neighbour outside the mask or outside the image."""
    h, w = mask.shape
    out = []
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            nbrs = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
            if any(not (0 <= y < h and 0 <= x < w) or not mask[y, x] for y, x in nbrs):
                out.append((r, c))
    return out


def _naive_hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """All surface distances in both directions; 95th percentile with linear interpolation."""
    bp, bg = _border(pred), _border(gt)
    dists = [min(math.hypot(r - y, c - x) for y, x in bg) for r, c in bp]
    dists += [min(math.hypot(r - y, c - x) for y, x in bp) for r, c in bg]
    dists.sort()
    rank = 0.95 * (len(dists) - 1)
    lo = int(math.floor(rank))
    hi = min(lo + 1, len(dists) - 1)
    return dists[lo] + (rank - lo) * (dists[hi] - dists[lo])


def test_hd95_single_pixels_hand_value_and_pixel_size():
    pred = _mask([(0, 0)], (8, 8))
    gt = _mask([(3, 4)], (8, 8))
    assert hd95(pred, gt) == (pytest.approx(5.0), None)
    assert hd95(pred, gt, pixel_size=0.5) == (pytest.approx(2.5), None)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((12, 16)) < 0.3
    gt = np.zeros((12, 16), dtype=bool)
    gt[3:9, 4:13] = True
    gt[0, 0] = True
    expected = _naive_hd95(pred, gt)
    value, tag = hd95(pred, gt)
    assert tag is None
    assert value == pytest.approx(expected, abs=1e-9)
    assert hd95(gt, pred)[0] == pytest.approx(expected, abs=1e-9)
    assert hd95(pred, gt, pixel_size=0.25)[0] == pytest.approx(0.25 * expected, abs=1e-9)


def test_hd95_identical_masks_is_zero():
    assert hd95(GT_A, GT_A) == (0.0, None)


def test_hd95_empty_policy():
    empty = np.zeros((3, 4), dtype=bool)
    full = _mask([(1, 1)], (3, 4))
    assert hd95(empty, empty) == (0.0, "both_empty")
    assert hd95(empty, full) == (pytest.approx(5.0), "pred_empty")  # diagonal sqrt(3^2 + 4^2)
    assert hd95(full, empty) == (pytest.approx(5.0), "gt_empty")
    assert hd95(full, empty, pixel_size=2.0) == (pytest.approx(10.0), "gt_empty")
    with pytest.raises(ValueError):
        hd95(full, full, pixel_size=0.0)


def test_evaluate_mask_row():
    row = evaluate_mask(PRED_A, GT_A, pixel_size=2.0)
    assert set(row) == {"iou", "dice", "recall", "accuracy", "hd95", "hd95_empty"}
    assert row["iou"] == pytest.approx(2 / 6)
    assert row["hd95"] == pytest.approx(2.0 * _naive_hd95(PRED_A, GT_A))
    assert row["hd95_empty"] == ""
    row = evaluate_mask(np.zeros((3, 4)), _mask([(0, 0)], (3, 4)))
    assert row["hd95_empty"] == "pred_empty" and row["hd95"] == pytest.approx(5.0)
    assert row["iou"] == 0.0


def test_summarise_hand_values():
    rows = [{"iou": 0.2, "dice": 1.0}, {"iou": 0.4, "dice": 1.0}, {"iou": 0.9, "dice": 1.0}]
    s = summarise(rows, ["iou", "dice"])
    assert s["n"] == 3
    assert s["iou_mean"] == pytest.approx(0.5)
    assert s["iou_std"] == pytest.approx(math.sqrt((0.3 ** 2 + 0.1 ** 2 + 0.4 ** 2) / 3))  # ddof = 0
    assert s["dice_mean"] == pytest.approx(1.0) and s["dice_std"] == pytest.approx(0.0)
    empty = summarise([], ["iou"])
    assert empty["n"] == 0 and math.isnan(empty["iou_mean"]) and math.isnan(empty["iou_std"])


def test_masks_from_scores_argmax():
    scores = torch.tensor([[[[0.2, 0.9]], [[0.8, 0.1]]]])  # [1, 2, 1, 2]
    assert masks_from_scores(scores).tolist() == [[[True, False]]]


def test_class_index_inverts_one_hot_and_takes_first_maximum_on_ties():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 5, 7), generator=g)
    assert torch.equal(class_index(one_hot(labels, 3)), labels)
    assert class_index(one_hot(labels, 3), keepdim=True).shape == (2, 1, 5, 7)
    scores = torch.tensor([[[[0.5, 0.2, 0.7]], [[0.5, 0.9, 0.7]], [[0.1, 0.9, 0.7]]]])  # [1, 3, 1, 3]
    assert class_index(scores).tolist() == [[[0, 1, 0]]]
    random = torch.randn(2, 4, 6, 5, generator=g)
    assert torch.equal(class_index(random), random.argmax(dim=1))


def test_warped_mask_metrics_matches_mask_metrics():
    preds = [PRED_A, PRED_B, np.zeros((4, 4), bool)]
    gts = [GT_A, GT_B, np.zeros((4, 4), bool)]
    warped = one_hot(torch.from_numpy(np.stack(preds)).long())
    fixed = one_hot(torch.from_numpy(np.stack(gts)).long())
    rows = warped_mask_metrics(warped, fixed)
    assert len(rows) == 3
    for row, p, g in zip(rows, preds, gts):
        assert row == pytest.approx(mask_metrics(p, g))
    assert rows[0]["dice"] == pytest.approx(0.5)
    assert rows[2] == {"iou": 1.0, "dice": 1.0, "recall": 1.0, "accuracy": 1.0}
    # soft (bilinearly warped) one-hot: argmax decides
    soft = warped * 0.8 + 0.1
    soft_rows = warped_mask_metrics(soft, fixed)
    assert len(soft_rows) == len(rows)
    for soft_row, row in zip(soft_rows, rows):
        assert soft_row == pytest.approx(row)

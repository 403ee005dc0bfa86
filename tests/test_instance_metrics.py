"""clDice, gland-level detection and AJI against hand-computed answers on small drawn masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.morphology import skeletonize

from utils.evaluation.instance_metrics import THIN_METRICS, aji, cldice, gland_detection, instance_metrics, overlaps
from utils.evaluation.loops import evaluate_segmentation
from utils.evaluation.metrics import mask_metrics
from utils.evaluation.summaries import SEG_COLUMNS
from utils.onehot import one_hot

H, W = 56, 40


def bars(cols, rows=(5, 46), width=7) -> np.ndarray:
    """Vertical glands ``width`` pixels wide over ``rows``, their left edges at ``cols``."""
    mask = np.zeros((H, W), bool)
    for col in cols:
        mask[rows[0]:rows[1], col:col + width] = True
    return mask


def test_a_gland_split_in_two():
    truth = bars([10], width=6)        # 41 x 6 = 246 pixels
    pred = truth.copy()
    pred[25] = False                   # two halves of 20 x 6 = 120 pixels
    scores = instance_metrics(pred, truth)
    assert (scores["pred_glands"], scores["true_glands"]) == (2, 1)
    # each half has IoU 120 / 246 < 0.5 with the gland: nothing matches
    assert (scores["gland_precision"], scores["gland_recall"], scores["gland_f1"]) == (0.0, 0.0, 0.0)
    assert (scores["glands_split"], scores["glands_merged"]) == (1, 0)
    # AJI: the gland pairs with the upper half (120 / 246, the lower label of a tie); the lower half
    # is paired with nothing and joins the union
    assert scores["aji"] == pytest.approx(120 / (246 + 120))
    # clDice: the halves' centre lines lie in the gland; the gland's centre line loses the one pixel
    # in the cut row
    skeleton = skeletonize(truth)
    assert skeleton[25].sum() == 1
    sensitivity = (skeleton.sum() - 1) / skeleton.sum()
    assert scores["cldice"] == pytest.approx(2 * sensitivity / (1 + sensitivity))
    assert mask_metrics(pred, truth)["dice"] > 0.98  # what Dice alone says


def test_two_glands_merged():
    truth = bars([8, 18], width=6)      # two glands of 246 pixels, 4 columns apart
    pred = np.zeros_like(truth)
    pred[5:46, 8:24] = True             # one gland over both and the gap: 41 x 16 = 656 pixels
    scores = instance_metrics(pred, truth)
    assert (scores["pred_glands"], scores["true_glands"]) == (1, 2)
    assert (scores["gland_precision"], scores["gland_recall"], scores["gland_f1"]) == (0.0, 0.0, 0.0)  # 246/656
    assert (scores["glands_merged"], scores["glands_split"]) == (1, 0)
    assert scores["aji"] == pytest.approx((246 + 246) / (656 + 656))  # the merged gland counted for each
    assert scores["cldice"] == 0.0  # the merged gland's centre line runs in the gap between the true ones
    assert mask_metrics(pred, truth)["dice"] == pytest.approx(2 * 492 / (492 + 656))


@pytest.mark.parametrize("shift, iou", [(1, 6 / 8), (2, 5 / 9), (3, 4 / 10), (4, 3 / 11)])
def test_a_shifted_copy(shift, iou):
    truth = bars([5, 17, 29])           # three glands 7 pixels wide
    pred = np.roll(truth, shift, axis=1)
    scores = instance_metrics(pred, truth)
    matched = iou >= 0.5
    assert scores["gland_f1"] == scores["gland_precision"] == scores["gland_recall"] == float(matched)
    assert scores["aji"] == pytest.approx(iou)  # every gland pairs with its own copy
    assert (scores["glands_merged"], scores["glands_split"]) == (0, 0)
    if shift <= 2:   # the centre lines stay inside the other mask
        assert scores["cldice"] == 1.0
    if shift == 4:   # past half the width: the centre lines (but their ends) fall outside
        assert scores["cldice"] < 0.05


def test_empty_prediction_and_empty_truth():
    glands, empty = bars([5, 17]), np.zeros((H, W), bool)
    missed = instance_metrics(empty, glands)
    assert missed == {"cldice": 0.0, "gland_precision": 1.0, "gland_recall": 0.0, "gland_f1": 0.0,
                      "glands_merged": 0, "glands_split": 0, "pred_glands": 0, "true_glands": 2, "aji": 0.0}
    invented = instance_metrics(glands, empty)
    assert invented == {"cldice": 0.0, "gland_precision": 0.0, "gland_recall": 1.0, "gland_f1": 0.0,
                        "glands_merged": 0, "glands_split": 0, "pred_glands": 2, "true_glands": 0, "aji": 0.0}
    both = instance_metrics(empty, empty)
    assert all(both[name] == 1.0 for name in ("cldice", "gland_precision", "gland_recall", "gland_f1", "aji"))
    assert set(THIN_METRICS) <= set(both)


def test_specks_under_the_gland_size_are_no_glands():
    truth = bars([5])
    pred = truth.copy()
    pred[50:53, 30:33] = True  # 9 pixels: below the 20 of the clinical split
    assert instance_metrics(pred, truth)["gland_precision"] == 1.0


def test_matching_at_exactly_half_counts_once_and_covering_is_half_the_smaller():
    pred = np.zeros((4, 10), int)
    pred[0:2] = 1                  # one predicted gland of 20 pixels over two true ones of 10
    truth = np.zeros((4, 10), int)
    truth[0], truth[1] = 1, 2
    scores = gland_detection(pred, truth)
    assert (scores["gland_precision"], scores["gland_recall"], scores["gland_f1"]) == (1.0, 0.5, 2 / 3)
    assert (scores["glands_merged"], scores["glands_split"]) == (1, 0)
    assert aji(pred, truth) == pytest.approx(20 / 40)
    nibble = np.zeros((4, 10), int)
    nibble[0, :4], nibble[2:4, :] = 1, 2   # 4 of true gland 1's 10 pixels: under half of the smaller (10)
    assert gland_detection(nibble, truth)["glands_merged"] == 0
    intersections, pred_areas, true_areas = overlaps(nibble, truth)
    assert intersections.tolist() == [[4, 0], [0, 0]] and pred_areas.tolist() == [4, 20]
    assert true_areas.tolist() == [10, 10]


def test_cldice_of_a_mask_with_itself_and_of_disjoint_masks():
    glands = bars([5, 17])
    assert cldice(glands, glands) == 1.0
    assert cldice(glands, bars([30])) == 0.0
    with pytest.raises(ValueError):
        cldice(glands, glands[:-1])


class FixedPrediction(torch.nn.Module):
    """A segmenter whose argmax is ``mask`` for every input."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.logits = one_hot(torch.from_numpy(mask.astype(np.int64))[None]) * 10.0

    def forward(self, x: torch.Tensor) -> dict:
        return {"out": self.logits.expand(x.shape[0], -1, -1, -1)}


def test_the_test_scripts_rows_carry_them_and_validation_rows_do_not():
    truth, pred = bars([5, 17]), np.roll(bars([5, 17]), 3, axis=1)
    images = [{"image": torch.zeros(1, H, W), "label": one_hot(torch.from_numpy(truth.astype(np.int64))),
               "name": "a", "patient": "p"}]
    net = FixedPrediction(pred)
    (tested,) = evaluate_segmentation(net, images, torch.device("cpu"), fold=1, progress=False, thin_structures=True)
    assert {name: tested[name] for name in instance_metrics(pred, truth)} == instance_metrics(pred, truth)
    assert set(SEG_COLUMNS) == set(tested) | {"seed"}  # the test script adds each run's seed
    (validated,) = evaluate_segmentation(net, images, torch.device("cpu"), fold=1, progress=False)
    assert not set(THIN_METRICS) & set(validated)
    assert validated["dice"] == tested["dice"] == mask_metrics(pred, truth)["dice"]

"""Clinical measures from masks (utils.clinical.measures): known answers on small synthetic masks."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from utils.clinical import agreement
from utils import gland_measures as command
from utils.clinical import dropout as dropout_mod
from utils.clinical import glands as glands_mod
from utils.clinical import measures as measures_mod
from utils.errors import InputError
from utils.evaluation.gland_overlay import LINE_COLOURS, draw_gland_overlay
from utils.clinical.skeleton import fill_holes, longest_skeleton_path
from utils.synthetic.generate import DROPOUT_CSV, generate_dataset

ROOT = Path(__file__).resolve().parents[1]


def bar(shape, top, left, length, width):
    """Mask with one vertical bar of ``length`` rows x ``width`` columns."""
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + length, left:left + width] = True
    return mask


def sine_gland(amplitude, period, rows, width, margin=10):
    """Flat-ended gland: in each of ``rows`` rows the pixels within ``width / 2`` of
    ``x(y) = c + amplitude * sin(2 pi y / period)``; returns (mask, arc length of x(y)
    from the top edge of the first row to the bottom edge of the last)."""
    height = rows + 2 * margin
    cols = int(2 * amplitude + width + 2 * margin)
    y = np.arange(height, dtype=float)[:, None] - margin
    x = np.arange(cols, dtype=float)[None, :]
    centre = cols / 2 + amplitude * np.sin(2 * np.pi * y / period)
    mask = (np.abs(x - centre) <= width / 2) & (y >= 0) & (y < rows)
    ys = np.linspace(-0.5, rows - 0.5, 200001)
    xs = amplitude * np.sin(2 * np.pi * ys / period)
    return mask, float(np.hypot(np.diff(ys), np.diff(xs)).sum())


# ----------------------------------------------------------------------------- single glands

@pytest.mark.parametrize("length, width", [(60, 7), (40, 5), (100, 11), (30, 3), (50, 8)])
def test_straight_bar(length, width):
    result = measures_mod.measure_image(bar((length + 20, width + 20), 10, 10, length, width))
    assert result.gland_count == 1
    gland = result.glands[0]
    assert gland.area == length * width
    assert abs(gland.length - length) <= 1.0
    assert abs(gland.mean_width - width) <= 0.5
    assert abs(gland.tortuosity - 1.0) <= 0.02
    assert abs(gland.orientation) < 2.0
    (top_row, _), (bottom_row, _) = gland.ends
    assert abs(top_row - 9.5) <= 1.0 and abs(bottom_row - (9.5 + length)) <= 1.0


def test_bar_touching_the_image_border_keeps_its_length():
    gland = measures_mod.measure_image(bar((50, 20), 0, 5, 50, 6)).glands[0]
    assert abs(gland.length - 50) <= 1.0


@pytest.mark.parametrize("amplitude, period, width", [(6, 60, 5), (10, 80, 6), (15, 100, 7), (8, 50, 4)])
def test_sine_gland_length_and_tortuosity(amplitude, period, width):
    mask, arc = sine_gland(amplitude, period, 150, width)
    result = measures_mod.measure_image(mask)
    assert result.gland_count == 1  # a tortuous gland is not split
    gland = result.glands[0]
    assert gland.length == pytest.approx(arc, rel=0.03)
    chord = np.hypot(*(np.subtract(gland.ends[1], gland.ends[0])))
    assert gland.tortuosity == pytest.approx(gland.length / chord)
    assert gland.tortuosity == pytest.approx(arc / 150, rel=0.03)
    assert gland.tortuosity > 1.02


def test_orientation_sign_and_range():
    mask = np.zeros((120, 120), np.uint8)
    cv2.line(mask, (30, 10), (80, 100), 1, 7)   # lower end to the right
    leaning_right = measures_mod.measure_image(mask).glands[0].orientation
    assert leaning_right == pytest.approx(np.degrees(np.arctan2(50, 90)), abs=2.0)
    assert measures_mod.measure_image(mask[:, ::-1]).glands[0].orientation == pytest.approx(-leaning_right, abs=1.5)
    assert glands_mod.orientation_degrees((5, 10), (5, 0)) == 90.0
    assert glands_mod.orientation_degrees((0, 0), (10, 0)) == 0.0


def test_gland_with_a_hole_is_measured_through_its_middle():
    mask = bar((80, 30), 10, 10, 60, 9)
    mask[35:40, 13:16] = False
    gland = measures_mod.measure_image(mask).glands[0]
    assert abs(gland.length - 60) <= 1.0
    assert gland.tortuosity < 1.02


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((30, 40)) < rng.uniform(0.3, 0.8)
        np.testing.assert_array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))


def test_longest_path_of_a_tree_skeleton():
    skeleton = np.zeros((9, 12), bool)
    skeleton[4, 1:11] = True      # trunk: 10 pixels
    skeleton[1:4, 5] = True       # a 3-pixel branch
    path = longest_skeleton_path(skeleton)
    assert {tuple(path[0]), tuple(path[-1])} == {(4, 1), (4, 10)}
    assert len(path) == 10


def test_blob_gets_a_centre_line_along_its_long_axis():
    yy, xx = np.mgrid[:40, :40]
    ellipse = ((yy - 20) / 9.0) ** 2 + ((xx - 20) / 4.0) ** 2 <= 1.0
    gland = measures_mod.measure_image(ellipse).glands[0]
    assert gland.length == pytest.approx(19, abs=1.5)
    assert abs(gland.orientation) < 5.0


# ----------------------------------------------------------------------------- counting and splitting

def test_separate_glands_are_counted_and_numbered_left_to_right():
    mask = np.zeros((80, 120), bool)
    for left in (100, 10, 55, 35, 78):
        mask[10:70, left:left + 6] = True
    result = measures_mod.measure_image(mask)
    assert result.gland_count == 5
    cols = [g.centroid[1] for g in result.glands]
    assert cols == sorted(cols) and [g.gland_id for g in result.glands] == [1, 2, 3, 4, 5]
    assert set(np.unique(result.labels)) == {0, 1, 2, 3, 4, 5}


def touching_pair(bridge_rows=2):
    mask = bar((80, 40), 10, 8, 60, 7) | bar((80, 40), 10, 19, 60, 7)
    mask[38:38 + bridge_rows, 15:19] = True          # a short neck between the two glands
    return mask


def test_two_glands_touching_at_a_neck_are_split():
    mask = touching_pair()
    assert ndi.label(mask)[1] == 1
    result = measures_mod.measure_image(mask)
    assert result.gland_count == 2
    assert sum(g.area for g in result.glands) == mask.sum()     # no pixel lost
    for gland in result.glands:
        assert abs(gland.length - 60) <= 2.0
        assert gland.tortuosity < 1.05


def test_split_can_be_turned_off_and_a_wide_fusion_is_not_split():
    assert measures_mod.measure_image(touching_pair(), split_ratio=0).gland_count == 1
    assert measures_mod.measure_image(touching_pair(bridge_rows=12)).gland_count == 1


def tube(amplitude, period, rows, width):
    """Constant-width tortuous gland: the pixels within ``width / 2`` of a sine centre line."""
    ys = np.linspace(10, 10 + rows, 4000)
    xs = 40 + amplitude * np.sin(2 * np.pi * ys / period)
    line = np.ones((rows + 20, 80), np.uint8)
    line[np.round(ys).astype(int), np.round(xs).astype(int)] = 0
    return ndi.distance_transform_edt(line) <= width / 2


def test_tortuous_gland_is_not_split():
    mask = tube(12, 40, 160, 6)
    assert ndi.label(mask)[1] == 1
    assert measures_mod.measure_image(mask).gland_count == 1
    assert measures_mod.measure_image(mask, split_ratio=0.7).gland_count == 1


def test_beaded_gland_splits_only_where_its_necks_are_narrow_enough():
    mask = bar((80, 30), 10, 10, 60, 9)
    mask[38:42, 10:13] = mask[38:42, 16:19] = False              # a 3-px neck, a third of the width
    assert measures_mod.measure_image(mask, split_ratio=0.5).gland_count == 2
    assert measures_mod.measure_image(mask, split_ratio=0.2).gland_count == 1


def test_split_pieces_below_min_area_are_merged_back():
    mask = bar((60, 40), 5, 5, 50, 9)
    mask[28:30, 14:16] = True     # 2 x 2 neck
    mask[27:31, 16:20] = True     # a 4 x 4 knob: its own marker, but below min_area
    result = measures_mod.measure_image(mask, min_area=20)
    assert result.gland_count == 1 and result.glands[0].area == mask.sum()


def test_min_area_filter():
    mask = bar((40, 60), 5, 5, 19, 1) | bar((40, 60), 5, 20, 20, 1) | bar((40, 60), 5, 40, 5, 5)
    assert measures_mod.measure_image(mask, min_area=20).gland_count == 2      # 19 px dropped, 20 and 25 kept
    assert measures_mod.measure_image(mask, min_area=21).gland_count == 1
    assert measures_mod.measure_image(mask, min_area=1).gland_count == 3
    assert measures_mod.measure_image(mask, min_area=21).gland_area == mask.sum()   # pixel totals use the mask as given


def test_pixel_size_scales_lengths_and_areas():
    mask, _ = sine_gland(8, 60, 100, 6)
    eyelid = np.zeros_like(mask)
    eyelid[5:-5, :] = True
    plain = measures_mod.measure_image(mask, eyelid)
    scaled = measures_mod.measure_image(mask, eyelid, pixel_size=0.02)
    a, b = plain.glands[0], scaled.glands[0]
    assert b.length == pytest.approx(0.02 * a.length)
    assert b.mean_width == pytest.approx(0.02 * a.mean_width)
    assert b.area == pytest.approx(0.0004 * a.area)
    assert b.margin_distance == pytest.approx(0.02 * a.margin_distance)
    assert (b.tortuosity, b.orientation, b.ends) == (a.tortuosity, a.orientation, a.ends)
    assert scaled.gland_area == pytest.approx(0.0004 * plain.gland_area)
    assert scaled.eyelid_area == pytest.approx(0.0004 * plain.eyelid_area)
    assert scaled.median_length == pytest.approx(0.02 * plain.median_length)
    assert (scaled.gland_area_ratio, scaled.dropout) == (plain.gland_area_ratio, plain.dropout)


# ----------------------------------------------------------------------------- eyelid measures

def rectangle_lid(shape=(100, 220), rows=(20, 80), cols=(10, 210)):
    eyelid = np.zeros(shape, bool)
    eyelid[rows[0]:rows[1], cols[0]:cols[1]] = True
    return eyelid


def test_gland_area_ratio_on_a_hand_made_case():
    eyelid = rectangle_lid()                                     # 60 x 200 = 12000 px
    glands = bar(eyelid.shape, 30, 50, 40, 5) | bar(eyelid.shape, 30, 100, 40, 5)    # 400 px inside
    glands |= bar(eyelid.shape, 10, 150, 20, 5)                  # 100 px, half of them outside the lid
    result = measures_mod.measure_image(glands, eyelid)
    assert result.eyelid_area == 12000
    assert result.gland_area == 500
    assert result.gland_area_ratio == pytest.approx(450 / 12000)


def comb(eyelid, keep=lambda k: True, rows=None, width=6, pitch=16):
    """Vertical bars at columns 10 + 16 k (k = 0..12) through the lid rows (or ``rows``)."""
    glands = np.zeros_like(eyelid)
    top, bottom = rows if rows is not None else (20, 80)
    for k in range(13):
        if keep(k):
            glands[top:bottom, 10 + pitch * k:10 + pitch * k + width] = True
    return glands


@pytest.mark.parametrize("definition", ["area", "span"])
def test_dropout_of_a_full_comb_is_about_zero(definition):
    eyelid = rectangle_lid()        # width 200 columns -> L = 12: gaps of 10 columns are closed
    lost = dropout_mod.dropout(comb(eyelid), eyelid, definition=definition)
    assert lost == pytest.approx(2 * 60 / 12000)    # only the 2 columns right of the last bar
    assert lost < 0.02


@pytest.mark.parametrize("definition", ["area", "span"])
def test_dropout_with_half_of_the_bars_missing_on_one_side(definition):
    eyelid = rectangle_lid()
    lost = dropout_mod.dropout(comb(eyelid, keep=lambda k: k <= 6), eyelid, definition=definition)
    assert lost == pytest.approx(0.5, abs=0.05)


def test_area_dropout_of_shortened_bars():
    eyelid = rectangle_lid()
    lost = dropout_mod.dropout(comb(eyelid, rows=(56, 80)), eyelid, definition="area")  # the lower 24 of 60 rows
    assert lost == pytest.approx(1 - 198 * 24 / 12000)          # closed columns 10..207


def test_dropout_gap_fraction_decides_which_gaps_count():
    eyelid = rectangle_lid()
    for definition in ("area", "span"):
        assert dropout_mod.dropout(comb(eyelid), eyelid, gap_fraction=0.05, definition=definition) > 0.4
        assert dropout_mod.dropout(comb(eyelid), eyelid, gap_fraction=0.055, definition=definition) < 0.02


# A tall eyelid (rows 20..139, 120 rows x 200 columns) whose healthy glands fill the upper half
# (the margin side): real tarsal masks reach well beyond the glands.
TALL = dict(shape=(160, 220), rows=(20, 140))


def test_span_dropout_of_a_healthy_comb_in_a_tall_eyelid_is_about_zero():
    eyelid = rectangle_lid(**TALL)
    healthy = comb(eyelid, rows=(20, 80))
    assert dropout_mod.dropout(healthy, eyelid) == pytest.approx(2 * 60 / (200 * 60))     # the 2 last columns
    assert dropout_mod.dropout(healthy, eyelid, definition="area") == pytest.approx(1 - 198 * 60 / (200 * 120))
    assert dropout_mod.dropout_and_extent(healthy, eyelid)[1] == pytest.approx(0.5)
    longer = comb(eyelid, rows=(20, 104))                      # glands reaching 0.7 of the plate
    assert dropout_mod.dropout_and_extent(longer, eyelid) == (pytest.approx(0.01), pytest.approx(0.7))


def test_span_dropout_counts_missing_glands():
    eyelid = rectangle_lid(**TALL)
    half = comb(eyelid, keep=lambda k: k <= 6, rows=(20, 80))   # columns 10..111 of 10..209 kept
    assert dropout_mod.dropout(half, eyelid) == pytest.approx(1 - 102 / 200)
    assert dropout_mod.dropout(np.zeros_like(eyelid), eyelid) == 1.0


def test_span_dropout_counts_shortened_glands_against_the_healthy_extent_floor():
    eyelid = rectangle_lid(**TALL)
    # every gland shortened to half of its healthy 60 rows: the lid's own reach (0.25) is below
    # the floor (0.5), so the span stays the upper 60 rows and half of it is lost
    shortened = comb(eyelid, rows=(20, 50))
    assert dropout_mod.dropout_and_extent(shortened, eyelid) == (pytest.approx(1 - 198 * 30 / (200 * 60)),
                                                                 pytest.approx(0.5))
    # glands reaching 0.7 shortened to 0.35: the floor 0.5 is the span, 0.35 / 0.5 of it kept
    assert dropout_mod.dropout(comb(eyelid, rows=(20, 62)), eyelid) == pytest.approx(1 - 198 * 42 / (200 * 60))
    # a lower floor reads the shortened comb as healthy: the floor is what makes shortening count
    assert dropout_mod.dropout(shortened, eyelid, healthy_extent=0.25) == pytest.approx(0.01)
    # some glands shortened: the long ones set the extent
    mixed = comb(eyelid, rows=(20, 80)) & ~comb(eyelid, keep=lambda k: k >= 7, rows=(50, 80))
    assert dropout_mod.dropout(mixed, eyelid) == pytest.approx(1 - (102 * 60 + 96 * 30) / (200 * 60))


def test_span_dropout_follows_the_margin_side():
    eyelid = rectangle_lid(**TALL)
    glands = comb(eyelid, rows=(20, 50)) | comb(eyelid, keep=lambda k: k <= 6, rows=(50, 80))
    top = dropout_mod.dropout(glands, eyelid)
    assert dropout_mod.dropout(glands[::-1], eyelid[::-1]) == pytest.approx(top)        # auto: bottom
    assert dropout_mod.dropout(glands[::-1], eyelid[::-1], margin_side="bottom") == pytest.approx(top)
    assert dropout_mod.dropout(glands, eyelid, margin_side="bottom") > top + 0.3        # the wrong edge


def naive_span_dropout(glands, eyelid, side, floor, length):
    """The span definition column by column (written independently of utils.clinical.dropout)."""
    closed = reference_closing(glands, length)
    columns, reach, weight = [], [], []
    for col in range(eyelid.shape[1]):
        rows = np.flatnonzero(eyelid[:, col])
        if side == "bottom":
            rows = rows[::-1]
        columns.append(rows)
        hit = [k + 1 for k, r in enumerate(rows) if glands[r, col]]
        if hit:
            reach.append(max(hit) / len(rows))
            weight.append(len(rows))
    order = np.argsort(reach, kind="stable")
    cumulative = np.cumsum(np.asarray(weight, float)[order])
    extent = min(1.0, max(floor, np.asarray(reach)[order][np.searchsorted(cumulative, 0.6 * cumulative[-1])]))
    span = kept = 0
    for col, rows in enumerate(columns):
        for k, r in enumerate(rows, start=1):
            if (k - 0.5) / len(rows) < extent:
                span += 1
                kept += bool(closed[r, col])
    return 1 - kept / span


@pytest.mark.parametrize("side, floor", [("top", 0.5), ("bottom", 0.5), ("top", 0.3)])
def test_span_dropout_matches_a_naive_reference_on_a_curved_lid(side, floor):
    height, width = 120, 300
    yy, xx = np.mgrid[:height, :width]
    u = (xx - 150) / 130.0
    eyelid = (np.abs(u) <= 1) & (np.abs(yy - 60 - 15 * u ** 2) <= 35 * np.sqrt(np.clip(1 - u ** 6, 0, 1)))
    rng = np.random.default_rng(4)
    glands = np.zeros_like(eyelid)
    for x0 in range(30, 280, 13):
        if rng.random() < 0.8:
            glands[25:int(rng.integers(35, 80)), x0:x0 + 5] = True
    glands &= eyelid
    if side == "bottom":
        glands, eyelid = glands[::-1], eyelid[::-1]
    length = dropout_mod.round_half_up(0.06 * eyelid.any(axis=0).sum())
    expected = naive_span_dropout(glands, eyelid, side, floor, length)
    assert dropout_mod.dropout(glands, eyelid, margin_side=side, healthy_extent=floor) == pytest.approx(expected, abs=1e-12)
    assert dropout_mod.dropout(glands, eyelid, healthy_extent=floor) == pytest.approx(expected, abs=1e-12)  # auto


def test_dropout_settings_are_checked():
    eyelid = rectangle_lid()
    for bad in (dict(definition="volume"), dict(healthy_extent=0.0), dict(healthy_extent=1.5), dict(gap_fraction=1.0)):
        with pytest.raises(ValueError):
            dropout_mod.dropout(comb(eyelid), eyelid, **bad)


def test_dropout_without_eyelid_is_nan_and_the_scores_blank():
    glands = bar((50, 50), 5, 5, 30, 5)
    assert math.isnan(dropout_mod.dropout(glands, np.zeros_like(glands)))
    result = measures_mod.measure_image(glands)
    assert all(math.isnan(v) for v in (result.eyelid_area, result.gland_area_ratio, result.dropout))
    assert result.meiboscore is None and result.meibo_scale is None
    assert result.glands[0].reaches_margin is None and result.glands[0].margin_distance is None
    assert measures_mod.measure_image(glands, np.zeros_like(glands)).meiboscore is None


def reference_closing(mask, length):
    """The definition with scipy: closing on a zero-padded image, cropped back."""
    padded = np.pad(mask, ((0, 0), (length, length)))
    closed = ndi.binary_closing(padded, structure=np.ones((1, length), bool))
    return closed[:, length:-length]


@pytest.mark.parametrize("length", [1, 2, 5, 6, 11, 12])
def test_row_closing_matches_the_definition(length):
    rng = np.random.default_rng(length)
    mask = rng.random((30, 60)) < 0.3
    mask[:, 0] = True                                   # foreground on the image border
    closed = dropout_mod.close_rows(mask, length)
    np.testing.assert_array_equal(closed, reference_closing(mask, length))
    assert closed[:, 0].all()                           # no erosion at the border


def test_row_closing_fills_gaps_up_to_length_minus_one():
    row = np.zeros((1, 20), bool)
    row[0, [2, 7, 15]] = True                           # gaps of 4 and 7 pixels; open ends
    closed = dropout_mod.close_rows(row, 5)[0]
    assert closed[2:8].all() and not closed[8:15].any()
    assert not closed[:2].any() and not closed[16:].any()


def test_dropout_matches_the_definition_on_a_curved_lid():
    height, width = 120, 300
    yy, xx = np.mgrid[:height, :width]
    u = (xx - 150) / 130.0
    eyelid = (np.abs(u) <= 1) & (np.abs(yy - 60 - 15 * u ** 2) <= 35 * np.sqrt(np.clip(1 - u ** 6, 0, 1)))
    rng = np.random.default_rng(3)
    glands = np.zeros_like(eyelid)
    for x0 in range(30, 280, 13):
        if rng.random() < 0.8:
            glands[int(rng.integers(25, 60)):95, x0:x0 + 5] = True
    length = dropout_mod.round_half_up(0.06 * eyelid.any(axis=0).sum())
    expected = 1 - (eyelid & reference_closing(glands, length)).sum() / eyelid.sum()
    assert dropout_mod.dropout(glands, eyelid, definition="area") == pytest.approx(expected, abs=1e-12)


def test_reaches_margin_with_tolerance_and_side():
    eyelid = rectangle_lid()                             # edges: top row 20, bottom row 79
    glands = bar(eyelid.shape, 30, 40, 46, 5) | bar(eyelid.shape, 30, 100, 20, 5)   # end rows 75 and 49
    result = measures_mod.measure_image(glands, eyelid, margin_side="bottom", margin_tolerance=10)
    near, far = result.glands
    assert result.margin_side == "bottom"
    assert near.reaches_margin is True and near.margin_distance == pytest.approx(4.0)
    assert far.reaches_margin is False and far.margin_distance == pytest.approx(30.0)
    tight = measures_mod.measure_image(glands, eyelid, margin_side="bottom", margin_tolerance=3)
    assert tight.glands[0].reaches_margin is False
    top = measures_mod.measure_image(glands, eyelid, margin_side="top").glands
    assert [g.margin_distance for g in top] == [pytest.approx(10.0), pytest.approx(10.0)]


def test_auto_margin_side_is_the_edge_the_glands_crowd():
    eyelid = rectangle_lid()
    shortened = comb(eyelid, rows=(56, 80))              # attached to the bottom edge
    result = measures_mod.measure_image(shortened, eyelid)
    assert result.margin_side == "bottom" and all(g.reaches_margin for g in result.glands)
    flipped = measures_mod.measure_image(shortened[::-1], eyelid[::-1])
    assert flipped.margin_side == "top" and all(g.reaches_margin for g in flipped.glands)
    assert measures_mod.measure_image(shortened).margin_side is None
    with pytest.raises(ValueError):
        measures_mod.measure_image(shortened, eyelid, margin_side="left")


# ----------------------------------------------------------------------------- scores

@pytest.mark.parametrize("value, score, scale", [
    (0.0, 0, 0), (0.0499, 0, 0), (0.05, 1, 1), (0.25, 1, 1), (0.2501, 1, 2), (1 / 3 - 1e-9, 1, 2),
    (1 / 3, 2, 2), (0.5, 2, 2), (0.5001, 2, 3), (2 / 3, 2, 3), (2 / 3 + 1e-9, 3, 3), (0.75, 3, 3),
    (0.7501, 3, 4), (1.0, 3, 4), (math.nan, None, None),
])
def test_meiboscore_and_meibo_scale_boundaries(value, score, scale):
    assert dropout_mod.meiboscore(value) == score
    assert dropout_mod.meibo_scale(value) == scale


def hand_table_ratings():
    """A 3 x 3 table (rows: rater a, columns: rater b), 40 items."""
    table = np.array([[10, 2, 0], [3, 8, 2], [1, 2, 12]])
    a = [i for i in range(3) for j in range(3) for _ in range(table[i, j])]
    b = [j for i in range(3) for j in range(3) for _ in range(table[i, j])]
    return table, a, b


def test_confusion_matrix():
    table, a, b = hand_table_ratings()
    np.testing.assert_array_equal(agreement.confusion_matrix(a, b, [0, 1, 2]), table)
    np.testing.assert_array_equal(agreement.confusion_matrix(["x", "y"], ["y", "y"], ["x", "y"]), [[0, 1], [0, 1]])


def test_weighted_kappa_against_hand_computed_values():
    # Marginals: rows 12, 13, 15; columns 14, 12, 14; n = 40.
    # Unweighted: p_o = 30/40, p_e = (12*14 + 13*12 + 15*14)/1600 = 534/1600,
    #   kappa = 1 - (10/40) / (1066/1600) = 333/533.
    # Off-by-one cells observe 2+3+2+2 = 9 items, expect (144+182+182+180)/1600 = 688/1600;
    # off-by-two cells observe 0+1 = 1, expect (168+210)/1600 = 378/1600.
    # Linear (weights 1/2, 1): 1 - (4.5+1)/40 / ((344+378)/1600) = 1 - 220/722 = 251/361.
    # Quadratic (weights 1/4, 1): 1 - (2.25+1)/40 / ((172+378)/1600) = 1 - 130/550 = 42/55.
    _, a, b = hand_table_ratings()
    assert agreement.weighted_kappa(a, b, [0, 1, 2], None) == pytest.approx(333 / 533)
    assert agreement.weighted_kappa(a, b, [0, 1, 2], "linear") == pytest.approx(251 / 361)
    assert agreement.weighted_kappa(a, b, [0, 1, 2], "quadratic") == pytest.approx(42 / 55)
    assert agreement.weighted_kappa(b, a, [0, 1, 2], "quadratic") == pytest.approx(42 / 55)   # symmetric


def test_weighted_kappa_special_cases():
    assert agreement.weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], range(4)) == 1.0
    assert agreement.weighted_kappa([0, 1, 1, 0], [1, 0, 0, 1], [0, 1], None) == -1.0
    two = ([0, 1, 1, 0, 1], [0, 1, 0, 0, 1])         # with 2 categories all weightings agree
    unweighted = agreement.weighted_kappa(*two, [0, 1], None)
    assert agreement.weighted_kappa(*two, [0, 1], "linear") == pytest.approx(unweighted)
    assert agreement.weighted_kappa(*two, [0, 1], "quadratic") == pytest.approx(unweighted)
    assert math.isnan(agreement.weighted_kappa([2, 2], [2, 2], range(4)))      # no chance disagreement
    with pytest.raises(ValueError):
        agreement.weighted_kappa([0, 5], [0, 1], range(4))
    with pytest.raises(ValueError):
        agreement.weighted_kappa([], [], range(4))
    with pytest.raises(ValueError):
        agreement.weighted_kappa([0], [0], range(4), "cubic")


def test_agreement_table_pairs_by_name():
    true = [{"name": "a", "gland_count": 20, "gland_area_ratio": 0.30, "dropout": 0.10, "meiboscore": 1},
            {"name": "b", "gland_count": 15, "gland_area_ratio": 0.20, "dropout": 0.50, "meiboscore": 2},
            {"name": "c", "gland_count": 10, "gland_area_ratio": 0.10, "dropout": 0.80, "meiboscore": 3},
            {"name": "t_only", "gland_count": 1, "gland_area_ratio": 0.1, "dropout": 0.1, "meiboscore": 1}]
    pred = [{"name": "c", "gland_count": "12", "gland_area_ratio": "0.15", "dropout": "0.70",
             "meiboscore": "3"},
            {"name": "a", "gland_count": 18, "gland_area_ratio": 0.25, "dropout": 0.02, "meiboscore": 0},
            {"name": "b", "gland_count": 15, "gland_area_ratio": "", "dropout": "", "meiboscore": ""},
            {"name": "p_only", "gland_count": 1, "gland_area_ratio": 0.1, "dropout": 0.1, "meiboscore": 1}]
    rows, summary = agreement.agreement_table(pred, true)
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert [r["count_error"] for r in rows] == [-2, 0, 2]
    assert rows[0]["dropout_error"] == pytest.approx(-0.08) and math.isnan(rows[1]["dropout_error"])
    assert summary["n_images"] == 3 and summary["n_pred_only"] == 1 and summary["n_true_only"] == 1
    assert summary["count_mae"] == pytest.approx(4 / 3)
    assert summary["gland_area_ratio_mae"] == pytest.approx(0.05)
    assert summary["dropout_mae"] == pytest.approx((0.08 + 0.10) / 2)
    assert summary["n_meiboscore"] == 2 and summary["meiboscore_accuracy"] == 0.5
    assert summary["meiboscore_kappa"] == pytest.approx(agreement.weighted_kappa([0, 3], [1, 3], range(4)))
    with pytest.raises(ValueError):
        agreement.agreement_table(pred + pred[:1], true)


# ----------------------------------------------------------------------------- overlay

def test_overlay_draws_eyelid_centre_lines_and_ids():
    eyelid = rectangle_lid()
    glands = comb(eyelid, keep=lambda k: k in (2, 6))
    result = measures_mod.measure_image(glands, eyelid)
    image = np.full(eyelid.shape, 0.2, np.float32)
    picture = draw_gland_overlay(image, result.glands, eyelid)
    assert picture.shape == (*eyelid.shape, 3) and picture.dtype == np.uint8
    assert (picture[20, 100] == (255, 255, 0)).all()                 # eyelid outline
    row, col = np.round(result.glands[0].centre_line[len(result.glands[0].centre_line) // 2]).astype(int)
    near = picture[row, col - 1:col + 2].astype(int)
    assert (np.abs(near - LINE_COLOURS[True]).max(axis=1) < 60).any()     # centre line (anti-aliased)
    assert (picture.min(axis=2) > 200).any()                          # white id text
    plain = draw_gland_overlay((image * 255).astype(np.uint8), [])
    assert (plain == 51).all()


# ----------------------------------------------------------------------------- command line

def write_png(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


def read_csv(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_cli_end_to_end(tmp_path, capsys):
    eyelid = rectangle_lid()
    write_png(tmp_path / "masks" / "img1.png", comb(eyelid))                          # 13 glands
    write_png(tmp_path / "masks" / "img2.png", comb(eyelid, keep=lambda k: k < 5))    # 5 glands
    write_png(tmp_path / "eyelids" / "img1.png", eyelid)
    command.main([str(tmp_path / "masks"), "--eyelid-dir", str(tmp_path / "eyelids"), "--pixel-size", "0.5",
             "--no-progress"])
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and "2 masks: 18 glands" in out.out
    assert "img2" in out.err                                   # warned: no eyelid mask
    columns, glands = read_csv(tmp_path / "glands.csv")       # default: MASK_DIR's parent
    assert tuple(columns) == glands_mod.GLAND_COLUMNS and len(glands) == 18
    assert [g["gland_id"] for g in glands[:3]] == ["1", "2", "3"]
    assert float(glands[0]["area"]) == pytest.approx(6 * 60 * 0.25)
    assert glands[0]["reaches_margin"] == "1" and glands[-1]["reaches_margin"] == ""
    columns, images = read_csv(tmp_path / "images.csv")
    assert tuple(columns) == measures_mod.IMAGE_COLUMNS and [r["name"] for r in images] == ["img1", "img2"]
    assert images[0]["gland_count"] == "13" and images[0]["meiboscore"] == "0"
    assert float(images[0]["dropout"]) == pytest.approx(0.01)
    assert images[1]["dropout"] == images[1]["eyelid_area"] == images[1]["meiboscore"] == ""
    assert images[0]["margin_side"] == "top" and images[1]["margin_side"] == ""


def test_cli_output_folder_and_errors(tmp_path):
    write_png(tmp_path / "masks" / "a.png", bar((40, 40), 5, 5, 30, 5))
    command.main([str(tmp_path / "masks"), "--output", str(tmp_path / "out"), "--no-progress"])
    assert (tmp_path / "out" / "glands.csv").is_file() and (tmp_path / "out" / "images.csv").is_file()
    write_png(tmp_path / "eyelids" / "a.png", np.ones((40, 50), bool))
    with pytest.raises(InputError, match="must match"):
        command.main([str(tmp_path / "masks"), "--eyelid-dir", str(tmp_path / "eyelids"), "--no-progress"])
    with pytest.raises(InputError, match="does not exist"):
        command.main([str(tmp_path / "missing"), "--no-progress"])
    with pytest.raises(InputError, match="pixel-size"):
        command.main([str(tmp_path / "masks"), "--pixel-size", "0"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no masks"):
        command.main([str(tmp_path / "empty")])


def test_cli_help_and_one_line_errors():
    run = subprocess.run([sys.executable, "-m", "utils.gland_measures", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    for flag in ("--eyelid-dir", "--pixel-size", "--min-area", "--output", "--split-ratio", "--gap-fraction",
                 "--margin-side", "--margin-tolerance", "--no-progress", "--dropout-definition", "--healthy-extent",
                 "--calibrate", "--calibration", "--patient-regex", "--patient-csv", "--cv-folds", "--seed"):
        assert flag in run.stdout
    run = subprocess.run([sys.executable, "-m", "utils.gland_measures", "no/such/dir"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and run.stderr.startswith("error:")


def test_benchmark_runs_and_prints():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gland_measures.py"),
                          "--repeats", "1", "--height", "160", "--width", "320", "--glands", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "seconds per mask pair" in run.stdout and "glands found" in run.stdout


def test_dropout_of_generated_lids_matches_their_known_dropout(tmp_path):
    """The synthetic generator knows each lid's dropout by construction (removed and shortened
    glands, eyelid masks reaching well beyond the glands as on real lids); measured from its
    gland and eyelid masks it is within 5 points, at every grade."""
    generate_dataset(tmp_path, patients=8, images_per_patient=2, size=(256, 128), seed=5, progress=False,
                     grade_mix="even")
    with open(tmp_path / DROPOUT_CSV, newline="") as handle:
        truth = {row["name"]: float(row["dropout"]) for row in csv.DictReader(handle)}
    assert len(truth) == 16 and max(truth.values()) > 0.6 and min(truth.values()) < 0.05  # all grades seen
    for name, expected in truth.items():
        glands = cv2.imread(str(tmp_path / "Label" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        eyelid = cv2.imread(str(tmp_path / "Eyelid" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        assert measures_mod.measure_image(glands, eyelid).dropout == pytest.approx(expected, abs=0.05), name

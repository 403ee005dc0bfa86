"""Gland dropout of a lid from its gland and eyelid masks, and the clinical grades of dropout.

``G`` the gland mask, ``E`` the eyelid (tarsal plate) mask; ``closing(G)`` is the closing of
``G`` with a horizontal line of ``L = round_half_up(gap_fraction * eyelid width)`` pixels
(the eyelid width being the number of image columns holding any eyelid pixel): the glands
plus the gaps of at most ``L - 1`` pixels between neighbouring glands along a row. The
closing is computed on an image padded by ``L`` columns, so it neither erodes nor fills at
the image border. Two definitions (``definition``), both in [0, 1]:

* ``"span"`` (the default): the share of the lid's gland-bearing span where glands are
  missing. In every column, the eyelid pixels are ranked from the lid margin
  (:mod:`utils.clinical.eyelid`; ``k = 1 .. d``, ``d`` the column's eyelid pixel count).
  The span ``S`` is the eyelid pixels with ``(k - 1/2) / d < h``: the part of the tarsal
  plate, from the margin, that the glands of a healthy lid fill. ``h`` is the lid's
  *healthy extent*: the reach of its own longest glands, the 60th percentile (columns
  weighted by ``d``) over the columns holding gland pixels of ``k_max / d`` (``k_max`` the
  largest rank of a gland pixel in that column), but at least ``healthy_extent``
  (default 0.5) and at most 1. ``dropout = 1 - |closing(G) & S| / |S|``. Missing and
  shortened glands count; the far part of the plate that glands of a healthy lid never
  reach does not. The percentile is the 60th, not a higher one, because within a healthy
  gland the columns through its flanks and rounded tip reach less than its centre: a
  higher one overshoots a healthy lid's span (on the synthetic lids the 90th reads healthy
  lids 6 points too high, the 60th 2 points); the long glands set ``h`` as long as they
  hold 40 % of the gland columns. The floor keeps a lid whose glands are all shortened
  from reading as healthy (its span is then half the plate, and a uniformly shortened lid
  whose healthy glands would reach farther reads lower than its true dropout).
* ``"area"`` (the earlier definition): ``dropout = 1 - |closing(G) & E| / |E|``, the share
  of the whole eyelid mask that is not gland-bearing. It reads healthy lids as healthy
  only when the eyelid mask ends where the glands end.

Grades: Arita's meiboscore (0-3) and Pult's meibo-scale (0-4), from the dropout.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import cv2
import numpy as np

from skimage.measure import label

from utils.clinical.eyelid import eyelid_width, margin_distances, margin_ranks
from utils.clinical.glands import as_mask

DROPOUT_DEFINITIONS = ("span", "area")
DEFAULT_DROPOUT_DEFINITION = "span"
DEFAULT_GAP_FRACTION = 0.06
DEFAULT_HEALTHY_EXTENT = 0.5    # least share of the eyelid's extent, from the margin, that healthy glands fill
REACH_QUANTILE = 0.6            # the lid's own longest glands: this quantile of the columns' reach
NO_DROPOUT = 0.05               # dropout below this counts as none (score 0) in both scales
MEIBOSCORE_BOUNDS = (1 / 3, 2 / 3)          # Arita: score 1 below 1/3, 2 up to 2/3, 3 above
MEIBO_SCALE_BOUNDS = (0.25, 0.50, 0.75)     # Pult: grade 1 up to 25 %, 2 up to 50 %, 3 up to 75 %, 4 above


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (2.5 -> 3)."""
    return int(math.floor(x + 0.5))

def close_rows(mask: Any, length: int) -> np.ndarray:
    """Binary closing of ``mask [H, W]`` with a horizontal line of ``length`` pixels, on the
    mask padded by ``length`` background columns on both sides (no border effects):
    a background run of at most ``length - 1`` pixels between two foreground pixels of
    a row is filled. bool ``[H, W]``."""
    mask = as_mask(mask)
    if length <= 1:
        return mask.copy()
    padded = np.pad(mask, ((0, 0), (length, length))).astype(np.uint8)
    line = np.ones((1, length), dtype=np.uint8)
    anchor = length // 2
    # OpenCV does not reflect the kernel: eroding with the mirrored anchor makes dilate + erode
    # a true closing for even lengths too.
    dilated = cv2.dilate(padded, line, anchor=(anchor, 0))
    closed = cv2.erode(dilated, line, anchor=(length - 1 - anchor, 0))
    return closed[:, length:-length].astype(bool)

def gland_bearing_region(glands: Any, eyelid: Any, gap_fraction: float = DEFAULT_GAP_FRACTION) -> np.ndarray:
    """bool ``[H, W]``: ``E & closing(G)`` (module docstring)."""
    eyelid = as_mask(eyelid)
    length = round_half_up(gap_fraction * eyelid_width(eyelid))
    return eyelid & close_rows(glands, length)

def auto_margin_side(glands: Any, eyelid: Any) -> str:
    """The lid margin side of :func:`utils.clinical.eyelid.margin_distances` ("auto") with the
    8-connected components of ``glands`` as the glands; "top" without glands or eyelid."""
    side, _ = margin_distances(label(as_mask(glands), connectivity=2), eyelid, "auto")
    return side or "top"

def lid_healthy_extent(glands: Any, ranks: np.ndarray, depth: np.ndarray,
                       healthy_extent: float = DEFAULT_HEALTHY_EXTENT) -> float:
    """The lid's healthy extent ``h`` in [``healthy_extent``, 1] (module docstring): the
    :data:`REACH_QUANTILE` quantile of the columns' gland reach ``k_max / d``, columns
    weighted by ``d``. ``ranks``, ``depth``: :func:`utils.clinical.eyelid.margin_ranks`."""
    reach = np.where(as_mask(glands), ranks, 0).max(axis=0)
    columns = reach > 0
    if not columns.any():
        return float(healthy_extent)
    ratio, weight = reach[columns] / depth[columns], depth[columns].astype(np.float64)
    order = np.argsort(ratio, kind="stable")
    cumulative = np.cumsum(weight[order])
    quantile = ratio[order][np.searchsorted(cumulative, REACH_QUANTILE * cumulative[-1])]
    return float(min(1.0, max(healthy_extent, quantile)))

def expected_span(ranks: np.ndarray, depth: np.ndarray, extent: float) -> np.ndarray:
    """bool ``[H, W]``: the eyelid pixels with ``(k - 1/2) / d < extent`` (module docstring)."""
    return (ranks > 0) & (ranks - 0.5 < extent * depth[None, :])

def span_regions(glands: Any, eyelid: Any, gap_fraction: float = DEFAULT_GAP_FRACTION,
                 margin_side: str = "auto", healthy_extent: float = DEFAULT_HEALTHY_EXTENT
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """The span definition's ``(closing(G) & S, S, h)``: two bool ``[H, W]`` masks and the lid's
    healthy extent. ``margin_side``: "top", "bottom" or "auto" (:func:`auto_margin_side`)."""
    eyelid = as_mask(eyelid)
    side = auto_margin_side(glands, eyelid) if margin_side == "auto" else margin_side
    ranks, depth = margin_ranks(eyelid, side)
    extent = lid_healthy_extent(glands, ranks, depth, healthy_extent)
    span = expected_span(ranks, depth, extent)
    return gland_bearing_region(glands, eyelid, gap_fraction) & span, span, extent

def check_dropout_settings(definition: str, gap_fraction: float, healthy_extent: float) -> None:
    """ValueError for a definition other than :data:`DROPOUT_DEFINITIONS` or a fraction outside (0, 1]."""
    if definition not in DROPOUT_DEFINITIONS:
        raise ValueError(f"dropout definition must be one of {DROPOUT_DEFINITIONS}, got {definition!r}")
    if not 0 < gap_fraction < 1:
        raise ValueError(f"gap_fraction must be in (0, 1), got {gap_fraction}")
    if not 0 < healthy_extent <= 1:
        raise ValueError(f"healthy_extent must be in (0, 1], got {healthy_extent}")

def dropout_and_extent(glands: Any, eyelid: Any, gap_fraction: float = DEFAULT_GAP_FRACTION,
                       definition: str = DEFAULT_DROPOUT_DEFINITION, margin_side: str = "auto",
                       healthy_extent: float = DEFAULT_HEALTHY_EXTENT) -> tuple[float, float]:
    """``(dropout, h)`` (module docstring); ``h`` is NaN for the area definition, both NaN when
    the eyelid is empty."""
    check_dropout_settings(definition, gap_fraction, healthy_extent)
    eyelid = as_mask(eyelid)
    area = int(np.count_nonzero(eyelid))
    if area == 0:
        return math.nan, math.nan
    if definition == "area":
        kept = int(np.count_nonzero(gland_bearing_region(glands, eyelid, gap_fraction)))
        return 1.0 - kept / area, math.nan
    region, span, extent = span_regions(glands, eyelid, gap_fraction, margin_side, healthy_extent)
    return 1.0 - float(np.count_nonzero(region)) / float(np.count_nonzero(span)), extent

def dropout(glands: Any, eyelid: Any, gap_fraction: float = DEFAULT_GAP_FRACTION,
            definition: str = DEFAULT_DROPOUT_DEFINITION, margin_side: str = "auto",
            healthy_extent: float = DEFAULT_HEALTHY_EXTENT) -> float:
    """Dropout in [0, 1] by ``definition`` ("span" or "area", module docstring); NaN when the
    eyelid is empty."""
    return dropout_and_extent(glands, eyelid, gap_fraction, definition, margin_side, healthy_extent)[0]

def _grade(dropout_value: float, upper_bounds: Sequence[float], inclusive: Sequence[bool]) -> int | None:
    """0 below :data:`NO_DROPOUT`, else 1 + the number of ``upper_bounds`` passed (a value on
    a bound passes it unless that bound is ``inclusive``); None for NaN."""
    if dropout_value is None or not math.isfinite(dropout_value):
        return None
    if dropout_value < NO_DROPOUT:
        return 0
    for grade, (bound, closed) in enumerate(zip(upper_bounds, inclusive), start=1):
        if dropout_value < bound or (closed and dropout_value == bound):
            return grade
    return len(upper_bounds) + 1

def meiboscore(dropout_value: float) -> int | None:
    """Arita's meiboscore from dropout: 0 below 0.05 (none), 1 below 1/3, 2 up to 2/3
    (inclusive), 3 above; None for NaN."""
    return _grade(dropout_value, MEIBOSCORE_BOUNDS, (False, True))

def meibo_scale(dropout_value: float) -> int | None:
    """Pult's meibo-scale from dropout: 0 below 0.05 (none), 1 up to 0.25, 2 up to 0.50,
    3 up to 0.75 (each inclusive), 4 above; None for NaN."""
    return _grade(dropout_value, MEIBO_SCALE_BOUNDS, (True, True, True))

"""Gland dropout of a lid from its gland and eyelid masks, and the clinical grades of dropout.

With ``G`` the gland mask and ``E`` the eyelid mask: ``R = E & closing(G, horizontal line
of L pixels)`` with ``L = round_half_up(gap_fraction * eyelid width)``, the eyelid width
being the number of image columns holding any eyelid pixel; ``dropout = 1 - |R| / |E|``.
Glands plus the gaps of at most ``L - 1`` pixels between neighbouring glands along a row
count as gland-bearing; lid area where glands are missing or shortened is dropout. The
closing is computed on an image padded by ``L`` columns, so it neither erodes nor fills
at the image border.

Grades: Arita's meiboscore (0-3) and Pult's meibo-scale (0-4), from the dropout.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import cv2
import numpy as np

from utils.clinical.eyelid import eyelid_width
from utils.clinical.glands import as_mask

DEFAULT_GAP_FRACTION = 0.06
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
    """bool ``[H, W]``: ``R = E & closing(G, horizontal line of L px)`` (module docstring)."""
    eyelid = as_mask(eyelid)
    length = round_half_up(gap_fraction * eyelid_width(eyelid))
    return eyelid & close_rows(glands, length)

def dropout(glands: Any, eyelid: Any, gap_fraction: float = DEFAULT_GAP_FRACTION) -> float:
    """``1 - |R| / |E|`` in [0, 1] (:func:`gland_bearing_region`); NaN when the eyelid is empty."""
    eyelid = as_mask(eyelid)
    area = int(np.count_nonzero(eyelid))
    if area == 0:
        return math.nan
    return 1.0 - float(np.count_nonzero(gland_bearing_region(glands, eyelid, gap_fraction))) / area

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

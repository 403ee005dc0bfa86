"""The eyelid mask: its width, its lid margin, and each gland's distance to the margin.

The lid margin is the eyelid mask's edge on its margin side: in every column holding
eyelid pixels, the highest ("top") or lowest ("bottom") eyelid pixel. ``margin_side="auto"``
takes, per image, the edge nearer to the glands (the smaller median over glands of their
distance to it; "top" on a tie): glands start at the margin and shortened glands stay
attached to it, so the margin is the edge they crowd. Everted upper lids show the margin
on top in :mod:`utils.synthetic.realistic`, at the bottom in the simple style of
:mod:`utils.synthetic.simple`. A gland's ``margin_distance`` is the smallest distance of
its pixels to the margin; it ``reaches_margin`` when that is at most ``margin_tolerance``
pixels. Conventions: :mod:`utils.clinical.glands`.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from utils.clinical.glands import Gland, as_mask

DEFAULT_MARGIN_TOLERANCE = 10.0  # pixels
MARGIN_SIDES = ("top", "bottom")


def eyelid_width(eyelid: Any) -> int:
    """Number of image columns holding any eyelid pixel."""
    return int(as_mask(eyelid).any(axis=0).sum())

def margin_pixels(eyelid: Any, side: str) -> np.ndarray:
    """bool ``[H, W]``: in each column holding eyelid pixels, its highest ("top") or lowest
    ("bottom") eyelid pixel: the lid margin on that side."""
    if side not in MARGIN_SIDES:
        raise ValueError(f"margin side must be one of {MARGIN_SIDES}, got {side!r}")
    eyelid = as_mask(eyelid)
    columns = np.flatnonzero(eyelid.any(axis=0))
    flipped = eyelid[::-1] if side == "bottom" else eyelid
    rows = np.argmax(flipped[:, columns], axis=0)
    if side == "bottom":
        rows = eyelid.shape[0] - 1 - rows
    margin = np.zeros(eyelid.shape, dtype=bool)
    margin[rows, columns] = True
    return margin

def margin_ranks(eyelid: Any, side: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks, extent)``: ``ranks`` int32 ``[H, W]`` numbers the eyelid pixels of each column
    1 .. d from the lid margin on ``side`` ("top" or "bottom"), 0 off the eyelid; ``extent``
    int ``[W]`` is each column's eyelid pixel count d."""
    if side not in MARGIN_SIDES:
        raise ValueError(f"margin side must be one of {MARGIN_SIDES}, got {side!r}")
    eyelid = as_mask(eyelid)
    flipped = eyelid[::-1] if side == "bottom" else eyelid
    ranks = np.cumsum(flipped, axis=0, dtype=np.int32) * flipped
    return (ranks[::-1] if side == "bottom" else ranks), eyelid.sum(axis=0)

def margin_distance_map(eyelid: Any, side: str) -> np.ndarray | None:
    """float32 ``[H, W]`` Euclidean distance (pixels) to the nearest lid-margin pixel, or
    None when the eyelid mask is empty."""
    margin = margin_pixels(eyelid, side)
    if not margin.any():
        return None
    return cv2.distanceTransform((~margin).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)

def _nearest_per_gland(distance_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float ``[n]``: the smallest ``distance_map`` value over each gland 1..n of ``labels``."""
    inside = labels > 0
    nearest = np.full(int(labels.max()), np.inf)
    np.minimum.at(nearest, labels[inside] - 1, distance_map[inside])
    return nearest

def margin_distances(labels: np.ndarray, eyelid: Any,
                     side: str = "auto") -> tuple[str | None, np.ndarray | None]:
    """Smallest distance (pixels) of each gland 1..n of ``labels`` to the lid margin.

    ``side``: "top", "bottom" or "auto" (module docstring). Returns ``(side used,
    float [n])``, or ``(None, None)`` when the eyelid mask is empty.
    """
    if side not in MARGIN_SIDES + ("auto",):
        raise ValueError(f"margin side must be 'auto', 'top' or 'bottom', got {side!r}")
    found = {}
    for candidate in (MARGIN_SIDES if side == "auto" else (side,)):
        distance_map = margin_distance_map(eyelid, candidate)
        if distance_map is None:
            return None, None
        found[candidate] = _nearest_per_gland(distance_map, labels)
    if side == "auto":
        side = min(MARGIN_SIDES, key=lambda s: float(np.median(found[s])) if found[s].size else 0.0)
    return side, found[side]

def set_margin_fields(glands: Sequence[Gland], distances_px: np.ndarray, tolerance_px: float,
                      pixel_size: float = 1.0) -> None:
    """In place: ``margin_distance`` (px or mm) and ``reaches_margin`` (distance <=
    ``tolerance_px``) of each gland from :func:`margin_distances`' pixel distances."""
    for gland, distance in zip(glands, distances_px):
        gland.margin_distance = float(distance) * pixel_size
        gland.reaches_margin = bool(distance <= tolerance_px)

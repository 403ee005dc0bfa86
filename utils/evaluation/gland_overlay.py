"""Picture of the gland measures on an image: eyelid outline, centre lines and gland ids.

Colours are RGB (write the result with :func:`utils.evaluation.visualise.save_png`, which converts).
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from utils.clinical.glands import Gland, as_mask
from utils.evaluation.visualise import to_rgb

EYELID_COLOUR = (255, 255, 0)                   # yellow
LINE_COLOURS = {True: (0, 255, 0),              # reaches the lid margin: green
                False: (255, 128, 0),           # does not: orange
                None: (0, 200, 255)}            # unknown (no eyelid mask): light blue
TEXT_COLOUR = (255, 255, 255)
SHIFT = 4                                       # fractional bits of the cv2 drawing coordinates


def _sizes(height: int, width: int) -> tuple[int, float]:
    """Line thickness (pixels) and font scale for an image of this size."""
    side = min(height, width)
    return max(1, round(side / 300)), max(0.3, side / 900)


def _draw_eyelid(rgb: np.ndarray, eyelid: Any, thickness: int) -> None:
    mask = as_mask(eyelid)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"eyelid mask {mask.shape} does not match image {rgb.shape[:2]}")
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, EYELID_COLOUR, thickness)


def _draw_id(rgb: np.ndarray, gland: Gland, scale: float, thickness: int) -> None:
    """The gland's id just above its upper end, kept inside the image, outlined in black."""
    text = str(gland.gland_id)
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    row, col = gland.ends[0]
    x = int(np.clip(round(col - text_w / 2), 0, max(rgb.shape[1] - text_w, 0)))
    y = int(np.clip(round(row - 3 * thickness), text_h, rgb.shape[0] - 1))
    cv2.putText(rgb, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(rgb, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)


def draw_gland_overlay(image: Any, glands: Sequence[Gland], eyelid: Any | None = None) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``: ``image`` (gray or RGB ``[H, W(, 3)]``, float in [0, 1] or
    uint8) with the eyelid mask's outline (yellow), every gland's centre line (green:
    reaches the lid margin, orange: does not, light blue: unknown) and its id number.

    ``glands``: :class:`utils.clinical.glands.Gland` list (e.g. ``measure_image(...).glands``)
    in the image's pixel coordinates.
    """
    rgb = np.ascontiguousarray(np.round(to_rgb(image) * 255.0).astype(np.uint8))
    thickness, scale = _sizes(*rgb.shape[:2])
    if eyelid is not None:
        _draw_eyelid(rgb, eyelid, thickness)
    for gland in glands:
        points = np.round(gland.centre_line[:, ::-1] * (1 << SHIFT)).astype(np.int32)  # (x, y)
        cv2.polylines(rgb, [points], False, LINE_COLOURS[gland.reaches_margin], thickness, cv2.LINE_AA,
                      shift=SHIFT)
    for gland in glands:
        _draw_id(rgb, gland, scale, thickness)
    return rgb

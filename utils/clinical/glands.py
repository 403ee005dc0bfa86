"""Glands in a gland mask: splitting touching glands, and each gland's shape measures.

Conventions (all of :mod:`utils.clinical`). Masks are 2-D arrays ``[H, W]`` (bool, 0/1 or
0/255; non-zero = foreground). The eyelid lies roughly horizontally: rows run along the lid
margin and glands run roughly vertically. Coordinates are ``(row, col)`` in pixels. With a
``pixel_size`` (mm per pixel) lengths are in mm and areas in mm^2, else in pixels; ratios
are unitless; coordinates (centroid, end points) stay in pixels.

Glands (:func:`split_glands`). A gland is an 8-connected component of the gland mask of
at least ``min_area`` pixels, split where two glands touch through a neck:

* ``d`` = Euclidean distance of each gland pixel to the nearest background pixel
  (outside the image counts as background; holes inside a gland are filled first, so
  the thin walls around a hole are no necks, and stay unlabelled afterwards);
* markers = the regional maxima of ``log d`` with a dynamic of at least
  ``log(1 / split_ratio)`` (h-maxima: reconstruction of ``log d - h`` under ``log d``,
  then its regional maxima), so a component is split when a neck's half-width is at
  most ``split_ratio`` times the ridge half-width of each of the two parts it joins
  (default 0.5: a neck at most half as wide as the narrower gland). A gland whose
  width stays about constant, however tortuous, has one marker and is not split;
  glands fused over more than about their width, or joined in a Y, are not split
  either (their distance map has one maximum);
* the pieces are a watershed of ``-d`` from the markers inside the component; a piece
  smaller than ``min_area`` is merged into its neighbours (a second watershed from the
  remaining pieces). ``split_ratio = 0`` turns splitting off.

Glands are numbered 1..n from left to right by centroid column.

Per gland (:class:`Gland`, ``glands.csv``): ``area``; ``length`` = length of the centre
line (:mod:`utils.clinical.skeleton`: the longest skeleton path, smoothed, extended to the
mask edge at both ends); ``mean_width = area / length``; ``tortuosity = length /
distance between the centre line's end points`` (>= 1, 1 for a straight gland);
``orientation`` = angle in degrees of the end-to-end direction from the vertical, in
(-90, 90]: 0 = perpendicular to a horizontal lid, positive when the lower end lies to
the right of the upper end; ``margin_distance`` and ``reaches_margin``: see
:mod:`utils.clinical.eyelid` (both None without an eyelid mask).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from skimage.measure import label, regionprops
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import relabel_sequential, watershed

from utils.clinical.skeleton import centre_line, fill_holes, polyline_length

DEFAULT_MIN_AREA = 20           # pixels
DEFAULT_SPLIT_RATIO = 0.5
GLAND_COLUMNS = ("name", "gland_id", "area", "length", "mean_width", "tortuosity", "orientation",
                 "reaches_margin", "margin_distance", "centroid_row", "centroid_col",
                 "end1_row", "end1_col", "end2_row", "end2_col")


def as_mask(mask: Any) -> np.ndarray:
    """Any 2-D array -> bool ``[H, W]`` (non-zero = foreground); ValueError if not 2-D."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {mask.shape}")
    return mask != 0

def inside_distance(mask: np.ndarray) -> np.ndarray:
    """float32 ``[H, W]``: Euclidean distance of each foreground pixel to the nearest
    background pixel, outside the image counting as background (0 on the background)."""
    padded = np.pad(as_mask(mask), 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]

def _split_markers(component: np.ndarray, distance: np.ndarray, split_ratio: float) -> np.ndarray:
    """Watershed markers of one component (the h-maxima of ``log d``), int labels."""
    h = math.log(1.0 / split_ratio)
    log_d = np.where(component, np.log(np.maximum(distance, 1.0)), -h - 1.0)
    domes = reconstruction(log_d - h, log_d, method="dilation")
    return label(local_maxima(domes, connectivity=2) & component, connectivity=2)

def _absorb_small(pieces: np.ndarray, component: np.ndarray, distance: np.ndarray,
                  min_area: int) -> np.ndarray:
    """Merge pieces of fewer than ``min_area`` pixels into their neighbours."""
    areas = np.bincount(pieces.ravel())
    small = areas < min_area
    small[0] = False
    if not small.any():
        return pieces
    kept = np.where(small[pieces], 0, pieces)
    if not kept.any():
        return component.astype(np.int32)
    grown = watershed(-distance, kept, mask=component, connectivity=2)
    return relabel_sequential(grown)[0]

def split_component(component: np.ndarray, distance: np.ndarray, min_area: int = DEFAULT_MIN_AREA,
                    split_ratio: float = DEFAULT_SPLIT_RATIO) -> np.ndarray:
    """Split one connected component at its necks (rule in the module docstring).

    ``component``: bool ``[h, w]`` (a crop with a background border); ``distance``: its
    :func:`inside_distance` values, same shape. Returns int ``[h, w]``: 0 outside,
    1..k the pieces.
    """
    if split_ratio <= 0:
        return component.astype(np.int32)
    markers = _split_markers(component, distance, split_ratio)
    if markers.max() <= 1:
        return component.astype(np.int32)
    pieces = watershed(-distance, markers, mask=component, connectivity=2)
    return _absorb_small(pieces, component, distance, min_area)

def _check_split_args(min_area: int, split_ratio: float) -> None:
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1 pixel, got {min_area}")
    if not 0 <= split_ratio < 1:
        raise ValueError(f"split_ratio must be in [0, 1), got {split_ratio}")

def split_glands(mask: Any, min_area: int = DEFAULT_MIN_AREA,
                 split_ratio: float = DEFAULT_SPLIT_RATIO) -> np.ndarray:
    """Gland mask ``[H, W]`` -> int32 label image ``[H, W]``: 0 = no gland, 1..n = glands
    numbered left to right by centroid column.

    Components (8-connected) smaller than ``min_area`` pixels (holes filled) are dropped;
    the others are split at necks (module docstring), holes filled, so that the thin
    walls around a hole are no necks; the holes stay unlabelled.
    """
    _check_split_args(min_area, split_ratio)
    mask = as_mask(mask)
    filled = fill_holes(mask)
    distance = inside_distance(filled)
    components = label(filled, connectivity=2)
    found = []  # (centroid col, centroid row, rows, cols) of each piece
    for region in regionprops(components):
        if region.area < min_area:
            continue
        top, left = region.bbox[0] - 1, region.bbox[1] - 1
        component = np.pad(region.image, 1)
        crop = np.pad(distance[region.slice], 1)
        pieces = split_component(component, crop, min_area, split_ratio)
        pieces *= np.pad(mask[region.slice], 1)        # the filled holes are no gland
        for piece in range(1, int(pieces.max()) + 1):
            rows, cols = np.nonzero(pieces == piece)
            if rows.size:
                found.append((cols.mean() + left, rows.mean() + top, rows + top, cols + left))
    labels = np.zeros(mask.shape, dtype=np.int32)
    for number, (_, _, rows, cols) in enumerate(sorted(found, key=lambda f: (f[0], f[1])), start=1):
        labels[rows, cols] = number
    return labels

@dataclass
class Gland:
    """One gland's measures. ``area`` in px^2 or mm^2; ``length``, ``mean_width``,
    ``margin_distance`` in px or mm; ``centroid``, ``ends`` and ``centre_line`` (float
    ``[K, 2]``) in pixel (row, col); ``ends[0]`` is the upper end."""

    gland_id: int
    area: float
    length: float
    mean_width: float
    tortuosity: float
    orientation: float
    reaches_margin: bool | None
    margin_distance: float | None
    centroid: tuple[float, float]
    ends: tuple[tuple[float, float], tuple[float, float]]
    centre_line: np.ndarray = field(repr=False)

    def row(self, name: str) -> dict[str, Any]:
        """The ``glands.csv`` row (keys :data:`GLAND_COLUMNS`)."""
        (r1, c1), (r2, c2) = self.ends
        return {"name": name, "gland_id": self.gland_id, "area": self.area, "length": self.length,
                "mean_width": self.mean_width, "tortuosity": self.tortuosity,
                "orientation": self.orientation, "reaches_margin": self.reaches_margin,
                "margin_distance": self.margin_distance, "centroid_row": self.centroid[0],
                "centroid_col": self.centroid[1], "end1_row": r1, "end1_col": c1,
                "end2_row": r2, "end2_col": c2}

def orientation_degrees(end1: np.ndarray, end2: np.ndarray) -> float:
    """Angle of the segment end1-end2 from the vertical, degrees in (-90, 90]; positive when
    the lower end (larger row) lies to the right (larger col) of the upper end."""
    d_row, d_col = np.asarray(end2, dtype=float) - np.asarray(end1, dtype=float)
    if d_row < 0 or (d_row == 0 and d_col < 0):
        d_row, d_col = -d_row, -d_col
    return float(np.degrees(np.arctan2(d_col, d_row)))

def _upper_first(line: np.ndarray) -> np.ndarray:
    """Reverse a (row, col) polyline if needed so that it starts at its upper (then left) end."""
    return line[::-1] if (line[0, 0], line[0, 1]) > (line[-1, 0], line[-1, 1]) else line

def measure_gland(gland_id: int, region_image: np.ndarray, offset: tuple[int, int], area_px: int,
                  centroid: tuple[float, float], pixel_size: float = 1.0) -> Gland:
    """Shape measures of one gland (margin fields None; :func:`measure_image` sets them).

    ``region_image``: bool crop ``[h, w]`` of the gland; ``offset``: (row, col) of the
    crop's top-left pixel in the image; ``centroid`` in image pixels.
    """
    line = _upper_first(centre_line(region_image) + np.asarray(offset, dtype=float))
    length_px = polyline_length(line)
    chord = float(np.hypot(*(line[-1] - line[0])))
    return Gland(gland_id=gland_id, area=area_px * pixel_size ** 2, length=length_px * pixel_size,
                 mean_width=area_px / length_px * pixel_size if length_px > 0 else math.nan,
                 tortuosity=length_px / chord if chord > 0 else math.nan,
                 orientation=orientation_degrees(line[0], line[-1]),
                 reaches_margin=None, margin_distance=None, centroid=(float(centroid[0]), float(centroid[1])),
                 ends=((float(line[0, 0]), float(line[0, 1])), (float(line[-1, 0]), float(line[-1, 1]))),
                 centre_line=line)

def measure_glands(labels: np.ndarray, pixel_size: float = 1.0) -> list[Gland]:
    """Shape measures of every gland of a label image (:func:`split_glands`), ordered by id;
    the margin fields are None."""
    return [measure_gland(region.label, region.image, region.bbox[:2], int(region.area), region.centroid,
                          pixel_size) for region in regionprops(labels)]

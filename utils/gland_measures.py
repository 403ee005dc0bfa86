"""Clinical measures from gland and eyelid masks, agreement statistics, and their command line.

    python -m utils.gland_measures MASK_DIR [--eyelid-dir DIR] [--pixel-size MM] [--min-area PX]
                                   [--output OUT_DIR] [--no-progress] ...

Conventions. Masks are 2-D arrays ``[H, W]`` (bool, 0/1 or 0/255; non-zero = foreground).
The eyelid lies roughly horizontally: rows run along the lid margin and glands run
roughly vertically. Coordinates are ``(row, col)`` in pixels. With a ``pixel_size`` (mm
per pixel) lengths are in mm and areas in mm^2, else in pixels; ratios are unitless;
coordinates (centroid, end points) stay in pixels.

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
line (:mod:`utils.gland_skeleton`: the longest skeleton path, smoothed, extended to the
mask edge at both ends); ``mean_width = area / length``; ``tortuosity = length /
distance between the centre line's end points`` (>= 1, 1 for a straight gland);
``orientation`` = angle in degrees of the end-to-end direction from the vertical, in
(-90, 90]: 0 = perpendicular to a horizontal lid, positive when the lower end lies to
the right of the upper end; ``margin_distance`` = smallest distance from a gland pixel
to the lid margin and ``reaches_margin`` = whether it is at most ``margin_tolerance``
pixels (both None without an eyelid mask). The lid margin is the eyelid mask's edge on its
margin side: in every column holding eyelid pixels, the highest ("top") or lowest
("bottom") eyelid pixel. ``margin_side="auto"`` (default) takes, per image, the edge
nearer to the glands (the smaller median over glands of their distance to it; "top"
on a tie): glands start at the margin and shortened glands stay attached to it, so
the margin is the edge they crowd. Everted upper lids show the margin on top in
utils.demo_realistic, at the bottom in utils.make_demo_data's simple style.

Per image (:class:`ImageMeasures`, ``images.csv``), with ``G`` the gland mask as given
and ``E`` the eyelid mask: ``gland_count`` and the medians of the per-gland measures
use the glands above; ``gland_area = |G|``; ``eyelid_area = |E|``; ``gland_area_ratio =
|G & E| / |E|`` (Saha et al. 2022); ``dropout`` (:func:`dropout`); ``meiboscore`` and
``meibo_scale`` (:func:`meiboscore`, :func:`meibo_scale`). Without an eyelid mask (or
with an empty one) the eyelid-dependent values are NaN (floats) or None (scores).

Dropout: ``R = E & closing(G, horizontal line of L pixels)`` with ``L =
round_half_up(gap_fraction * eyelid width)``, the eyelid width being the number of
image columns holding any eyelid pixel; ``dropout = 1 - |R| / |E|``. Glands plus the
gaps of at most ``L - 1`` pixels between neighbouring glands along a row count as
gland-bearing; lid area where glands are missing or shortened is dropout. The closing
is computed on an image padded by ``L`` columns, so it neither erodes nor fills at the
image border.

Agreement of these measures between predicted and true masks (or clinicians' grades)
is :mod:`utils.agreement`.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from skimage.measure import label, regionprops
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import relabel_sequential, watershed
from tqdm import tqdm

from dataloaders.dataset import LABEL_EXTS, read_label
from utils.cli import OneLineErrorParser
from utils.errors import InputError, run_cli
from utils.files import write_csv
from utils.gland_skeleton import centre_line, fill_holes, polyline_length

DEFAULT_MIN_AREA = 20           # pixels
DEFAULT_SPLIT_RATIO = 0.5
DEFAULT_GAP_FRACTION = 0.06
DEFAULT_MARGIN_TOLERANCE = 10.0  # pixels
MARGIN_SIDES = ("top", "bottom")
NO_DROPOUT = 0.05               # dropout below this counts as none (score 0) in both scales
MEIBOSCORE_BOUNDS = (1 / 3, 2 / 3)          # Arita: score 1 below 1/3, 2 up to 2/3, 3 above
MEIBO_SCALE_BOUNDS = (0.25, 0.50, 0.75)     # Pult: grade 1 up to 25 %, 2 up to 50 %, 3 up to 75 %, 4 above

GLAND_COLUMNS = ("name", "gland_id", "area", "length", "mean_width", "tortuosity", "orientation",
                 "reaches_margin", "margin_distance", "centroid_row", "centroid_col",
                 "end1_row", "end1_col", "end2_row", "end2_col")
IMAGE_COLUMNS = ("name", "gland_count", "gland_area", "eyelid_area", "gland_area_ratio", "dropout",
                 "meiboscore", "meibo_scale", "median_length", "median_width", "median_tortuosity",
                 "margin_side")


# ----------------------------------------------------------------------------- masks and glands

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


# ----------------------------------------------------------------------------- eyelid margin

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


# ----------------------------------------------------------------------------- per gland

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


def set_margin_fields(glands: Sequence[Gland], distances_px: np.ndarray, tolerance_px: float,
                      pixel_size: float = 1.0) -> None:
    """In place: ``margin_distance`` (px or mm) and ``reaches_margin`` (distance <=
    ``tolerance_px``) of each gland from :func:`margin_distances`' pixel distances."""
    for gland, distance in zip(glands, distances_px):
        gland.margin_distance = float(distance) * pixel_size
        gland.reaches_margin = bool(distance <= tolerance_px)


# ----------------------------------------------------------------------------- per image

def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (2.5 -> 3)."""
    return int(math.floor(x + 0.5))


def eyelid_width(eyelid: Any) -> int:
    """Number of image columns holding any eyelid pixel."""
    return int(as_mask(eyelid).any(axis=0).sum())


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


@dataclass
class ImageMeasures:
    """Per-image measures (units as :class:`Gland`), the glands and their label image
    (int32 ``[H, W]``). Eyelid-dependent floats are NaN, scores and ``margin_side`` (the
    lid edge used as the margin) None without an eyelid."""

    gland_count: int
    gland_area: float
    eyelid_area: float
    gland_area_ratio: float
    dropout: float
    meiboscore: int | None
    meibo_scale: int | None
    median_length: float
    median_width: float
    median_tortuosity: float
    margin_side: str | None
    glands: list[Gland] = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def row(self, name: str) -> dict[str, Any]:
        """The ``images.csv`` row (keys :data:`IMAGE_COLUMNS`)."""
        return {"name": name, **{key: getattr(self, key) for key in IMAGE_COLUMNS[1:]}}


def _median(values: Iterable[float]) -> float:
    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    return float(np.median(values)) if values.size else math.nan


def _eyelid_values(glands: np.ndarray, eyelid: np.ndarray | None, pixel_size: float,
                   gap_fraction: float) -> tuple[float, float, float]:
    """(eyelid_area, gland_area_ratio, dropout); NaN for a missing or empty eyelid."""
    if eyelid is None or not eyelid.any():
        return math.nan, math.nan, math.nan
    area = int(np.count_nonzero(eyelid))
    ratio = np.count_nonzero(glands & eyelid) / area
    return float(area) * pixel_size ** 2, float(ratio), dropout(glands, eyelid, gap_fraction)


def measure_image(gland_mask: Any, eyelid_mask: Any | None = None, *, pixel_size: float = 1.0,
                  min_area: int = DEFAULT_MIN_AREA, split_ratio: float = DEFAULT_SPLIT_RATIO,
                  gap_fraction: float = DEFAULT_GAP_FRACTION, margin_side: str = "auto",
                  margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE) -> ImageMeasures:
    """All measures of one image (module docstring).

    ``gland_mask``, ``eyelid_mask``: ``[H, W]`` masks of one shape (eyelid optional);
    ``pixel_size``: mm per pixel (1 = pixel units); ``min_area`` and
    ``margin_tolerance``: pixels at the masks' resolution.
    """
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    if not 0 < gap_fraction < 1:
        raise ValueError(f"gap_fraction must be in (0, 1), got {gap_fraction}")
    if margin_side not in ("auto",) + MARGIN_SIDES:
        raise ValueError(f"margin_side must be 'auto', 'top' or 'bottom', got {margin_side!r}")
    glands = as_mask(gland_mask)
    eyelid = None if eyelid_mask is None else as_mask(eyelid_mask)
    if eyelid is not None and eyelid.shape != glands.shape:
        raise ValueError(f"gland mask {glands.shape} and eyelid mask {eyelid.shape} differ in shape")
    labels = split_glands(glands, min_area, split_ratio)
    found = measure_glands(labels, pixel_size)
    side, distances = (None, None) if eyelid is None else margin_distances(labels, eyelid, margin_side)
    if distances is not None:
        set_margin_fields(found, distances, margin_tolerance, pixel_size)
    eyelid_area, ratio, lost = _eyelid_values(glands, eyelid, pixel_size, gap_fraction)
    return ImageMeasures(
        gland_count=len(found), gland_area=float(np.count_nonzero(glands)) * pixel_size ** 2,
        eyelid_area=eyelid_area, gland_area_ratio=ratio, dropout=lost,
        meiboscore=meiboscore(lost), meibo_scale=meibo_scale(lost),
        median_length=_median(g.length for g in found), median_width=_median(g.mean_width for g in found),
        median_tortuosity=_median(g.tortuosity for g in found), margin_side=side, glands=found,
        labels=labels)


# ----------------------------------------------------------------------------- folders and CSV

def mask_files(folder: Path, what: str) -> dict[str, Path]:
    """``{stem: path}`` of the mask files (png) of a folder, sorted by name."""
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in LABEL_EXTS:
            if path.stem in files:
                raise InputError(f"{folder}: two masks named '{path.stem}' ({files[path.stem].name}, "
                                 f"{path.name}); keep one")
            files[path.stem] = path
    return files


def _read_pair(gland_path: Path, eyelid_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    glands = read_label(gland_path)
    if eyelid_path is None:
        return glands, None
    eyelid = read_label(eyelid_path)
    if eyelid.shape != glands.shape:
        raise InputError(f"{eyelid_path}: eyelid mask is {eyelid.shape[1]}x{eyelid.shape[0]} but gland mask "
                         f"{gland_path.name} is {glands.shape[1]}x{glands.shape[0]} (W x H); they must match")
    return glands, eyelid


def measure_folder(mask_dir: Path, eyelid_dir: Path | None = None, progress: bool = True,
                   **settings: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Measure every png mask of ``mask_dir`` (eyelid masks matched by stem in ``eyelid_dir``).

    ``settings``: keyword arguments of :func:`measure_image`. Returns ``(image_rows,
    gland_rows, no_eyelid)``, the last the names without an eyelid mask (when
    ``eyelid_dir`` is given).
    """
    masks = mask_files(mask_dir, "mask")
    if not masks:
        raise InputError(f"{mask_dir} holds no masks ({', '.join(LABEL_EXTS)})")
    eyelids = mask_files(eyelid_dir, "eyelid") if eyelid_dir is not None else {}
    image_rows, gland_rows, no_eyelid = [], [], []
    for name, path in tqdm(masks.items(), desc="gland measures", unit="mask", disable=not progress):
        if eyelid_dir is not None and name not in eyelids:
            no_eyelid.append(name)
        glands, eyelid = _read_pair(path, eyelids.get(name))
        result = measure_image(glands, eyelid, **settings)
        image_rows.append(result.row(name))
        gland_rows.extend(gland.row(name) for gland in result.glands)
    return image_rows, gland_rows, no_eyelid


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.gland_measures",
        description="Clinical measures of every gland mask (png) in MASK_DIR: one row per gland in "
                    "glands.csv, one row per image in images.csv (columns: README.md, section "
                    "'Clinical measures from masks').")
    parser.add_argument("mask_dir", metavar="MASK_DIR", help="folder of gland masks (png, 0/255 or 0/1)")
    parser.add_argument("--eyelid-dir", metavar="DIR", default=None,
                        help="folder of eyelid masks with the same file names; without it (or for a "
                             "mask without an eyelid mask) the eyelid columns are blank")
    parser.add_argument("--output", metavar="OUT_DIR", default=None,
                        help="where glands.csv and images.csv go (default: MASK_DIR's parent folder, "
                             "e.g. predictions/ for predictions/masks/)")
    parser.add_argument("--pixel-size", metavar="MM", type=float, default=None,
                        help="mm per pixel: lengths in mm, areas in mm^2 (default: pixels)")
    parser.add_argument("--min-area", metavar="PX", type=int, default=DEFAULT_MIN_AREA,
                        help=f"smallest gland in pixels; smaller components are ignored "
                             f"(default {DEFAULT_MIN_AREA})")
    parser.add_argument("--split-ratio", metavar="R", type=float, default=DEFAULT_SPLIT_RATIO,
                        help="split touching glands where a neck is at most R times as wide as the "
                             f"narrower gland; 0 = never split (default {DEFAULT_SPLIT_RATIO})")
    parser.add_argument("--gap-fraction", metavar="F", type=float, default=DEFAULT_GAP_FRACTION,
                        help="dropout: gaps between glands up to F x eyelid width count as "
                             f"gland-bearing (default {DEFAULT_GAP_FRACTION})")
    parser.add_argument("--margin-side", choices=("auto",) + MARGIN_SIDES, default="auto",
                        help="edge of the eyelid mask that is the lid margin; auto = per image the edge "
                             "nearer to the glands (default auto)")
    parser.add_argument("--margin-tolerance", metavar="PX", type=float, default=DEFAULT_MARGIN_TOLERANCE,
                        help="a gland reaches the margin when it comes this close, in pixels "
                             f"(default {DEFAULT_MARGIN_TOLERANCE:g})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError(f"--pixel-size must be > 0 (mm per pixel), got {args.pixel_size}")
    if args.min_area < 1:
        raise InputError(f"--min-area must be >= 1 pixel, got {args.min_area}")
    if not 0 <= args.split_ratio < 1:
        raise InputError(f"--split-ratio must be in [0, 1), got {args.split_ratio}")
    if not 0 < args.gap_fraction < 1:
        raise InputError(f"--gap-fraction must be in (0, 1), got {args.gap_fraction}")
    if not args.margin_tolerance >= 0:
        raise InputError(f"--margin-tolerance must be >= 0, got {args.margin_tolerance}")


def _summary_line(image_rows: list[dict[str, Any]], gland_rows: list[dict[str, Any]], out_dir: Path,
                  unit: str) -> str:
    counts = [row["gland_count"] for row in image_rows]
    dropouts = [row["dropout"] for row in image_rows if math.isfinite(row["dropout"])]
    lost = f"mean dropout {np.mean(dropouts):.3f} over {len(dropouts)}" if dropouts else "no eyelid masks"
    return (f"{len(image_rows)} masks: {len(gland_rows)} glands (median {np.median(counts):g} per image), "
            f"{lost}; lengths in {unit}; wrote {out_dir / 'glands.csv'} and {out_dir / 'images.csv'}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _check_args(args)
    mask_dir = Path(args.mask_dir)
    out_dir = Path(args.output) if args.output is not None else mask_dir.resolve().parent
    image_rows, gland_rows, no_eyelid = measure_folder(
        mask_dir, Path(args.eyelid_dir) if args.eyelid_dir is not None else None, not args.no_progress,
        pixel_size=args.pixel_size or 1.0, min_area=args.min_area, split_ratio=args.split_ratio,
        gap_fraction=args.gap_fraction, margin_side=args.margin_side, margin_tolerance=args.margin_tolerance)
    if no_eyelid:
        shown = ", ".join(no_eyelid[:5]) + (f" and {len(no_eyelid) - 5} more" if len(no_eyelid) > 5 else "")
        print(f"warning: no eyelid mask for {shown}; their eyelid columns are blank", file=sys.stderr)
    write_csv(out_dir / "glands.csv", gland_rows, GLAND_COLUMNS)
    write_csv(out_dir / "images.csv", image_rows, IMAGE_COLUMNS)
    print(_summary_line(image_rows, gland_rows, out_dir, "mm" if args.pixel_size else "pixels"))


if __name__ == "__main__":
    run_cli(main)

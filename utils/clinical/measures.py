"""All clinical measures of one image, and of a folder of masks.

Per image (:class:`ImageMeasures`, ``images.csv``), with ``G`` the gland mask as given
and ``E`` the eyelid mask: ``gland_count`` and the medians of the per-gland measures
use the glands of :mod:`utils.clinical.glands`; ``gland_area = |G|``; ``eyelid_area =
|E|``; ``gland_area_ratio = |G & E| / |E|`` (Saha et al. 2022); ``dropout`` (by the chosen
definition), ``healthy_extent`` (the lid's ``h`` of the span definition), ``meiboscore`` and
``meibo_scale`` (:mod:`utils.clinical.dropout`); ``margin_side`` (the lid edge used as the
margin, :mod:`utils.clinical.eyelid`, also the dropout's); ``share_reaching_margin`` (the
share of the glands that reach the margin). Without an eyelid mask (or
with an empty one) the eyelid-dependent values are NaN (floats) or None (scores).

The command ``python -m utils.gland_measures`` measures a folder; agreement of these
measures between predicted and true masks (or clinicians' grades) is
:mod:`utils.clinical.agreement`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from dataloaders.dataset import LABEL_EXTS, read_label
from utils.clinical.dropout import (DEFAULT_DROPOUT_DEFINITION, DEFAULT_GAP_FRACTION, DEFAULT_HEALTHY_EXTENT,
                                    check_dropout_settings, dropout_and_extent, meibo_scale, meiboscore)
from utils.clinical.eyelid import DEFAULT_MARGIN_TOLERANCE, MARGIN_SIDES, margin_distances, set_margin_fields
from utils.clinical.glands import (DEFAULT_MIN_AREA, DEFAULT_SPLIT_RATIO, Gland, as_mask, measure_glands,
                                   split_glands)
from utils.errors import InputError

IMAGE_COLUMNS = ("name", "gland_count", "gland_area", "eyelid_area", "gland_area_ratio", "dropout",
                 "healthy_extent", "meiboscore", "meibo_scale", "median_length", "median_width",
                 "median_tortuosity", "share_reaching_margin", "margin_side")


def default_settings(pixel_size: float = 1.0) -> dict[str, Any]:
    """The keyword arguments of :func:`measure_image` at their defaults (what a calibration
    records and checks), with ``pixel_size``."""
    return {"pixel_size": pixel_size, "min_area": DEFAULT_MIN_AREA, "split_ratio": DEFAULT_SPLIT_RATIO,
            "gap_fraction": DEFAULT_GAP_FRACTION, "margin_side": "auto", "margin_tolerance": DEFAULT_MARGIN_TOLERANCE,
            "dropout_definition": DEFAULT_DROPOUT_DEFINITION, "healthy_extent": DEFAULT_HEALTHY_EXTENT}


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
    healthy_extent: float
    meiboscore: int | None
    meibo_scale: int | None
    median_length: float
    median_width: float
    median_tortuosity: float
    share_reaching_margin: float
    margin_side: str | None
    glands: list[Gland] = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def row(self, name: str) -> dict[str, Any]:
        """The ``images.csv`` row (keys :data:`IMAGE_COLUMNS`)."""
        return {"name": name, **{key: getattr(self, key) for key in IMAGE_COLUMNS[1:]}}

def _median(values: Iterable[float]) -> float:
    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    return float(np.median(values)) if values.size else math.nan

def _eyelid_values(glands: np.ndarray, eyelid: np.ndarray | None, side: str | None, pixel_size: float,
                   dropout_settings: dict[str, Any]) -> tuple[float, float, float, float]:
    """(eyelid_area, gland_area_ratio, dropout, healthy_extent); NaN for a missing or empty eyelid."""
    if eyelid is None or not eyelid.any():
        return math.nan, math.nan, math.nan, math.nan
    area = int(np.count_nonzero(eyelid))
    ratio = np.count_nonzero(glands & eyelid) / area
    lost, extent = dropout_and_extent(glands, eyelid, margin_side=side or "top", **dropout_settings)
    return float(area) * pixel_size ** 2, float(ratio), lost, extent

def measure_image(gland_mask: Any, eyelid_mask: Any | None = None, *, pixel_size: float = 1.0,
                  min_area: int = DEFAULT_MIN_AREA, split_ratio: float = DEFAULT_SPLIT_RATIO,
                  gap_fraction: float = DEFAULT_GAP_FRACTION, margin_side: str = "auto",
                  margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE,
                  dropout_definition: str = DEFAULT_DROPOUT_DEFINITION,
                  healthy_extent: float = DEFAULT_HEALTHY_EXTENT) -> ImageMeasures:
    """All measures of one image (module docstring).

    ``gland_mask``, ``eyelid_mask``: ``[H, W]`` masks of one shape (eyelid optional);
    ``pixel_size``: mm per pixel (1 = pixel units); ``min_area`` and
    ``margin_tolerance``: pixels at the masks' resolution; ``dropout_definition``
    ("span" or "area"), ``gap_fraction`` and ``healthy_extent``: :mod:`utils.clinical.dropout`.
    """
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    check_dropout_settings(dropout_definition, gap_fraction, healthy_extent)
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
    settings = {"definition": dropout_definition, "gap_fraction": gap_fraction, "healthy_extent": healthy_extent}
    eyelid_area, ratio, lost, extent = _eyelid_values(glands, eyelid, side, pixel_size, settings)
    reaching = [g.reaches_margin for g in found if g.reaches_margin is not None]
    return ImageMeasures(
        gland_count=len(found), gland_area=float(np.count_nonzero(glands)) * pixel_size ** 2,
        eyelid_area=eyelid_area, gland_area_ratio=ratio, dropout=lost, healthy_extent=extent,
        meiboscore=meiboscore(lost), meibo_scale=meibo_scale(lost),
        median_length=_median(g.length for g in found), median_width=_median(g.mean_width for g in found),
        median_tortuosity=_median(g.tortuosity for g in found),
        share_reaching_margin=float(np.mean(reaching)) if reaching else math.nan, margin_side=side,
        glands=found, labels=labels)

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

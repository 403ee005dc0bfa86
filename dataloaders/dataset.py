"""Reading a meibography dataset folder: images and masks, and their validation.

Layout (see README.md)::

    DATA_DIR/Image/<name>.<png|jpg|jpeg|bmp|tif|tiff>   grayscale or RGB image
    DATA_DIR/Label/<name>.png                           binary gland mask (optional)
    DATA_DIR/Eyelid/<name>.png                          binary eyelid (tarsal plate) mask (optional)
    DATA_DIR/train_dict{1..5}.json                      folds (dataloaders.folds)

Inside the code an image is ``float32 [H, W]`` in [0, 1] and a mask is
``uint8 [H, W]`` in {0, 1}. A *name* is a file name without its extension.
Every problem a user can cause raises :class:`utils.errors.InputError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from utils.errors import InputError

# OpenCV's thread pool does not survive fork(): a DataLoader worker forked after the
# pool was used can deadlock. Image I/O here is per small image, so one thread is enough.
cv2.setNumThreads(1)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LABEL_EXTS = (".png",)
EYELID_DIR = "Eyelid"
TARGETS = ("gland", "eyelid")  # what a segmenter segments: Label/ or Eyelid/ masks


def decode_image(data: np.ndarray) -> np.ndarray | None:
    """Encoded file bytes (uint8) -> the image as ``cv2.IMREAD_UNCHANGED`` decodes it, or None.

    OpenCV logs its own multi-line decoder errors to stderr; callers replace them with one
    line, so the logging is silenced here."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
    finally:
        cv2.utils.logging.setLogLevel(level)
    return None if array is None or array.size == 0 else array


def _read_raw(path: Path) -> np.ndarray:
    """Read any image file as a numpy array, or raise a one-line InputError."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: file is empty; replace it with a valid image or remove it")
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    array = decode_image(data)
    if array is None:
        raise InputError(f"{path}: cannot be decoded as an image; replace it with a valid "
                         f"{'/'.join(e[1:] for e in IMAGE_EXTS)} file or remove it")
    return array


def _to_gray(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        if array.shape[2] == 1:
            return array[:, :, 0]
        code = cv2.COLOR_BGRA2GRAY if array.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(array, code)
    return array


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Image file -> grayscale ``float32 [H, W]`` in [0, 1] (RGB converted).

    ``size``: optional ``(W, H)`` to resize to (bilinear).
    """
    path = Path(path)
    array = _to_gray(_read_raw(path))
    if array.dtype == np.uint8:
        image = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        image = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        image = np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise InputError(f"{path}: unsupported pixel type {array.dtype}; save it as 8- or 16-bit")
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)
    return image


def binarise_label(array: np.ndarray, path: str | os.PathLike = "label") -> np.ndarray:
    """Raw mask values -> ``uint8`` {0, 1}.

    Accepted meanings: 0/1 (foreground > 0), 0/255, or an anti-aliased 8-bit
    0..255 mask (foreground > 127; most non-zero pixels must be 255). Anything
    else, e.g. a multi-class map with values 0, 1, 2, 3, is an InputError.
    """
    values = np.unique(array)
    if set(values.tolist()) <= {0, 1}:
        return (array > 0).astype(np.uint8)
    if array.dtype == np.uint8 and values.max() == 255:
        nonzero = array > 0
        intermediate = nonzero & (array < 255)
        if intermediate.sum() <= 0.5 * nonzero.sum():
            return (array > 127).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise InputError(f"{path}: label values ({shown}) are neither 0/1 nor a 0..255 binary mask; "
                     f"save the gland mask as 0 = background, 255 (or 1) = gland")


def read_label(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Mask file -> ``uint8 [H, W]`` in {0, 1}. ``size``: optional ``(W, H)`` (nearest)."""
    path = Path(path)
    array = _read_raw(path)
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2)
    mask = binarise_label(array, path)
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST)
    return mask


def _stem_map(folder: Path, exts: Iterable[str]) -> dict[str, Path]:
    exts = tuple(exts)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in exts:
            continue
        if path.stem in found:
            raise InputError(f"duplicate name '{path.stem}' in {folder}: {found[path.stem].name} and "
                             f"{path.name}; keep one file per name")
        found[path.stem] = path
    return found


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image file (decodes it; validates readability)."""
    array = _read_raw(path)
    return array.shape[1], array.shape[0]


class DatasetFolder:
    """An ``Image/`` + ``Label/`` dataset folder, validated on construction.

    All images must share one size unless ``resize=(W, H)`` is given. Labels are
    never opened here: :meth:`load_label` reads one on request (training code
    only asks for the Atlas images' labels).
    """

    def __init__(self, root: str | os.PathLike, resize: tuple[int, int] | None = None,
                 names: Iterable[str] | None = None):
        self.root = Path(root)
        image_dir, label_dir = self.root / "Image", self.root / "Label"
        if not self.root.is_dir():
            raise InputError(f"dataset folder {self.root} does not exist")
        if not image_dir.is_dir():
            raise InputError(f"{image_dir} is missing: put the images in {image_dir}/ "
                             f"(see README.md, 'Your own data')")
        if not label_dir.is_dir():
            raise InputError(f"{label_dir} is missing: put the gland masks in {label_dir}/ "
                             f"(same names as the images, .png)")
        self.image_paths = _stem_map(image_dir, IMAGE_EXTS)
        self.label_paths = _stem_map(label_dir, LABEL_EXTS)
        eyelid_dir = self.root / EYELID_DIR
        self.eyelid_paths = _stem_map(eyelid_dir, LABEL_EXTS) if eyelid_dir.is_dir() else {}
        if not self.image_paths:
            raise InputError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTS)})")
        self.resize = tuple(resize) if resize is not None else None
        checked = sorted(self.image_paths) if names is None else sorted(set(names))
        for name in checked:
            if name not in self.image_paths:
                raise InputError(f"image '{name}' is not in {image_dir}")
        self.size = self._check_sizes(checked)  # (H, W) used everywhere in the code
        self._mask_cache: dict[tuple[str, str], np.ndarray] = {}

    def _check_sizes(self, names: list[str]) -> tuple[int, int]:
        sizes = {name: _image_size(self.image_paths[name]) for name in names}
        if not sizes and self.resize is None:
            raise InputError(f"{self.root}: no images selected; pass at least one name or resize=(W, H)")
        if self.resize is not None:
            return self.resize[1], self.resize[0]
        distinct = sorted(set(sizes.values()), key=lambda s: -sum(v == s for v in sizes.values()))
        if len(distinct) > 1:
            common = distinct[0]
            odd = [f"{self.image_paths[n].name} ({w}x{h})" for n, (w, h) in sizes.items() if (w, h) != common]
            shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
            raise InputError(f"images differ in size: most are {common[0]}x{common[1]} (W x H) but "
                             f"{shown}; pass --resize W H to process all at one size")
        width, height = distinct[0]
        return height, width

    @property
    def wh(self) -> tuple[int, int]:
        """Processing size as (W, H), the OpenCV order."""
        return self.size[1], self.size[0]

    def has_label(self, name: str) -> bool:
        return name in self.label_paths

    def load_image(self, name: str) -> np.ndarray:
        """``float32 [H, W]`` in [0, 1] at the processing size."""
        if name not in self.image_paths:
            raise InputError(f"image '{name}' is not in {self.root / 'Image'}")
        return read_image(self.image_paths[name], self.wh)

    def has_eyelid(self, name: str) -> bool:
        return name in self.eyelid_paths

    def load_label(self, name: str) -> np.ndarray:
        """Gland mask ``uint8 [H, W]`` in {0, 1} at the processing size; checked against its image size."""
        return self._load_mask(name, "Label", self.label_paths)

    def load_eyelid(self, name: str) -> np.ndarray:
        """Eyelid mask ``uint8 [H, W]`` in {0, 1} (``Eyelid/<name>.png``, read like a gland mask)."""
        return self._load_mask(name, EYELID_DIR, self.eyelid_paths)

    def load_mask(self, name: str, target: str) -> np.ndarray:
        """:meth:`load_label` (``target="gland"``) or :meth:`load_eyelid` (``"eyelid"``)."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        return self.load_label(name) if target == "gland" else self.load_eyelid(name)

    def has_mask(self, name: str, target: str) -> bool:
        return self.has_label(name) if target == "gland" else self.has_eyelid(name)

    def _load_mask(self, name: str, folder: str, paths: dict[str, Path]) -> np.ndarray:
        cached = self._mask_cache.get((folder, name))
        if cached is not None:
            return cached
        if name not in paths:
            raise InputError(f"image '{name}' has no {folder.lower()} mask: "
                             f"{self.root / folder / (name + '.png')} is missing")
        path = paths[name]
        raw = read_label(path)
        image_wh = _image_size(self.image_paths[name])
        if (raw.shape[1], raw.shape[0]) != image_wh:
            raise InputError(f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image "
                             f"{self.image_paths[name].name} is {image_wh[0]}x{image_wh[1]} (W x H); "
                             f"they must match")
        if (raw.shape[1], raw.shape[0]) != self.wh:
            raw = cv2.resize(raw, self.wh, interpolation=cv2.INTER_NEAREST)
        self._mask_cache[(folder, name)] = raw
        return raw

"""Reading a meibography dataset folder and its fold files; all input validation.

Layout (see README.md)::

    DATA_DIR/Image/<name>.<png|jpg|jpeg|bmp|tif|tiff>   grayscale or RGB image
    DATA_DIR/Label/<name>.png                           binary gland mask (optional)
    DATA_DIR/Eyelid/<name>.png                          binary eyelid (tarsal plate) mask (optional)
    DATA_DIR/train_dict{1..5}.json                      folds (utils.make_folds)

Inside the code an image is ``float32 [H, W]`` in [0, 1] and a mask is
``uint8 [H, W]`` in {0, 1}. A *name* is a file name without its extension.
Every problem a user can cause raises :class:`utils.errors.InputError`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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
NUM_FOLDS = 5


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


@dataclass
class Subject:
    """One patient of a fold: ``atlas`` = labelled images usable in training,
    ``others`` = the remaining images. ``patient`` = id (from the fold file's
    optional ``patient`` key, else the first image's name)."""

    patient: str
    atlas: list[str]
    others: list[str]

    @property
    def images(self) -> list[str]:
        return self.atlas + self.others


@dataclass
class Fold:
    """A parsed ``train_dict{k}.json``."""

    index: int
    path: Path
    train: list[Subject] = field(default_factory=list)
    val: list[Subject] = field(default_factory=list)
    test: list[Subject] = field(default_factory=list)

    def split(self, name: str) -> list[Subject]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    @property
    def patients(self) -> list[Subject]:
        return self.train + self.val + self.test


def fold_path(root: str | os.PathLike, k: int) -> Path:
    return Path(root) / f"train_dict{k}.json"


def _entry_name(entry: object, where: str, known: dict[str, Path]) -> str:
    if not isinstance(entry, str) or not entry:
        raise InputError(f"{where}: image names must be non-empty strings, got {entry!r}")
    stem = Path(entry).stem if Path(entry).suffix.lower() in IMAGE_EXTS else entry
    if stem not in known:
        raise InputError(f"{where} lists image '{entry}' which is not in the Image/ folder; "
                         f"fix the fold file or rerun python -m utils.make_folds")
    return stem


def load_fold(root: str | os.PathLike, k: int, folder: DatasetFolder | None = None) -> Fold:
    """Parse and validate ``root/train_dict{k}.json`` against the dataset folder.

    Checks: valid JSON with ``train``/``val``/``test`` lists of subjects
    ``{"Atlas": [...], "OtherImg": [...]}``; every image exists; no image twice;
    no patient in two sets; Atlas, val and test images have labels.
    """
    if not 1 <= k <= NUM_FOLDS:
        raise InputError(f"fold must be 1..{NUM_FOLDS}, got {k}")
    folder = folder if folder is not None else DatasetFolder(root)
    path = fold_path(root, k)
    if not path.is_file():
        raise InputError(f"fold file {path} is missing: run python -m utils.make_folds {root}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); fix it or rerun python -m utils.make_folds")
    if not isinstance(data, dict) or any(key not in data for key in ("train", "val", "test")):
        raise InputError(f"{path} must be an object with 'train', 'val' and 'test' lists; "
                         f"rerun python -m utils.make_folds")
    fold = Fold(index=k, path=path)
    seen_image: dict[str, str] = {}
    seen_patient: dict[str, str] = {}
    for split in ("train", "val", "test"):
        subjects = data[split]
        if not isinstance(subjects, list):
            raise InputError(f"{path}: '{split}' must be a list of subjects")
        for i, subject in enumerate(subjects):
            where = f"{path.name}: {split} subject {i}"
            if not isinstance(subject, dict) or not isinstance(subject.get("Atlas", []), list) \
                    or not isinstance(subject.get("OtherImg", []), list):
                raise InputError(f"{where} must be {{\"Atlas\": [names], \"OtherImg\": [names]}}")
            atlas = [_entry_name(e, where, folder.image_paths) for e in subject.get("Atlas", [])]
            others = [_entry_name(e, where, folder.image_paths) for e in subject.get("OtherImg", [])]
            if not atlas and not others:
                raise InputError(f"{where} has no images")
            patient = str(subject.get("patient", (atlas + others)[0]))
            for name in atlas + others:
                if name in seen_image:
                    kind = "in two sets" if seen_image[name].split()[0] != split else "twice"
                    raise InputError(f"{where}: image '{name}' appears {kind} ({seen_image[name]} "
                                     f"and {split}); a patient's images must be in one subject of one set")
                seen_image[name] = f"{split} subject {i}"
            if patient in seen_patient:
                raise InputError(f"{where}: patient '{patient}' appears twice ({seen_patient[patient]} "
                                 f"and {split}); a patient must be in exactly one set")
            seen_patient[patient] = f"{split} subject {i}"
            must_label = atlas if split == "train" else atlas + others
            for name in must_label:
                if not folder.has_label(name):
                    role = "Atlas image" if split == "train" else f"{split} image"
                    raise InputError(f"{where}: {role} '{name}' has no label "
                                     f"{folder.root / 'Label' / (name + '.png')}; add it or rerun "
                                     f"python -m utils.make_folds")
            fold.split(split).append(Subject(patient=patient, atlas=atlas, others=others))
    if not fold.train:
        raise InputError(f"{path}: the train set is empty")
    return fold


def parse_folds(value: str) -> list[int]:
    """``--fold`` value: ``"1".."5"``, a comma list such as ``"1,3"``, or ``"all"`` -> fold numbers."""
    if value == "all":
        return list(range(1, NUM_FOLDS + 1))
    folds = []
    for part in str(value).split(","):
        try:
            k = int(part)
        except ValueError:
            raise InputError(f"--fold must be 1..{NUM_FOLDS}, a list like 1,3, or 'all', got '{value}'") from None
        if not 1 <= k <= NUM_FOLDS or k in folds:
            raise InputError(f"--fold must be 1..{NUM_FOLDS}, a list like 1,3, or 'all', got '{value}'")
        folds.append(k)
    return folds

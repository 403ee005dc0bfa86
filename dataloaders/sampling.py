"""Pieces shared by the training/evaluation datasets.

The per-dataset image cache (:class:`ImageCache`), the per-item random
generator (:func:`item_rng`) and the iteration-based base class
(:class:`IterationDataset`), the prealignment checks and the single-image warp
helpers. Shapes and the seeding convention: see :mod:`dataloaders.registration_data`.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dataloaders.dataset import DatasetFolder
from networks.spatial_transformer import warp
from utils.errors import InputError
from utils.onehot import one_hot

PREALIGN_HINT = "run python -m utils.prealign DATA_DIR to (re)compute prealign.json"


class ImageCache:
    """Decoded images of one dataset instance, read from disk at most once.

    Images are kept as ``uint8`` when that is exact (8-bit files at their own
    size), else as ``float32``. ``tensor(name)`` -> fresh ``[1, H, W]`` float32.
    Labels are read through ``folder.load_label`` (which caches them) and only
    when asked for.
    """

    def __init__(self, folder: DatasetFolder):
        self.folder = folder
        self._images: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._images)

    def image(self, name: str) -> np.ndarray:
        """``float32 [H, W]`` in [0, 1] (a new array; the cache is never handed out)."""
        stored = self._images.get(name)
        if stored is None:
            image = self.folder.load_image(name)
            as_uint8 = np.round(image * 255.0).astype(np.uint8)
            exact = np.array_equal(as_uint8.astype(np.float32) / np.float32(255.0), image)
            stored = as_uint8 if exact else image.astype(np.float32, copy=True)
            self._images[name] = stored
        if stored.dtype == np.uint8:
            return stored.astype(np.float32) / np.float32(255.0)
        return stored.copy()

    def tensor(self, name: str) -> torch.Tensor:
        """Image ``[1, H, W]`` float32 in [0, 1]."""
        return torch.from_numpy(self.image(name))[None]

    def label(self, name: str, target: str = "gland") -> torch.Tensor:
        """One-hot mask ``[2, H, W]`` float of ``target`` (reads ``Label/<name>.png``, or
        ``Eyelid/<name>.png`` for ``"eyelid"``, on first use)."""
        return one_hot(torch.from_numpy(self.folder.load_mask(name, target)))

    def preload(self, names: Iterable[str]) -> None:
        for name in names:
            self.image(name)


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of item ``index`` of epoch ``epoch``: ``default_rng([seed, epoch, index])``."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def pick(rng: np.random.Generator, items: Sequence):
    """One element of ``items``, uniformly."""
    return items[int(rng.integers(len(items)))]


def pick_two(rng: np.random.Generator, items: Sequence) -> tuple:
    """Two distinct elements (uniform, ordered); the one element twice when ``len(items) == 1``."""
    if len(items) == 1:
        return items[0], items[0]
    first, second = rng.choice(len(items), size=2, replace=False)
    return items[int(first)], items[int(second)]


def warp_image(image: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Bilinear warp of one image ``[C, H, W]`` by one field ``[2, H, W]``."""
    return warp(image[None], field[None])[0]


def check_size(folder: DatasetFolder, prealign) -> None:
    """The prealignment must be at the folder's processing size."""
    if tuple(prealign.size) != tuple(folder.size):
        h, w = prealign.size
        raise InputError(f"{folder.root / 'prealign.json'} was computed at {w}x{h} (W x H) but the "
                         f"images are processed at {folder.wh[0]}x{folder.wh[1]}; {PREALIGN_HINT}")


def check_pairs(folder: DatasetFolder, prealign, pairs: Iterable[tuple[str, str]]) -> None:
    """Every ``(moving, fixed)`` pair must have a stored matrix."""
    for moving, fixed in pairs:
        try:
            prealign.matrix(moving, fixed)
        except KeyError:
            raise InputError(f"{folder.root / 'prealign.json'} has no matrix for the pair "
                             f"{moving} -> {fixed}; {PREALIGN_HINT}") from None


def check_iterations(iterations: int) -> int:
    if int(iterations) < 1:
        raise InputError(f"iterations per epoch must be at least 1, got {iterations}; pass --iters 1 or more")
    return int(iterations)


class IterationDataset(Dataset):
    """Base of the iteration-based training sets: ``len == iterations``, ``set_epoch``."""

    def __init__(self, iterations: int, seed: int):
        self.iterations = check_iterations(iterations)
        self.seed = int(seed)
        # In shared memory, so that DataLoader workers (persistent ones included)
        # see the epoch that the main process sets.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.iterations

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of epoch ``epoch`` (items of different epochs differ).

        Call it before iterating the DataLoader for that epoch; it reaches
        worker processes, persistent or not.
        """
        self._epoch.fill_(int(epoch))

    def rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.iterations:
            raise IndexError(f"item {index} out of range 0..{self.iterations - 1}")
        return item_rng(self.seed, self.epoch, index)

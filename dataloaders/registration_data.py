"""Registration samples: random intra-patient training pairs and every evaluation pair.

Also holds the pieces both loader modules share: the per-dataset image cache
(:class:`ImageCache`), the per-item random generator (:func:`item_rng`), the
prealignment checks and the single-image warp helpers.

Shapes (METHOD.md): images ``[1, H, W]`` float32 in [0, 1], labels one-hot
``[2, H, W]`` float (channel 1 = gland), fields ``[2, H, W]`` float32 in pixels,
channel 0 = row; ``warp(m, d)(p) = m(p + d(p))``. ``prealign`` is any object
with ``size`` ``(H, W)``, ``matrix(a, b)`` and ``field(a, b) -> [2, H, W]``
where ``warp(image_a, field(a, b)) ~ image_b`` (``utils.prealign.Prealignment``).

Training datasets are iteration-based: ``len(ds) == iterations`` per epoch;
item ``i`` of epoch ``e`` is drawn with ``np.random.default_rng([seed, e, i])``,
so it is the same whatever the DataLoader's worker count. Call
``set_epoch(e)`` before iterating each epoch (the epoch is kept in shared
memory, so workers see it, persistent or not). Decoded images are cached per
process; with non-persistent workers call ``preload()`` once before building
the DataLoader so that the forked workers inherit the decoded images.
"""
from __future__ import annotations

from itertools import permutations
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dataloaders.dataset import DatasetFolder, Subject
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

    def label(self, name: str) -> torch.Tensor:
        """One-hot label ``[2, H, W]`` float (reads ``Label/<name>.png`` on first use)."""
        return one_hot(torch.from_numpy(self.folder.load_label(name)))

    def label_index(self, name: str) -> torch.Tensor:
        """Index mask ``[1, H, W]`` float32 in {0, 1}."""
        return torch.from_numpy(self.folder.load_label(name).astype(np.float32))[None]

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


def warp_label(index_mask: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Nearest warp of an index mask ``[1, H, W]`` -> one-hot ``[2, H, W]``.

    The index mask (not the one-hot) is warped so that pixels sampled outside
    the image become background rather than all-zero.
    """
    warped = warp(index_mask[None], field[None], mode="nearest")[0, 0]
    return one_hot(warped.round().long())


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


class RegistrationTrainSet(IterationDataset):
    """Random intra-patient pairs for training the registration net; never reads a label.

    Item ``i``: a training patient with >= 2 images (uniform), its Atlas image
    ``L`` (uniform among its Atlas images; any image if it has none), two other
    images ``U1 != U2`` (``U1 == U2`` when it has only two images) and one of
    the pairings ``L->U1``, ``L->U2``, ``U2->U1`` (uniform) as ``(a, b)``.
    Returns ``"a"``, ``"b"`` ``[1, H, W]``; ``"a_on_b" = warp(a, field(a, b))``,
    ``"b_on_a" = warp(b, field(b, a))`` (bilinear); ``"a_name"``, ``"b_name"``,
    ``"patient"``. The trainer trains both directions: moving = the pre-aligned
    image (``a_on_b`` onto ``b``, ``b_on_a`` onto ``a``).
    """

    def __init__(self, folder: DatasetFolder, subjects: Sequence[Subject], prealign,
                 iterations: int, seed: int):
        super().__init__(iterations, seed)
        self.folder, self.prealign = folder, prealign
        self.subjects = [s for s in subjects if len(s.images) >= 2]
        if not self.subjects:
            raise InputError("no training patient has two or more images, so there is no pair to "
                             "register; check the fold file (or rerun python -m utils.make_folds)")
        check_size(folder, prealign)
        check_pairs(folder, prealign, (p for s in self.subjects for p in permutations(s.images, 2)))
        self.cache = ImageCache(folder)

    def preload(self) -> "RegistrationTrainSet":
        """Decode every image this set can draw (do it before forking DataLoader workers)."""
        self.cache.preload(n for s in self.subjects for n in s.images)
        return self

    def draw(self, index: int) -> dict:
        """The draw of item ``index`` in the current epoch (no I/O): ``"patient"``,
        ``"L"``, ``"U1"``, ``"U2"``, ``"pairing"`` (0: L->U1, 1: L->U2, 2: U2->U1),
        ``"a"``, ``"b"`` (names)."""
        rng = self.rng(index)
        subject = pick(rng, self.subjects)
        atlas = pick(rng, subject.atlas if subject.atlas else subject.images)
        u1, u2 = pick_two(rng, [n for n in subject.images if n != atlas])
        pairing = int(rng.integers(3))
        a, b = ((atlas, u1), (atlas, u2), (u2, u1))[pairing]
        return {"patient": subject.patient, "L": atlas, "U1": u1, "U2": u2, "pairing": pairing,
                "a": a, "b": b}

    def __getitem__(self, index: int) -> dict:
        drawn = self.draw(index)
        a_name, b_name = drawn["a"], drawn["b"]
        a, b = self.cache.tensor(a_name), self.cache.tensor(b_name)
        return {
            "a": a,
            "b": b,
            "a_on_b": warp_image(a, self.prealign.field(a_name, b_name)),
            "b_on_a": warp_image(b, self.prealign.field(b_name, a_name)),
            "a_name": a_name,
            "b_name": b_name,
            "patient": drawn["patient"],
        }


class RegistrationPairSet(Dataset):
    """Every ordered pair ``(moving, fixed)``, ``moving != fixed``, of labelled images of each subject.

    For validation/test (all images labelled). Item: ``"moving"``, ``"fixed"``,
    ``"moving_aligned"`` (bilinear warp by the affine field) ``[1, H, W]``;
    ``"moving_label_aligned"`` (nearest warp, one-hot; outside = background),
    ``"fixed_label"`` ``[2, H, W]``; ``"affine_field"`` ``[2, H, W]``;
    ``"moving_name"``, ``"fixed_name"``, ``"patient"``.
    """

    def __init__(self, folder: DatasetFolder, subjects: Sequence[Subject], prealign):
        self.folder, self.prealign = folder, prealign
        self.pairs: list[tuple[str, str, str]] = []  # (patient, moving, fixed)
        for subject in subjects:
            labelled = [n for n in subject.images if folder.has_label(n)]
            self.pairs.extend((subject.patient, m, f) for m, f in permutations(labelled, 2))
        check_size(folder, prealign)
        check_pairs(folder, prealign, ((m, f) for _, m, f in self.pairs))
        self.cache = ImageCache(folder)

    def preload(self) -> "RegistrationPairSet":
        """Decode every image and label of the pairs (before forking DataLoader workers)."""
        names = sorted({n for _, m, f in self.pairs for n in (m, f)})
        self.cache.preload(names)
        for name in names:
            self.folder.load_label(name)
        return self

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        patient, moving_name, fixed_name = self.pairs[index]
        moving = self.cache.tensor(moving_name)
        field = self.prealign.field(moving_name, fixed_name)
        return {
            "moving": moving,
            "fixed": self.cache.tensor(fixed_name),
            "moving_aligned": warp_image(moving, field),
            "moving_label_aligned": warp_label(self.cache.label_index(moving_name), field),
            "fixed_label": self.cache.label(fixed_name),
            "affine_field": field,
            "moving_name": moving_name,
            "fixed_name": fixed_name,
            "patient": patient,
        }

"""Registration samples: random intra-patient training pairs and every evaluation pair.

Shapes (docs/METHOD.md): images ``[1, H, W]`` float32 in [0, 1], labels one-hot
``[2, H, W]`` float (channel 1 = gland), fields ``[2, H, W]`` float32 in pixels,
channel 0 = row; ``warp(m, d)(p) = m(p + d(p))``. ``prealign`` is any object
with ``size`` ``(H, W)``, ``matrix(a, b)`` and ``field(a, b) -> [2, H, W]``
where ``warp(image_a, field(a, b)) ~ image_b`` (``dataloaders.prealignment.cache.Prealignment``).

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
from typing import Sequence

from torch.utils.data import Dataset

from dataloaders.dataset import DatasetFolder

from dataloaders.folds import Subject
from dataloaders.sampling import ImageCache, IterationDataset, check_pairs, check_size, pick, pick_two, warp_image
from networks.spatial_transformer import warp_label
from utils.errors import InputError


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
            "moving_label_aligned": warp_label(self.cache.label(moving_name)[None], field[None])[0],
            "fixed_label": self.cache.label(fixed_name),
            "affine_field": field,
            "moving_name": moving_name,
            "fixed_name": fixed_name,
            "patient": patient,
        }

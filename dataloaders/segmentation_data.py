"""Segmentation samples: (Atlas, U1, U2, negative) training items and evaluation images.

Shapes and the iteration/epoch/seed conventions are those of
:mod:`dataloaders.registration_data`: images ``[1, H, W]`` float32 in [0, 1],
labels one-hot ``[2, H, W]`` float, fields ``[2, H, W]`` pixels (row first).
Training reads only the labels of Atlas images.
"""
from __future__ import annotations

from itertools import chain
from typing import Sequence

from torch.utils.data import Dataset

from dataloaders.dataset import DatasetFolder

from dataloaders.folds import Subject
from dataloaders.sampling import (ImageCache, IterationDataset, check_pairs, check_size, pick, pick_two,
                                  warp_image)
from utils.errors import InputError


class SegmentationTrainSet(IterationDataset):
    """RSGM/RNSF training items.

    Item ``i`` (drawn with ``default_rng([seed, epoch, i])``): a training
    patient with an Atlas image and at least one other image (uniform); an
    Atlas image ``x_l`` of it (uniform) with label ``y_l``; two other images
    ``u1 != u2`` of it (``u1 == u2`` with one other image; other Atlas images
    may serve, their labels are never read); ``u_neg`` = a uniform image of a
    uniform *different* training patient (label never read). Returns
    ``"x_l"``, ``"u1"``, ``"u2"``, ``"u_neg"`` ``[1, H, W]``; ``"y_l"`` ``[2, H, W]``;
    ``"atlas_name"``, ``"u1_name"``, ``"u2_name"``, ``"neg_name"``, ``"patient"``.

    With ``pool_views=True`` (the semi-supervised baselines) also, drawn after the
    above so that those stay the same: ``"u_a"``, ``"u_b"`` ``[1, H, W]``, two images of
    the unlabelled pool (every non-Atlas training image, fully unlabelled patients
    included; uniform, independent), and ``"x_l2"`` ``[1, H, W]`` with ``"y_l2"``
    ``[2, H, W]``, an Atlas image of a different patient than ``x_l`` (uniform
    patient, then image; ``x_l`` again when only one patient has Atlas images), with
    their names ``"u_a_name"``, ``"u_b_name"``, ``"atlas2_name"``.

    With ``registration_inputs=True`` also the inputs of
    :func:`networks.rsgm.registration_outputs` (running the registration net per
    batch, as the published code did): ``"u1_on_l" = warp(u1, field(u1, x_l))``,
    ``"x_l_on_u2" = warp(x_l, field(x_l, u2))`` ``[1, H, W]`` and ``"field_l_u2" =
    field(x_l, u2)`` ``[2, H, W]``. The trainer looks the registration outputs up
    by name (:class:`dataloaders.registration_cache.RegistrationOutputCache`) and leaves them off.
    """

    def __init__(self, folder: DatasetFolder, subjects: Sequence[Subject], prealign,
                 iterations: int, seed: int, registration_inputs: bool = False, pool_views: bool = False):
        super().__init__(iterations, seed)
        self.registration_inputs, self.pool_views = registration_inputs, pool_views
        self.folder, self.prealign = folder, prealign
        self.all_subjects = list(subjects)
        self.subjects = [s for s in self.all_subjects if s.atlas and len(s.images) >= 2]
        if not self.subjects:
            raise InputError("no training patient has an Atlas (labelled) image plus another image; "
                             "rerun python -m utils.make_folds with --labelled-per-patient 1 or more "
                             "and --labelled-patients above 0")
        if len(self.all_subjects) < 2:
            raise InputError("the negative image must come from a different patient, but the train set "
                             "has only one patient; use a dataset with more patients")
        self.pool = [n for s in self.all_subjects for n in s.others]
        if pool_views and not self.pool:
            raise InputError("the semi-supervised methods need unlabelled training images, but every training "
                             "image is an Atlas image; rerun python -m utils.make_folds with fewer "
                             "--labelled-per-patient")
        check_size(folder, prealign)
        pairs = chain.from_iterable(((u, x), (x, u)) for s in self.subjects for x in s.atlas
                                    for u in s.images if u != x)
        check_pairs(folder, prealign, pairs)
        self.cache = ImageCache(folder)

    def preload(self) -> "SegmentationTrainSet":
        """Decode every image and Atlas label this set can draw (before forking DataLoader workers)."""
        self.cache.preload(n for s in self.all_subjects for n in s.images)
        for subject in self.subjects:
            for name in subject.atlas:
                self.folder.load_label(name)
        return self

    def draw(self, index: int) -> dict[str, str]:
        """Names of item ``index`` in the current epoch (no I/O)."""
        rng = self.rng(index)
        subject = pick(rng, self.subjects)
        atlas = pick(rng, subject.atlas)
        u1, u2 = pick_two(rng, [n for n in subject.images if n != atlas])
        negative = pick(rng, [s for s in self.all_subjects if s.patient != subject.patient])
        names = {"patient": subject.patient, "atlas_name": atlas, "u1_name": u1, "u2_name": u2,
                 "neg_name": pick(rng, negative.images)}
        if self.pool_views:
            others = [s for s in self.subjects if s.patient != subject.patient] or [subject]
            names.update(u_a_name=pick(rng, self.pool), u_b_name=pick(rng, self.pool),
                         atlas2_name=pick(rng, pick(rng, others).atlas))
        return names

    def __getitem__(self, index: int) -> dict:
        names = self.draw(index)
        atlas, u1_name, u2_name = names["atlas_name"], names["u1_name"], names["u2_name"]
        x_l, u1 = self.cache.tensor(atlas), self.cache.tensor(u1_name)
        item = {
            "x_l": x_l,
            "y_l": self.cache.label(atlas),
            "u1": u1,
            "u2": self.cache.tensor(u2_name),
            "u_neg": self.cache.tensor(names["neg_name"]),
            **names,
        }
        if self.pool_views:
            item.update(u_a=self.cache.tensor(names["u_a_name"]), u_b=self.cache.tensor(names["u_b_name"]),
                        x_l2=self.cache.tensor(names["atlas2_name"]), y_l2=self.cache.label(names["atlas2_name"]))
        if self.registration_inputs:
            field_l_u2 = self.prealign.field(atlas, u2_name)
            item.update(u1_on_l=warp_image(u1, self.prealign.field(u1_name, atlas)),
                        x_l_on_u2=warp_image(x_l, field_l_u2), field_l_u2=field_l_u2)
        return item


class MaskTrainSet(IterationDataset):
    """Supervised training items of another target than the glands (the eyelid): item ``i``
    (drawn with ``default_rng([seed, epoch, i])``) is a uniform training image that has a
    mask of ``target``: ``"x_l"`` ``[1, H, W]``, ``"y_l"`` one-hot ``[2, H, W]``,
    ``"atlas_name"``, ``"patient"``. Eyelid masks are a separate, cheap annotation: every
    training image that has one may use it (gland labels stay Atlas-only)."""

    def __init__(self, folder: DatasetFolder, subjects: Sequence[Subject], target: str, iterations: int, seed: int):
        super().__init__(iterations, seed)
        self.folder, self.target = folder, target
        self.items = [(s.patient, n) for s in subjects for n in s.images if folder.has_mask(n, target)]
        if not self.items:
            raise InputError(f"no training image has a {target} mask in {folder.root}; add "
                             f"{target.capitalize()}/<name>.png masks (see README.md)")
        self.cache = ImageCache(folder)

    def preload(self) -> "MaskTrainSet":
        """Decode every image and mask this set can draw (before forking DataLoader workers)."""
        self.cache.preload(name for _, name in self.items)
        for _, name in self.items:
            self.folder.load_mask(name, self.target)
        return self

    def __getitem__(self, index: int) -> dict:
        patient, name = pick(self.rng(index), self.items)
        return {"x_l": self.cache.tensor(name), "y_l": self.cache.label(name, self.target), "atlas_name": name,
                "patient": patient}


class SegmentationEvalSet(Dataset):
    """Every image of the subjects once (val/test) that has a mask of ``target`` (every image
    for the glands, which val and test must have): ``"image"`` ``[1, H, W]``, ``"label"``
    one-hot ``[2, H, W]``, ``"name"``, ``"patient"``."""

    def __init__(self, folder: DatasetFolder, subjects: Sequence[Subject], target: str = "gland"):
        self.folder, self.target = folder, target
        self.items = [(s.patient, name) for s in subjects for name in s.images
                      if target == "gland" or folder.has_mask(name, target)]
        self.cache = ImageCache(folder)

    def preload(self) -> "SegmentationEvalSet":
        """Decode every image and mask (before forking DataLoader workers)."""
        self.cache.preload(name for _, name in self.items)
        for _, name in self.items:
            self.folder.load_mask(name, self.target)
        return self

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        patient, name = self.items[index]
        return {"image": self.cache.tensor(name), "label": self.cache.label(name, self.target),
                "name": name, "patient": patient}

"""The fold files ``DATA_DIR/train_dict{1..5}.json``: their format, reading and validation, writing.

A fold file is ``{"train": [subject], "val": [...], "test": [...]}`` with ``subject =
{"patient": id, "Atlas": [names], "OtherImg": [names]}`` (names without extension; the
``patient`` key is optional in hand-made files). ``Atlas`` lists the training images
whose labels training may read; val and test subjects list every image, all of whose
labels are used in evaluation. How the patients are split is :mod:`dataloaders.splits`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dataloaders.dataset import IMAGE_EXTS, DatasetFolder
from utils.errors import InputError
from utils.files import atomic_write_json

NUM_FOLDS = 5
SPLITS = ("train", "val", "test")


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


def write_folds(root: Path, folds: list[dict], overwrite: bool) -> None:
    """Write ``root/train_dict{1..5}.json`` from fold dicts (the format of :func:`load_fold`): all
    five files, or none when one would replace different content without ``overwrite``."""
    if not overwrite:
        for k, fold in enumerate(folds, start=1):
            path = fold_path(root, k)
            if not path.exists():
                continue
            try:
                same = json.loads(path.read_text()) == fold
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                same = False
            if not same:
                raise InputError(f"{path} already exists with different folds; pass --overwrite to "
                                 f"replace train_dict1..{NUM_FOLDS}.json (models trained on the old "
                                 f"folds will no longer match them)")
    for k, fold in enumerate(folds, start=1):
        atomic_write_json(fold, fold_path(root, k))


def patient_groups(data_dir: str | os.PathLike, folder: DatasetFolder) -> list[list[str]]:
    """Image-name groups, one per patient, from every ``train_dict{1..5}.json`` present.

    Subjects of different folds that share an image are merged into one group.
    """
    data_dir = Path(data_dir)
    present = [k for k in range(1, NUM_FOLDS + 1) if fold_path(data_dir, k).is_file()]
    if not present:
        raise InputError(f"no fold files (train_dict1.json ... train_dict{NUM_FOLDS}.json) in {data_dir}: "
                         f"run python -m utils.make_folds {data_dir} first")
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for k in present:
        fold = load_fold(data_dir, k, folder)
        for subject in fold.patients:
            images = subject.images
            for name in images:
                parent.setdefault(name, name)
            for name in images[1:]:
                parent[find(name)] = find(images[0])
    groups: dict[str, list[str]] = {}
    for name in sorted(parent):
        groups.setdefault(find(name), []).append(name)
    return sorted(groups.values())

"""Patient-disjoint 5-fold splits of a dataset folder: ``DATA_DIR/train_dict{1..5}.json``.

Usage::

    python -m utils.make_folds DATA_DIR [--patient-regex REGEX | --patient-csv CSV]
        [--labelled-per-patient N] [--labelled-patients FRACTION] [--seed S] [--resize W H]
        [--overwrite]
    python -m utils.make_folds DATA_DIR --check [--patient-regex REGEX | --patient-csv CSV]

Splitting (METHOD.md section 1): the patients are dealt into five test sets that
partition them (5-fold cross-validation); in fold k, val is 1/8 of the other
patients (at least one when possible) and the rest train, about 7:1:2. Patients
with a single image cannot be registered: they never train (they go to val or
test). Every evaluable patient is in some test set; a patient with an image
that has no label cannot be evaluated, so it trains in every fold instead.

Each fold file is ``{"train": [subject], "val": [...], "test": [...]}`` with
``subject = {"patient": id, "Atlas": [names], "OtherImg": [names]}`` (names
without extension, sorted). ``Atlas`` = the training images whose labels the
trainers may read; val/test subjects list every image as ``OtherImg`` (all of
their labels are used in evaluation). All randomness derives from ``seed``:
Atlas choices are nested (N=2 contains the N=1 choice) and so are the labelled
patients over ``labelled_patients`` fractions.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

from dataloaders.dataset import IMAGE_EXTS, NUM_FOLDS, DatasetFolder, Fold, fold_path, load_fold
from utils.cli import OneLineErrorParser
from utils.errors import InputError, run_cli
from utils.files import atomic_write_json

DEFAULT_PATIENT_REGEX = r"^(.+)_[^_]+$"
DEFAULT_SEED = 3407
VAL_FRACTION = 1 / 8
SPLITS = ("train", "val", "test")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _shown(items: Sequence[str], limit: int = 5) -> str:
    """``a, b, c and 4 more`` for one-line messages."""
    items = list(items)
    head = ", ".join(items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# ----------------------------------------------------------------------------- patient ids

def _ids_from_regex(names: list[str], regex: str) -> dict[str, str]:
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise InputError(f"--patient-regex '{regex}' is not a valid regular expression ({exc})") from None
    if pattern.groups < 1:
        raise InputError(f"--patient-regex '{regex}' has no capture group; its first group (...) "
                         f"must capture the patient id, e.g. '{DEFAULT_PATIENT_REGEX}'")
    ids: dict[str, str] = {}
    bad: list[str] = []
    for name in names:
        match = pattern.search(name)
        patient = match.group(1) if match else None
        if not patient:
            bad.append(name)
        else:
            ids[name] = patient
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"image '{bad[0]}'{more} does not match --patient-regex '{regex}' "
                         f"(its first capture group must give the patient id); change the regex "
                         f"or pass --patient-csv")
    return ids


def _strip_ext(entry: str) -> str:
    path = Path(entry)
    return path.stem if path.suffix.lower() in IMAGE_EXTS else entry


def _ids_from_csv(names: list[str], csv_path: str | os.PathLike) -> dict[str, str]:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"--patient-csv {csv_path}: file not found")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: cannot be read as a UTF-8 CSV ({exc})") from None
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "name" not in header or "patient" not in header:
        raise InputError(f"{csv_path}: the first line must be the header 'name,patient', "
                         f"found '{','.join(rows[0]) if rows else ''}'")
    col_name, col_patient = header.index("name"), header.index("patient")
    table: dict[str, tuple[str, int]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(col_name, col_patient):
            raise InputError(f"{csv_path} line {line}: expected columns 'name,patient', got {row!r}")
        name, patient = _strip_ext(row[col_name].strip()), row[col_patient].strip()
        if not name or not patient:
            raise InputError(f"{csv_path} line {line}: empty name or patient in {row!r}")
        if name in table and table[name][0] != patient:
            raise InputError(f"{csv_path} line {line}: '{name}' is listed again with a different "
                             f"patient ('{table[name][0]}' on line {table[name][1]}, now '{patient}')")
        table[name] = (patient, line)
    missing = [name for name in names if name not in table]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"image '{missing[0]}'{more} is not listed in {csv_path}; add a row "
                         f"'{missing[0]},<patient id>'")
    unused = sorted(set(table) - set(names))
    if unused:
        _warn(f"{csv_path}: {len(unused)} row(s) name no image in Image/ and are ignored: {_shown(unused)}")
    return {name: table[name][0] for name in names}


def patient_ids(names: Iterable[str], regex: str | None = None,
                csv_path: str | os.PathLike | None = None) -> dict[str, str]:
    """Map each image name (no extension) to its patient id.

    ``csv_path``: a CSV with header ``name,patient`` (names with or without
    extension); else ``regex`` (default :data:`DEFAULT_PATIENT_REGEX`): the first
    capture group of ``re.search(regex, name)``. A name without an id is an InputError.
    """
    names = sorted(names)
    if csv_path is not None and regex is not None:
        raise InputError("pass either --patient-regex or --patient-csv, not both")
    if csv_path is not None:
        return _ids_from_csv(names, csv_path)
    return _ids_from_regex(names, DEFAULT_PATIENT_REGEX if regex is None else regex)


# ----------------------------------------------------------------------------- splitting

def split_patients(patients: dict[str, list[str]], seed: int = DEFAULT_SEED) -> list[dict[str, list[str]]]:
    """Patient -> images map -> five ``{"train", "val", "test"}`` lists of patient ids (sorted).

    Test sets partition the patients (single-image patients are dealt evenly too);
    val = 1/8 of the rest, at least one multi-image patient when train keeps one,
    plus every single-image patient of the rest (they cannot train).
    """
    if len(patients) < NUM_FOLDS:
        raise InputError(f"found {len(patients)} patient(s) ({_shown(sorted(patients))}); "
                         f"{NUM_FOLDS}-fold cross-validation needs at least {NUM_FOLDS}; "
                         f"check --patient-regex / --patient-csv")
    multi = sorted(p for p, images in patients.items() if len(images) >= 2)
    single = sorted(p for p, images in patients.items() if len(images) < 2)
    rng = random.Random(f"{seed}:test")
    rng.shuffle(multi)
    rng.shuffle(single)
    order = multi + single
    tests = [set(order[i::NUM_FOLDS]) for i in range(NUM_FOLDS)]
    folds = []
    for k, test in enumerate(tests, start=1):
        rest_multi = sorted(p for p in multi if p not in test)
        rest_single = sorted(p for p in single if p not in test)
        if not rest_multi:
            raise InputError(f"too few patients with two or more images ({len(multi)} of {len(patients)}) "
                             f"to give fold {k} a training patient; add patients or check "
                             f"--patient-regex / --patient-csv (every image now makes its own patient?)")
        n_val = max(1, _round_half_up((len(rest_multi) + len(rest_single)) * VAL_FRACTION))
        n_val_multi = min(max(n_val - len(rest_single), 1), len(rest_multi) - 1)
        val_multi = random.Random(f"{seed}:val:{k}").sample(rest_multi, n_val_multi)
        folds.append({
            "train": sorted(set(rest_multi) - set(val_multi)),
            "val": sorted(val_multi + rest_single),
            "test": sorted(test),
        })
    return folds


def choose_atlas(patient: str, labelled: list[str], count: int, seed: int = DEFAULT_SEED) -> list[str]:
    """``count`` of ``labelled`` (seeded per patient; a larger count extends a smaller one), sorted."""
    order = sorted(labelled)
    random.Random(f"{seed}:atlas:{patient}").shuffle(order)
    return sorted(order[:count])


def _subject(patient: str, atlas: list[str], images: list[str]) -> dict:
    return {"patient": patient, "Atlas": sorted(atlas), "OtherImg": sorted(set(images) - set(atlas))}


def _check_labels(folder: DatasetFolder) -> None:
    """Every existing label must be readable, binary and of its image's size."""
    for name in sorted(folder.image_paths):
        if folder.has_label(name):
            folder.load_label(name)  # raises on unreadable, non-binary or wrongly sized labels


def _train_only_patients(folder: DatasetFolder, patients: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Patients with an image lacking a label cannot be evaluated: with two or more
    images they train in every fold (their labelled images may still be Atlas images);
    single-image ones can neither train nor be tested. Returns ``(train_only, dropped)``."""
    unlabelled = sorted(p for p, images in patients.items() if not all(folder.has_label(n) for n in images))
    train_only = [p for p in unlabelled if len(patients[p]) >= 2]
    dropped = [p for p in unlabelled if len(patients[p]) < 2]
    if train_only:
        _warn(f"{len(train_only)} patient(s) have images without a label in {folder.root / 'Label'}, so "
              f"they cannot be evaluated: they train in every fold and are never in val/test: "
              f"{_shown(train_only, 10)}")
    if dropped:
        _warn(f"{len(dropped)} single-image patient(s) without a label can neither train nor be tested "
              f"and are left out: {_shown(dropped, 10)}")
    return train_only, dropped


def make_folds(data_dir: str | os.PathLike, patient_regex: str | None = DEFAULT_PATIENT_REGEX,
               patient_csv: str | os.PathLike | None = None, labelled_per_patient: int = 1,
               labelled_patients: float = 1.0, seed: int = DEFAULT_SEED,
               resize: tuple[int, int] | None = None, overwrite: bool = False) -> list[dict]:
    """Write ``data_dir/train_dict{1..5}.json`` and return the five fold dicts.

    ``labelled_per_patient``: Atlas images per labelled training patient (at most
    its image count - 1, so that one stays unlabelled); ``labelled_patients``:
    fraction in (0, 1] of each fold's training patients that get Atlas images
    (at least one), the others get ``"Atlas": []``. ``resize``: ``(W, H)`` for
    datasets with mixed image sizes. Existing fold files with different content
    are only replaced with ``overwrite=True``; identical ones are left alone.
    """
    if labelled_per_patient < 1:
        raise InputError(f"--labelled-per-patient must be >= 1, got {labelled_per_patient}")
    if not 0.0 < labelled_patients <= 1.0:
        raise InputError(f"--labelled-patients must be a fraction in (0, 1], got {labelled_patients}")
    if patient_csv is not None and patient_regex not in (None, DEFAULT_PATIENT_REGEX):
        raise InputError("pass either --patient-regex or --patient-csv, not both")
    folder = DatasetFolder(data_dir, resize=resize)
    ids = patient_ids(folder.image_paths, regex=None if patient_csv is not None else patient_regex,
                      csv_path=patient_csv)
    _check_labels(folder)
    orphans = sorted(set(folder.label_paths) - set(folder.image_paths))
    if orphans:
        _warn(f"{len(orphans)} label(s) in {folder.root / 'Label'} have no image and are ignored: "
              f"{_shown(orphans)}")
    patients: dict[str, list[str]] = {}
    for name, patient in ids.items():
        patients.setdefault(patient, []).append(name)
    train_only, dropped = _train_only_patients(folder, patients)
    evaluable = {p: images for p, images in patients.items() if p not in train_only and p not in dropped}
    singles = sorted(p for p, images in evaluable.items() if len(images) < 2)
    if singles:
        _warn(f"{len(singles)} patient(s) have a single image and cannot be registered, so they are "
              f"kept out of every train set (they go to val/test): {_shown(singles, 10)}")

    splits = split_patients(evaluable, seed)
    for split in splits:
        split["train"] = sorted(split["train"] + train_only)
    folds: list[dict] = []
    capped: set[str] = set()
    for k, split in enumerate(splits, start=1):
        train = split["train"]
        candidates = [p for p in train if any(folder.has_label(n) for n in patients[p])]
        random.Random(f"{seed}:labelled:{k}").shuffle(candidates)
        n_labelled = min(len(candidates), max(1, _round_half_up(labelled_patients * len(train))))
        chosen = set(candidates[:n_labelled])
        fold = {"train": [], "val": [], "test": []}
        for patient in train:
            images = patients[patient]
            atlas: list[str] = []
            if patient in chosen:
                labelled = [n for n in images if folder.has_label(n)]
                count = min(labelled_per_patient, len(labelled), len(images) - 1)
                if count < labelled_per_patient:
                    capped.add(patient)
                atlas = choose_atlas(patient, labelled, count, seed)
            fold["train"].append(_subject(patient, atlas, images))
        for name in ("val", "test"):
            fold[name] = [_subject(p, [], patients[p]) for p in split[name]]
        if not any(s["Atlas"] for s in fold["train"]):
            raise InputError(f"fold {k}: no training patient has a labelled image; add labels")
        folds.append(fold)
    if capped:
        _warn(f"{len(capped)} training patient(s) get fewer than {labelled_per_patient} Atlas image(s): "
              f"at least one image per patient stays unlabelled: {_shown(sorted(capped))}")

    _write_folds(folder.root, folds, overwrite)
    for k in range(1, NUM_FOLDS + 1):  # self-check: what we wrote must parse
        load_fold(folder.root, k, folder)
    return folds


def _write_folds(root: Path, folds: list[dict], overwrite: bool) -> None:
    """Write all five files, or none when one would replace different content without ``overwrite``."""
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


# ----------------------------------------------------------------------------- checking

def check_folds(data_dir: str | os.PathLike, resize: tuple[int, int] | None = None,
                patient_regex: str | None = None,
                patient_csv: str | os.PathLike | None = None) -> list[Fold]:
    """Validate existing ``train_dict{1..5}.json`` (e.g. hand-made ones) and return them parsed.

    Runs :func:`load_fold` on each, reads every label the trainers or tests will
    read, and, when ``patient_regex``/``patient_csv`` is given, checks that no
    patient's images fall in two sets of one fold (fold files without
    ``patient`` keys cannot show that otherwise).
    """
    folder = DatasetFolder(data_dir, resize=resize)
    folds = [load_fold(folder.root, k, folder) for k in range(1, NUM_FOLDS + 1)]
    for fold in folds:
        for split in SPLITS:
            for subject in fold.split(split):
                for name in (subject.atlas if split == "train" else subject.images):
                    folder.load_label(name)
    if patient_regex is not None or patient_csv is not None:
        ids = patient_ids(folder.image_paths, regex=patient_regex, csv_path=patient_csv)
        for fold in folds:
            where: dict[str, tuple[str, str]] = {}
            for split in SPLITS:
                for subject in fold.split(split):
                    for name in subject.images:
                        patient = ids[name]
                        if patient in where and where[patient][0] != split:
                            raise InputError(f"{fold.path.name}: patient '{patient}' is in two sets "
                                             f"({where[patient][1]} in {where[patient][0]}, {name} in "
                                             f"{split}); a patient's images must all be in one set")
                        where.setdefault(patient, (split, name))
    return folds


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m utils.make_folds",
        description="Write patient-disjoint 5-fold splits DATA_DIR/train_dict1.json ... train_dict5.json "
                    "(train:val:test about 7:1:2; the five test sets partition the patients).")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder holding Image/ and Label/")
    ids = parser.add_mutually_exclusive_group()
    ids.add_argument("--patient-regex", metavar="REGEX", default=None,
                     help="the first capture group of a search in each image name (no extension) is "
                          f"its patient id (default '{DEFAULT_PATIENT_REGEX}': all before the last '_')")
    ids.add_argument("--patient-csv", metavar="CSV", default=None,
                     help="CSV with header 'name,patient' giving every image's patient id "
                          "(names with or without extension)")
    parser.add_argument("--labelled-per-patient", metavar="N", type=int, default=1,
                        help="Atlas (labelled) images per labelled training patient, chosen at random "
                             "among its labelled images; at most its image count - 1 (default 1: "
                             "25%% labels with 4 images per patient)")
    parser.add_argument("--labelled-patients", metavar="FRACTION", type=float, default=1.0,
                        help="fraction in (0, 1] of each fold's training patients that get Atlas "
                             "images; the others are fully unlabelled (default 1.0)")
    parser.add_argument("--seed", metavar="S", type=int, default=DEFAULT_SEED,
                        help=f"seed of every random choice; same seed, same folds (default {DEFAULT_SEED})")
    parser.add_argument("--resize", metavar=("W", "H"), type=int, nargs=2, default=None,
                        help="process images at W x H (needed when image sizes differ)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing fold files whose content differs (default: refuse)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: validate the existing fold files (images, labels, "
                             "disjoint sets; with --patient-regex/--patient-csv also by patient id)")
    return parser


def _summary(folds: list[dict]) -> str:
    lines = []
    for k, fold in enumerate(folds, start=1):
        parts = []
        for split in SPLITS:
            subjects = fold[split]
            n_images = sum(len(s["Atlas"]) + len(s["OtherImg"]) for s in subjects)
            parts.append(f"{split} {len(subjects)} patients / {n_images} images")
        n_atlas = sum(len(s["Atlas"]) for s in fold["train"])
        n_lab = sum(1 for s in fold["train"] if s["Atlas"])
        lines.append(f"fold {k}: " + ", ".join(parts) + f"; {n_atlas} Atlas images on {n_lab} patients")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.resize is not None and min(args.resize) < 1:
        raise InputError(f"--resize W H must be positive, got {args.resize[0]} {args.resize[1]}")
    resize = tuple(args.resize) if args.resize is not None else None
    if args.check:
        folds = check_folds(args.data_dir, resize, args.patient_regex, args.patient_csv)
        as_dicts = [{split: [{"Atlas": s.atlas, "OtherImg": s.others} for s in fold.split(split)]
                     for split in SPLITS} for fold in folds]
        print(_summary(as_dicts))
        print(f"{args.data_dir}: the {NUM_FOLDS} fold files are valid")
        return
    folds = make_folds(args.data_dir, patient_regex=args.patient_regex,
                       patient_csv=args.patient_csv, labelled_per_patient=args.labelled_per_patient,
                       labelled_patients=args.labelled_patients, seed=args.seed, resize=resize,
                       overwrite=args.overwrite)
    print(_summary(folds))
    print(f"wrote {fold_path(args.data_dir, 1)} ... {fold_path(args.data_dir, NUM_FOLDS).name} (seed {args.seed})")


if __name__ == "__main__":
    run_cli(main)

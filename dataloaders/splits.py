"""Patient-disjoint 5-fold splits of a dataset folder: ``DATA_DIR/train_dict{1..5}.json``.

The command is ``python -m utils.make_folds``; the file format is :mod:`dataloaders.folds`.

Splitting (docs/METHOD.md section 1): the patients are dealt into five test sets that
partition them (5-fold cross-validation); in fold k, val is ``val_fraction`` (default
1/8) of the other patients (at least one when possible) and the rest train, about
7:1:2. A fold with fewer than :data:`MIN_VAL_PATIENTS` val patients is a warning:
checkpoint selection on one or two patients is noise (docs/COMPARISON.md). Patients
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

import csv
import math
import os
import random
import re
import sys
from pathlib import Path
from typing import Iterable

from dataloaders.dataset import IMAGE_EXTS, DatasetFolder
from dataloaders.folds import NUM_FOLDS, SPLITS, Fold, load_fold, write_folds
from utils.errors import InputError, short_list

DEFAULT_PATIENT_REGEX = r"^(.+)_[^_]+$"
DEFAULT_SEED = 3407
VAL_FRACTION = 1 / 8
MIN_VAL_PATIENTS = 3


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


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
        _warn(f"{csv_path}: {len(unused)} row(s) name no image in Image/ and are ignored: {short_list(unused)}")
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

def split_patients(patients: dict[str, list[str]], seed: int = DEFAULT_SEED,
                   val_fraction: float = VAL_FRACTION) -> list[dict[str, list[str]]]:
    """Patient -> images map -> five ``{"train", "val", "test"}`` lists of patient ids (sorted).

    Test sets partition the patients (single-image patients are dealt evenly too);
    val = ``val_fraction`` of the rest (rounded half up), at least one multi-image
    patient and at most all but one of them (train keeps one), plus every single-image
    patient of the rest (they cannot train).
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if len(patients) < NUM_FOLDS:
        raise InputError(f"found {len(patients)} patient(s) ({short_list(sorted(patients))}); "
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
        n_val = max(1, _round_half_up((len(rest_multi) + len(rest_single)) * val_fraction))
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
              f"{short_list(train_only, 10)}")
    if dropped:
        _warn(f"{len(dropped)} single-image patient(s) without a label can neither train nor be tested "
              f"and are left out: {short_list(dropped, 10)}")
    return train_only, dropped


def warn_small_val(splits: list[dict[str, list[str]]], val_fraction: float) -> None:
    """The warning for folds with fewer than :data:`MIN_VAL_PATIENTS` val patients, with the
    ``--val-fraction`` that would give them enough (and what it costs train)."""
    small = [(k, len(split["val"])) for k, split in enumerate(splits, start=1) if len(split["val"]) < MIN_VAL_PATIENTS]
    if not small:
        return
    rest = min(len(split["train"]) + len(split["val"]) for split in splits)
    needed = math.ceil(100 * (MIN_VAL_PATIENTS - 0.5) / rest) / 100
    way = (f"pass --val-fraction {needed:g} (train keeps about {rest - MIN_VAL_PATIENTS} of {rest} non-test "
           f"patients) or add patients" if rest > MIN_VAL_PATIENTS else "add patients")
    _warn(f"fold(s) {', '.join(str(k) for k, _ in small)} select checkpoints on fewer than {MIN_VAL_PATIENTS} val "
          f"patients ({', '.join(str(n) for _, n in small)} with --val-fraction {val_fraction:g}): selection on one "
          f"or two patients is noise that the test comparison sees only over several seeds; {way}")


def make_folds(data_dir: str | os.PathLike, patient_regex: str | None = DEFAULT_PATIENT_REGEX,
               patient_csv: str | os.PathLike | None = None, labelled_per_patient: int = 1,
               labelled_patients: float = 1.0, seed: int = DEFAULT_SEED,
               resize: tuple[int, int] | None = None, overwrite: bool = False,
               val_fraction: float = VAL_FRACTION) -> list[dict]:
    """Write ``data_dir/train_dict{1..5}.json`` and return the five fold dicts.

    ``labelled_per_patient``: Atlas images per labelled training patient (at most
    its image count - 1, so that one stays unlabelled); ``labelled_patients``:
    fraction in (0, 1] of each fold's training patients that get Atlas images
    (at least one), the others get ``"Atlas": []``. ``resize``: ``(W, H)`` for
    datasets with mixed image sizes. ``val_fraction``: the share of each fold's non-test
    patients in val (:func:`split_patients`). Existing fold files with different content
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
              f"{short_list(orphans)}")
    patients: dict[str, list[str]] = {}
    for name, patient in ids.items():
        patients.setdefault(patient, []).append(name)
    train_only, dropped = _train_only_patients(folder, patients)
    evaluable = {p: images for p, images in patients.items() if p not in train_only and p not in dropped}
    singles = sorted(p for p, images in evaluable.items() if len(images) < 2)
    if singles:
        _warn(f"{len(singles)} patient(s) have a single image and cannot be registered, so they are "
              f"kept out of every train set (they go to val/test): {short_list(singles, 10)}")

    splits = split_patients(evaluable, seed, val_fraction)
    warn_small_val(splits, val_fraction)
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
              f"at least one image per patient stays unlabelled: {short_list(sorted(capped))}")

    write_folds(folder.root, folds, overwrite)
    for k in range(1, NUM_FOLDS + 1):  # self-check: what we wrote must parse
        load_fold(folder.root, k, folder)
    return folds



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

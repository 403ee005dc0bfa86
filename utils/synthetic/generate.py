"""Synthetic infrared meibography of the everted upper eyelid, for demos and tests.

:func:`generate_dataset` (the command ``python -m utils.make_demo_data DATA_DIR``) writes
``DATA_DIR/Image/P###_k.png`` (8-bit gray), ``DATA_DIR/Label/P###_k.png`` (glands: 0 =
background, 255 = gland) and ``DATA_DIR/Eyelid/P###_k.png`` (eyelid mask, 0/255), patients
``P001..`` and images ``_1..``; the realistic style also writes ``DATA_DIR/dropout.csv``
(``name,dropout,meiboscore``, one row per image).

Each patient has ONE anatomy (the *canonical* image), rendered at twice the resolution on
a canvas a margin larger than the frame, then area-downsampled. Every image of the patient
is that anatomy seen through its own smooth deformation (an affine map, then an elastic
field) under its own acquisition. Image and masks are warped with the same map (image
bilinear; masks: the soft coverage bilinear, thresholded at 0.5).

Styles:

- ``simple``: a dark background, the lid as a brighter curved band and 15-30 bright,
  roughly vertical glands inside it (lid margin at the band's bottom edge; some shortened,
  some missing); per image gain, gamma, vignetting, noise and a few highlights. The eyelid
  mask is the band. Unchanged from the first version of this module for a seed and size.
- ``realistic`` (default; :mod:`utils.synthetic.realistic`): the tarsal plate of an everted
  upper lid (lid margin at its top edge) with 20-30 glands of low, uneven contrast
  running from the margin through about half the plate, lobulated and tortuous, on a textured
  plate with faint vessels; skin with wrinkles and pores and eyelashes above the margin,
  the dark eye below; specular glints along the margin. Each patient gets a dropout level
  (a grade, none, mild, moderate or severe, with the shares of clinicians' grades on public
  upper-lid meibography, ``GRADE_SHARES``, then a level in ``GRADE_RANGES``; see
  :func:`dataset_grade`): glands are removed or shortened over contiguous spans of the
  lid. Per image:
  exposure, vignetting, varying defocus, sometimes motion blur, noise, sometimes an
  examiner's fingertip or a cotton swab (left out of the eyelid and gland masks), and for
  some patients on-screen text in a corner; deformations are larger and more local than
  the simple style's. The eyelid mask is the tarsal plate ``E``, which, as on real lids,
  reaches well beyond the glands (healthy glands fill its margin half); ``dropout`` is the
  geometric truth ``1 - |R & S| / |S|`` on the image's pixels, ``R`` the gland-bearing
  strips and ``S`` the healthy span (see :mod:`utils.synthetic.realistic`), and
  ``meiboscore`` its Arita grade (:func:`utils.clinical.dropout.meiboscore`).

Geometry of image ``k`` (both styles; size ``W x H``; ``A_k`` = ``matrices[k]``, 2x3, OpenCV
inverse-map convention; ``e_k`` = ``fields[k]``, ``[2, H, W]`` pixels, channel 0 = row,
1 = column)::

    image_k(p) = canonical(A_k @ (p + e_k(p), 1))

i.e. with the project's spatial transformer, ``image_k ~ warp(canonical,
compose(e_k, field_from_affine(A_k, (H, W))))``. :mod:`utils.synthetic.geometry` turns these
into ``cv2.remap`` coordinate maps (``view_to_canonical``, ``pair_maps``).

Output is a deterministic function of the seed, the style and the patient number (patient
``i`` does not depend on how many patients are generated).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from utils.synthetic.realistic import GRADE_RANGES, GRADE_SHARES, generate_realistic_patient
from utils.synthetic.simple import generate_simple_patient
from utils.errors import InputError
from utils.files import write_csv, write_png
from utils.clinical.dropout import meiboscore

DEFAULT_PATIENTS = 12
DEFAULT_IMAGES_PER_PATIENT = 4
DEFAULT_SIZE = (256, 128)  # (W, H)
DEFAULT_SEED = 0
MIN_SIDE, MAX_SIDE = 32, 8192
DEMO_FILE = re.compile(r"P\d{3,}_\d+\.png")
STYLES = ("realistic", "simple")
DEFAULT_STYLE = "realistic"
DROPOUT_CSV = "dropout.csv"
GRADE_MIXES = ("real", "even")
DEFAULT_GRADE_MIX = "real"
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0

# ---------------------------------------------------------------------------------------------
# names


def demo_name(patient: int, image: int) -> str:
    """File name stem of image ``image`` (1-based) of patient ``patient`` (1-based): ``P007_2``."""
    return f"P{patient:03d}_{image}"


# ---------------------------------------------------------------------------------------------
# public API


def generate_patient(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE,
                     images_per_patient: int = DEFAULT_IMAGES_PER_PATIENT,
                     style: str = DEFAULT_STYLE,
                     dropout_range: tuple[float, float] | None = None) -> dict:
    """One synthetic patient, in memory. ``size`` is ``(W, H)``; ``style`` is ``"realistic"``
    or ``"simple"``; ``dropout_range`` (realistic only): the patient's dropout level is drawn
    uniformly from it (``None``: a random grade, then a level within it).

    Returns a dict (lists have one entry per image, ``H x W`` arrays):

    - ``"images"``: float32 ``[H, W]`` in [0, 1] (what is saved, before 8-bit rounding);
    - ``"masks"``: uint8 ``[H, W]`` in {0, 1}, the glands;
    - ``"lid_masks"``: uint8 ``[H, W]`` in {0, 1}, the eyelid mask (simple: the lid band;
      realistic: the tarsal plate, whose margin half the glands fill, less any occluder);
    - ``"matrices"``: 2x3 float64 ``A_k`` (frame pixel -> canonical point, OpenCV inverse-map
      convention); ``"fields"``: float32 ``[2, H, W]`` elastic fields ``e_k`` (pixels,
      channel 0 = row). Image k is ``canonical(A_k @ (p + e_k(p)))``, see the module docstring;
    - ``"canonical_image"`` (float32, illumination-free), ``"canonical_mask"`` and
      ``"canonical_lid"`` (uint8 {0, 1}): the anatomy in the canonical frame ``[H, W]``
      (views may also see the canonical canvas's margin just outside this frame).

    The realistic style adds ``"region_masks"``, ``"dropout"``, ``"acquisition"``,
    ``"dropout_level"``, ``"canonical_dropout"`` and ``"canonical_region"``
    (:func:`utils.synthetic.realistic.generate_realistic_patient`).
    """
    if style == "realistic":
        return generate_realistic_patient(rng, (int(size[0]), int(size[1])), images_per_patient,
                                          dropout_range)
    if style != "simple":
        raise InputError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return generate_simple_patient(rng, size, images_per_patient)


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    """The generator of patient ``patient`` (1-based) for dataset seed ``seed``."""
    return np.random.default_rng([int(seed), int(patient)])


def dataset_grade(seed: int, patient: int, mix: str = DEFAULT_GRADE_MIX) -> int:
    """The dropout grade (0-3) of patient ``patient`` (1-based) of a data set.

    ``"even"``: the patients cycle through the grades (``(patient - 1) % 4``). ``"real"``:
    ``t = frac(frac(seed * sqrt(2)) + patient * (sqrt(5) - 1) / 2)`` (a golden-ratio
    sequence, so that any run of patients holds the grades in about the shares
    ``GRADE_SHARES``), and the grade is the share interval holding ``t``. Either way patient
    ``i``'s grade does not depend on how many patients are generated.
    """
    if mix == "even":
        return (patient - 1) % len(GRADE_RANGES)
    if mix != "real":
        raise InputError(f"--grade-mix must be one of {', '.join(GRADE_MIXES)}, got {mix!r}")
    t = ((seed * np.sqrt(2.0)) % 1.0 + patient * GOLDEN) % 1.0
    return min(int(np.searchsorted(np.cumsum(GRADE_SHARES), t, side="right")), len(GRADE_SHARES) - 1)


def validate_args(patients: int, images_per_patient: int, size: Sequence[int], seed: int,
                  style: str = DEFAULT_STYLE,
                  dropout_range: Sequence[float] | None = None, grade_mix: str | None = None) -> None:
    """Raise a one-line :class:`InputError` for unusable generation settings (``grade_mix``
    None: the default)."""
    if patients < 1:
        raise InputError(f"--patients must be at least 1, got {patients}")
    if images_per_patient < 2:
        raise InputError(f"--images-per-patient must be at least 2 (registration pairs images "
                         f"of one patient), got {images_per_patient}")
    if len(size) != 2:
        raise InputError(f"--size takes two numbers W H, got {list(size)}")
    width, height = size
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InputError(f"--size {width} {height}: width and height must be between {MIN_SIDE} "
                         f"and {MAX_SIDE} pixels")
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    if style not in STYLES:
        raise InputError(f"--style must be one of {', '.join(STYLES)}, got {style!r}")
    if dropout_range is not None:
        if style != "realistic":
            raise InputError("--dropout applies to --style realistic only")
        if len(dropout_range) != 2 or not 0.0 <= dropout_range[0] <= dropout_range[1] <= 1.0:
            raise InputError(f"--dropout takes LO HI with 0 <= LO <= HI <= 1, got "
                             f"{list(dropout_range)}")
    if grade_mix is not None and style != "realistic":
        raise InputError("--grade-mix applies to --style realistic only")
    if grade_mix is not None and grade_mix not in GRADE_MIXES:
        raise InputError(f"--grade-mix must be one of {', '.join(GRADE_MIXES)}, got {grade_mix!r}")


def _prepare_output(out_dir: Path, overwrite: bool) -> tuple[Path, Path, Path]:
    """Create ``Image/``, ``Label/`` and ``Eyelid/``; refuse to mix with existing files unless
    ``overwrite``, which deletes earlier demo files (``P###_k.png``, ``dropout.csv``) only."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder; choose another DATA_DIR")
    dirs = (out_dir / "Image", out_dir / "Label", out_dir / "Eyelid")
    existing = [p for d in dirs if d.is_dir() for p in sorted(d.iterdir())]
    table = out_dir / DROPOUT_CSV
    if (existing or table.exists()) and not overwrite:
        example = existing[0].name if existing else table.name
        raise InputError(f"{out_dir}: already holds demo output (e.g. {example}); pass --overwrite "
                         f"to replace a previous demo set or choose an empty DATA_DIR")
    foreign = [p for p in existing if not (p.is_file() and DEMO_FILE.fullmatch(p.name))]
    if table.exists() and not table.is_file():
        foreign.append(table)
    if foreign:
        raise InputError(f"{foreign[0]}: not a demo file (P###_k.png, {DROPOUT_CSV}); --overwrite "
                         f"only replaces demo data, so choose another DATA_DIR or move this away")
    for path in existing + ([table] if table.exists() else []):
        path.unlink()
    for folder in dirs:
        folder.mkdir(parents=True, exist_ok=True)
    return dirs


def _write_dropout_csv(path: Path, rows: list[tuple[str, float]]) -> None:
    """``name,dropout,meiboscore``; the grade is that of the dropout as written (6 decimals)."""
    table = []
    for name, dropout in rows:
        value = round(float(dropout), 6)
        table.append({"name": name, "dropout": f"{value:.6f}", "meiboscore": meiboscore(value)})
    write_csv(path, table, ["name", "dropout", "meiboscore"])


def generate_dataset(out_dir, patients: int = DEFAULT_PATIENTS,
                     images_per_patient: int = DEFAULT_IMAGES_PER_PATIENT,
                     size: tuple[int, int] = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
                     progress: bool = True, overwrite: bool = False, style: str = DEFAULT_STYLE,
                     dropout_range: tuple[float, float] | None = None,
                     grade_mix: str | None = None) -> list[str]:
    """Write ``out_dir/Image/P###_k.png`` (8-bit gray), ``out_dir/Label/P###_k.png`` (glands,
    0/255) and ``out_dir/Eyelid/P###_k.png`` (eyelid, 0/255) for ``patients`` patients x
    ``images_per_patient`` images of ``size = (W, H)`` in ``style``; the realistic style also
    writes ``out_dir/dropout.csv`` (``name,dropout,meiboscore``, one row per image). Patient
    ``i``'s dropout level is drawn from ``dropout_range``, by default from
    ``GRADE_RANGES[dataset_grade(seed, i, grade_mix)]`` (``grade_mix`` None: "real").

    Raises :class:`InputError` on bad settings or when ``Image/``/``Label/``/``Eyelid/`` already
    hold files (``overwrite=True`` replaces an earlier demo set). Returns the names written.
    """
    validate_args(patients, images_per_patient, size, seed, style, dropout_range, grade_mix)
    image_dir, label_dir, lid_dir = _prepare_output(Path(out_dir), overwrite)
    size = (int(size[0]), int(size[1]))
    names, dropout_rows = [], []
    for patient in tqdm(range(1, patients + 1), desc="demo patients", unit="patient",
                        disable=not progress):
        grades = tuple(dropout_range) if dropout_range is not None else \
            GRADE_RANGES[dataset_grade(seed, patient, grade_mix or DEFAULT_GRADE_MIX)]
        data = generate_patient(patient_rng(seed, patient), size, images_per_patient, style,
                                grades if style == "realistic" else None)
        for k, (image, mask, lid) in enumerate(zip(data["images"], data["masks"],
                                                   data["lid_masks"]), start=1):
            name = demo_name(patient, k)
            write_png(image_dir / f"{name}.png", np.round(image * 255.0).astype(np.uint8))
            write_png(label_dir / f"{name}.png", mask * np.uint8(255))
            write_png(lid_dir / f"{name}.png", lid * np.uint8(255))
            names.append(name)
            if "dropout" in data:
                dropout_rows.append((name, data["dropout"][k - 1]))
    if dropout_rows:
        _write_dropout_csv(Path(out_dir) / DROPOUT_CSV, dropout_rows)
    return names

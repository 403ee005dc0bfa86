"""Import the public MGD-1k meibography dataset (Saha et al., The Ocular Surface 2022).

:func:`import_mgd1k` is the command ``python -m utils.import_mgd1k SRC DST``. ``SRC`` is the unpacked download (or a folder directly above it)::

    SRC/Original Images/DMI_<OD|OS>_<UPPER|LOWER>_REFLECTED_IR_<ID>.JPG
    SRC/Meibomian Gland Labels/<same stem>.png        gland mask, anti-aliased 8-bit
    SRC/Eyelid Lebels/<same stem>.png                 eyelid mask (the published spelling)
    SRC/Graded Meiboscore/Images with Meiboscore.csv  rows '<stem>.png,<grade 0-3>', no header

``DST`` receives this project's layout (README.md, "Your own data")::

    DST/Image/<name>.jpg | <name>.png   infrared image
    DST/Label/<name>.png                gland mask, 0/255
    DST/Eyelid/<name>.png               eyelid mask, 0/255
    DST/grades.csv                      header 'name,grade'

Names: ``mgd<ID>_<EYE>-<lid>``, e.g. ``mgd0012_OS-upper`` (ID zero-padded to four
digits). ``dataloaders.splits``' default rule (patient = everything before the last
underscore) reads the patient ``mgd0012`` for both eyes and both lids.

Mirroring: left-eye (OS) images and their masks are flipped left-right (unless
``--no-mirror``) so that all images of a patient share the right eye's orientation.

Image files: an image that is not flipped is copied byte for byte (exact, and no
second lossy JPEG compression); a flipped one is decoded, flipped and written as
lossless PNG (one channel when its three channels are equal). Decoding uses
``cv2.IMREAD_UNCHANGED`` like ``dataloaders.dataset``, so a flipped image is exactly
the mirror of the pixels the data loader would read from the source file.

Masks: a pixel is foreground when its value is above half the type's range (> 127
for 8-bit, as ``dataloaders.dataset.binarise_label`` does for anti-aliased masks);
0/1 masks: > 0. Colour masks use the maximum over their channels.
"""
from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from dataloaders.dataset import decode_image
from dataloaders.grades import decode_text, grade_rows
from utils.errors import InputError, short_list
from utils.files import write_csv, write_png

SOURCE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
LIDS = ("upper", "lower")
LID_CHOICES = ("upper", "lower", "both")
FOLDER_NAMES = {
    "images": ("original images",),
    "glands": ("meibomian gland labels", "meibomian gland lebels"),
    "eyelids": ("eyelid lebels", "eyelid labels"),
    "grades": ("graded meiboscore",),
}
SOURCE_STEM = re.compile(r"DMI_(OD|OS)_(UPPER|LOWER)_REFLECTED_IR_(\d+)", re.IGNORECASE)
OUTPUT_FILE = re.compile(r"mgd\d+_O[DS]-(upper|lower)\.(png|jpg|jpeg|bmp|tif|tiff)")
OUTPUT_DIRS = ("Image", "Label", "Eyelid")
GRADES_FILE = "grades.csv"
NAMING_HINT = "DMI_<OD|OS>_<UPPER|LOWER>_REFLECTED_IR_<ID>"


# ----------------------------------------------------------------------------- names

@dataclass(frozen=True, order=True)
class SourceKey:
    """What an MGD-1k file name says: patient ``ID``, ``eye`` (OD/OS) and ``lid`` (upper/lower)."""

    patient: int
    eye: str
    lid: str


def parse_source_name(stem: str) -> SourceKey | None:
    """``DMI_OS_UPPER_REFLECTED_IR_12`` (any case, surrounding spaces allowed) -> key; else None."""
    match = SOURCE_STEM.fullmatch(stem.strip())
    if match is None:
        return None
    eye, lid, patient = match.groups()
    return SourceKey(patient=int(patient), eye=eye.upper(), lid=lid.lower())


def output_name(key: SourceKey) -> str:
    """Dataset name of a source image: ``mgd0012_OS-upper`` (patient id before the last '_')."""
    return f"mgd{key.patient:04d}_{key.eye}-{key.lid}"


def source_stem(key: SourceKey) -> str:
    """The published file stem of ``key``: ``DMI_OS_UPPER_REFLECTED_IR_12``."""
    return f"DMI_{key.eye}_{key.lid.upper()}_REFLECTED_IR_{key.patient}"


def patient_of(name: str) -> str:
    """The patient id ``dataloaders.splits`` reads from an :func:`output_name` by default."""
    return name.rsplit("_", 1)[0]


def selected_lids(lid: str) -> tuple[str, ...]:
    """``--lid`` value -> the lids to import."""
    if lid not in LID_CHOICES:
        raise InputError(f"--lid must be one of {', '.join(LID_CHOICES)}, got '{lid}'")
    return LIDS if lid == "both" else (lid,)


def needs_mirror(key: SourceKey, mirror: bool) -> bool:
    """Left eyes are flipped to the right eye's orientation when ``mirror`` is on."""
    return mirror and key.eye == "OS"


# ----------------------------------------------------------------------------- pixels

def mirror_lr(array: np.ndarray) -> np.ndarray:
    """Flip ``[H, W]`` or ``[H, W, C]`` left-right (a contiguous copy)."""
    return np.ascontiguousarray(array[:, ::-1])


def compact_channels(array: np.ndarray) -> np.ndarray:
    """A 3-channel image whose channels are all equal -> its single channel; else unchanged."""
    if array.ndim == 3 and array.shape[2] == 3:
        first = array[:, :, 0]
        if np.array_equal(first, array[:, :, 1]) and np.array_equal(first, array[:, :, 2]):
            return np.ascontiguousarray(first)
    return array


def binarise_mask(array: np.ndarray) -> np.ndarray:
    """Raw mask (gray or colour, any anti-aliasing) -> ``uint8 [H, W]`` 0/255.

    Foreground: above half the integer type's range (> 127 for 8-bit) or > 0.5 for
    floats; a 0/1 mask: > 0. Colour masks use the maximum over the first three channels.
    """
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2)
    if np.issubdtype(array.dtype, np.integer):
        threshold = 0 if array.size and array.max() <= 1 else np.iinfo(array.dtype).max // 2
    else:
        threshold = 0.5
    return (array > threshold).astype(np.uint8) * np.uint8(255)


def decode(path: Path) -> np.ndarray | None:
    """Decode an image file as ``cv2.IMREAD_UNCHANGED`` does; None when it cannot be read or decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    return decode_image(data) if data.size else None


def image_suffix(path: Path) -> str:
    """Lower-case output extension for a copied image (``.JPG``/``.jpeg`` -> ``.jpg``)."""
    suffix = path.suffix.lower()
    return ".jpg" if suffix == ".jpeg" else suffix


# ----------------------------------------------------------------------------- source tree

@dataclass
class SourceLayout:
    """Where the parts of an MGD-1k download are; a missing optional part is None."""

    root: Path
    images: Path
    glands: Path | None
    eyelids: Path | None
    grades_csv: Path | None


def _normalised(name: str) -> str:
    return " ".join(re.split(r"[\s_-]+", name.strip().lower())).strip()


def find_subfolder(parent: Path, names: Iterable[str]) -> Path | None:
    """The folder in ``parent`` whose name matches one of ``names`` (case, spaces, '_' and '-' ignored)."""
    wanted = {_normalised(n) for n in names}
    for path in sorted(parent.iterdir()):
        if path.is_dir() and _normalised(path.name) in wanted:
            return path
    return None


def find_grades_csv(root: Path, grades_dir: Path | None) -> Path | None:
    """The meiboscore CSV: a ``*meiboscore*.csv`` in the grades folder (first) or the root."""
    for folder in (grades_dir, root):
        if folder is None:
            continue
        found = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() == ".csv" and "meiboscore" in p.name.lower())
        if found:
            return found[0]
    return None


def locate_source(src: Path) -> SourceLayout:
    """Find the MGD-1k folders in ``src`` or in a folder directly inside it."""
    if not src.is_dir():
        raise InputError(f"SRC {src} does not exist or is not a folder; pass the unpacked MGD-1k folder")
    for root in [src] + sorted(p for p in src.iterdir() if p.is_dir()):
        images = find_subfolder(root, FOLDER_NAMES["images"])
        if images is not None:
            grades_dir = find_subfolder(root, FOLDER_NAMES["grades"])
            return SourceLayout(root=root, images=images,
                                glands=find_subfolder(root, FOLDER_NAMES["glands"]),
                                eyelids=find_subfolder(root, FOLDER_NAMES["eyelids"]),
                                grades_csv=find_grades_csv(root, grades_dir))
    raise InputError(f"{src} has no 'Original Images' folder (nor has any folder directly inside it); "
                     f"pass the unpacked MGD-1k folder as SRC")


@dataclass
class FolderScan:
    """Files of one source folder by key; ``unnamed``: image files not named like MGD-1k;
    ``duplicates``: files whose key an earlier (preferred) file already holds."""

    files: dict[SourceKey, Path] = field(default_factory=dict)
    unnamed: list[Path] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)


def scan_folder(folder: Path | None, preferred: str) -> FolderScan:
    """Index ``folder``'s image files by key; for two files of one key, ``preferred`` extension wins."""
    scan = FolderScan()
    if folder is None:
        return scan
    paths = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SOURCE_EXTS]
    for path in sorted(paths, key=lambda p: (p.suffix.lower() != preferred, p.name)):
        key = parse_source_name(path.stem)
        if key is None:
            scan.unnamed.append(path)
        elif key in scan.files:
            scan.duplicates.append(path)
        else:
            scan.files[key] = path
    return scan


# ----------------------------------------------------------------------------- meiboscore CSV

@dataclass
class GradeTable:
    """Parsed meiboscore CSV: ``grades`` by key; ``bad``: unreadable rows; ``conflicts``:
    keys listed again with another grade (the first grade is kept)."""

    grades: dict[SourceKey, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def parse_grades(text: str) -> GradeTable:
    """The rows of MGD-1k's meiboscore CSV (``<stem>.<ext>,<grade 0-3>``, read by
    :func:`dataloaders.grades.grade_rows`) -> :class:`GradeTable`: a row whose name is no
    MGD-1k image or whose grade is missing or outside 0-3 is bad."""
    table = GradeTable()
    for row in grade_rows(text):
        key = parse_source_name(row.name)
        if key is None or row.grade is None:
            table.bad.append(f"line {row.line}: {row.text}")
        elif key in table.grades and table.grades[key] != row.grade:
            table.conflicts.append(f"line {row.line}: {row.name}")
        else:
            table.grades.setdefault(key, row.grade)
    return table


def read_grade_table(path: Path | None) -> GradeTable:
    """Parse the CSV at ``path``; an empty table when there is none."""
    if path is None:
        return GradeTable()
    try:
        return parse_grades(decode_text(path.read_bytes()))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None


@dataclass
class SourceIndex:
    """Everything read from a download before any pixel is touched."""

    layout: SourceLayout
    images: FolderScan
    glands: FolderScan
    eyelids: FolderScan
    grades: GradeTable


def index_source(src: Path) -> SourceIndex:
    """Locate the folders of ``src``, index their files by key and parse the meiboscore CSV."""
    layout = locate_source(src)
    images = scan_folder(layout.images, ".jpg")
    if not images.files:
        raise InputError(f"{layout.images} holds no images named {NAMING_HINT}.<jpg|png|...>; "
                         f"is SRC the MGD-1k download?")
    return SourceIndex(layout=layout, images=images, glands=scan_folder(layout.glands, ".png"),
                       eyelids=scan_folder(layout.eyelids, ".png"), grades=read_grade_table(layout.grades_csv))


# ----------------------------------------------------------------------------- destination

def previous_import_files(dst: Path) -> list[Path]:
    """Files an earlier import wrote in ``dst``; InputError naming any other file in its folders."""
    found: list[Path] = []
    for sub in OUTPUT_DIRS:
        folder = dst / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not (path.is_file() and OUTPUT_FILE.fullmatch(path.name)):
                raise InputError(f"{path} was not written by this importer; --overwrite only replaces "
                                 f"an earlier import, so move it away or choose another DST")
            found.append(path)
    if (dst / GRADES_FILE).is_file():
        found.append(dst / GRADES_FILE)
    return found


def prepare_destination(dst: Path, overwrite: bool) -> None:
    """Create ``dst/Image``, ``Label`` and ``Eyelid``. A non-empty ``dst`` is an error unless
    ``overwrite``, which deletes an earlier import's files (and nothing else)."""
    if dst.exists() and not dst.is_dir():
        raise InputError(f"DST {dst} exists and is not a folder; choose another DST")
    entries = sorted(p.name for p in dst.iterdir()) if dst.is_dir() else []
    if entries and not overwrite:
        raise InputError(f"DST {dst} is not empty (holds {short_list(entries, 3)}); choose a new or empty "
                         f"folder, or pass --overwrite to replace an earlier import there")
    for path in previous_import_files(dst) if entries else []:
        path.unlink()
    for sub in OUTPUT_DIRS:
        (dst / sub).mkdir(parents=True, exist_ok=True)


def write_image(source: Path, pixels: np.ndarray, out_dir: Path, name: str, flip: bool) -> Path:
    """Copy ``source`` to ``out_dir/<name>.<ext>``, or, when ``flip``, write its mirrored
    ``pixels`` as ``<name>.png``. Returns the written path."""
    if flip:
        path = out_dir / f"{name}.png"
        write_png(path, compact_channels(mirror_lr(pixels)))
        return path
    path = out_dir / f"{name}{image_suffix(source)}"
    try:
        shutil.copyfile(source, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot copy {source} ({exc.strerror or exc})") from None
    return path


def write_mask(source: Path, image_shape: tuple[int, int], out_path: Path, flip: bool) -> str | None:
    """Binarise ``source`` to 0/255, flip when asked, write PNG. Returns a problem (then nothing
    is written) when it cannot be decoded or its size differs from ``image_shape`` (H, W)."""
    raw = decode(source)
    if raw is None:
        return f"{source.name} cannot be decoded"
    if raw.shape[:2] != image_shape:
        return (f"{source.name} is {raw.shape[1]}x{raw.shape[0]} but its image is "
                f"{image_shape[1]}x{image_shape[0]}")
    mask = binarise_mask(raw)
    write_png(out_path, mirror_lr(mask) if flip else mask)
    return None


def write_grades(path: Path, grades: dict[str, int]) -> None:
    """``name,grade`` CSV, rows sorted by name."""
    write_csv(path, [{"name": name, "grade": grades[name]} for name in sorted(grades)], ["name", "grade"])


# ----------------------------------------------------------------------------- import

@dataclass
class ImportReport:
    """What an import wrote; ``warnings`` holds every warning line, in order."""

    dst: Path
    names: list[str] = field(default_factory=list)
    labels: int = 0
    eyelids: int = 0
    grades: int = 0
    patients: int = 0
    left_out_lids: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"warning: {message}", file=sys.stderr)


def _warn_scan(report: ImportReport, scan: FolderScan, what: str) -> None:
    if scan.unnamed:
        report.warn(f"{len(scan.unnamed)} {what} file(s) are not named {NAMING_HINT}: skipped: "
                    f"{short_list([p.name for p in scan.unnamed])}")
    if scan.duplicates:
        report.warn(f"{len(scan.duplicates)} {what} file(s) repeat another file's name with another "
                    f"extension or zero-padding: skipped: {short_list([p.name for p in scan.duplicates])}")


def _warn_missing_folders(report: ImportReport, layout: SourceLayout) -> None:
    if layout.glands is None:
        report.warn(f"{layout.root} has no 'Meibomian Gland Labels' folder: every image is imported "
                    f"as unlabelled")
    if layout.eyelids is None:
        report.warn(f"{layout.root} has no 'Eyelid Lebels' folder: no eyelid masks are imported")
    if layout.grades_csv is None:
        report.warn(f"{layout.root} has no meiboscore CSV ('Graded Meiboscore/Images with "
                    f"Meiboscore.csv'): {GRADES_FILE} is not written")


def _warn_unmatched(report: ImportReport, source: SourceIndex, keys: list[SourceKey],
                    lids: tuple[str, ...]) -> None:
    """Counts of images without masks and of masks without images (selected lids only)."""
    if source.layout.glands is not None:
        unlabelled = [output_name(k) for k in keys if k not in source.glands.files]
        if unlabelled:
            report.warn(f"{len(unlabelled)} image(s) have no gland label: they are imported as "
                        f"unlabelled: {short_list(unlabelled)}")
    if source.layout.eyelids is not None:
        no_lid = [output_name(k) for k in keys if k not in source.eyelids.files]
        if no_lid:
            report.warn(f"{len(no_lid)} image(s) have no eyelid mask: {short_list(no_lid)}")
    images = source.images.files
    for scan, what in ((source.glands, "gland label(s)"), (source.eyelids, "eyelid mask(s)")):
        stray = sorted(p.name for k, p in scan.files.items() if k.lid in lids and k not in images)
        if stray:
            report.warn(f"{len(stray)} {what} have no image: skipped: {short_list(stray)}")


def _warn_grades(report: ImportReport, source: SourceIndex, keys: list[SourceKey],
                 lids: tuple[str, ...]) -> None:
    csv_path, table = source.layout.grades_csv, source.grades
    if csv_path is None:
        return
    if table.bad:
        report.warn(f"{len(table.bad)} row(s) of {csv_path.name} are not "
                    f"'<image>.png,<grade 0-3>': skipped: {short_list(table.bad, 3)}")
    if table.conflicts:
        report.warn(f"{len(table.conflicts)} row(s) of {csv_path.name} grade an image again differently: "
                    f"the first grade is kept: {short_list(table.conflicts, 3)}")
    orphans = sorted(k for k in table.grades if k.lid in lids and k not in source.images.files)
    if orphans:
        report.warn(f"{len(orphans)} CSV row(s) name no image: skipped: "
                    f"{short_list([source_stem(k) + '.png' for k in orphans])}")
    ungraded = [output_name(k) for k in keys if k not in table.grades]
    if ungraded:
        report.warn(f"{len(ungraded)} image(s) have no meiboscore in {csv_path.name}: {short_list(ungraded)}")


def _warn_source(report: ImportReport, source: SourceIndex, keys: list[SourceKey],
                 lids: tuple[str, ...]) -> None:
    """Every warning that the file listing and the CSV alone can raise."""
    _warn_missing_folders(report, source.layout)
    for scan, what in ((source.images, "image"), (source.glands, "gland label"),
                       (source.eyelids, "eyelid mask")):
        _warn_scan(report, scan, what)
    _warn_unmatched(report, source, keys, lids)
    _warn_grades(report, source, keys, lids)


@dataclass
class _Outcome:
    """Result of importing one image."""

    shape: tuple[int, int] | None = None
    gland: bool = False
    eyelid: bool = False
    problems: list[str] = field(default_factory=list)


def import_one(key: SourceKey, image: Path, gland: Path | None, eyelid: Path | None,
               dst: Path, mirror: bool) -> _Outcome:
    """Write one image and its masks; ``shape`` stays None when the image cannot be decoded."""
    outcome = _Outcome()
    pixels = decode(image)
    if pixels is None:
        return outcome
    name, flip = output_name(key), needs_mirror(key, mirror)
    write_image(image, pixels, dst / "Image", name, flip)
    outcome.shape = pixels.shape[:2]
    outcome.gland = _mask_written(gland, outcome, dst / "Label" / f"{name}.png", flip)
    outcome.eyelid = _mask_written(eyelid, outcome, dst / "Eyelid" / f"{name}.png", flip)
    return outcome


def _mask_written(source: Path | None, outcome: _Outcome, out_path: Path, flip: bool) -> bool:
    """Write one mask of ``outcome``'s image; a problem is recorded in ``outcome.problems``."""
    if source is None:
        return False
    problem = write_mask(source, outcome.shape, out_path, flip)
    if problem is not None:
        outcome.problems.append(problem)
    return problem is None


def _check_sizes(report: ImportReport, shapes: dict[str, tuple[int, int]]) -> None:
    counts = Counter(shapes.values())
    if len(counts) > 1:
        (height, width), _ = counts.most_common(1)[0]
        odd = [f"{n} ({s[1]}x{s[0]})" for n, s in shapes.items() if s != (height, width)]
        report.warn(f"images differ in size: most are {width}x{height} (W x H) but {short_list(odd)}; "
                    f"pass --resize W H to the data tools and scripts")


def _warn_singles(report: ImportReport, names: list[str]) -> None:
    per_patient = Counter(patient_of(n) for n in names)
    singles = sorted(p for p, c in per_patient.items() if c < 2)
    if singles:
        report.warn(f"{len(singles)} patient(s) have a single image, which cannot be registered "
                    f"(make_folds keeps them out of training): {short_list(singles)}")


def _import_images(report: ImportReport, source: SourceIndex, keys: list[SourceKey], mirror: bool,
                   progress: bool) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """Write every selected image and its masks into ``report.dst``; counts go to ``report``.
    Returns the (H, W) of each imported image and the grades of the imported images."""
    shapes: dict[str, tuple[int, int]] = {}
    grades: dict[str, int] = {}
    undecodable: list[str] = []
    mask_problems: list[str] = []
    for key in tqdm(keys, desc="importing MGD-1k", unit="image", disable=not progress):
        image = source.images.files[key]
        outcome = import_one(key, image, source.glands.files.get(key), source.eyelids.files.get(key),
                             report.dst, mirror)
        if outcome.shape is None:
            undecodable.append(image.name)
            continue
        name = output_name(key)
        report.names.append(name)
        shapes[name] = outcome.shape
        report.labels += outcome.gland
        report.eyelids += outcome.eyelid
        mask_problems += outcome.problems
        if key in source.grades.grades:
            grades[name] = source.grades.grades[key]
    if undecodable:
        report.warn(f"{len(undecodable)} image file(s) cannot be decoded: skipped: {short_list(undecodable, 10)}")
    if mask_problems:
        report.warn(f"{len(mask_problems)} mask file(s) are unusable and were skipped (their images "
                    f"are imported without them): {short_list(mask_problems, 10)}")
    return shapes, grades


def import_mgd1k(src: str | Path, dst: str | Path, lid: str = "upper", mirror: bool = True,
                 overwrite: bool = False, progress: bool = True) -> ImportReport:
    """Import the MGD-1k download at ``src`` into ``dst`` (layout in the module docstring).

    ``lid``: ``upper`` (the paper's setting), ``lower`` or ``both``; ``mirror``: flip OS
    images and masks left-right; ``overwrite``: replace an earlier import in a non-empty
    ``dst``. Missing, extra, duplicate or undecodable files are warnings (printed to stderr
    and kept in the report); bad arguments and an empty result are InputErrors.
    """
    src, dst = Path(src), Path(dst)
    lids = selected_lids(lid)
    source = index_source(src)
    if dst.resolve() in (src.resolve(), source.layout.root.resolve()):
        raise InputError(f"DST {dst} is the source folder; choose a separate folder for the import")
    keys = sorted(k for k in source.images.files if k.lid in lids)
    if not keys:
        raise InputError(f"{source.layout.images} holds no {' or '.join(lids)}-lid images; try --lid both")
    prepare_destination(dst, overwrite)

    report = ImportReport(dst=dst, left_out_lids=len(source.images.files) - len(keys))
    _warn_source(report, source, keys, lids)
    shapes, grades = _import_images(report, source, keys, mirror, progress)
    if not report.names:
        raise InputError(f"none of the {len(keys)} images in {source.layout.images} could be decoded")
    if source.layout.grades_csv is not None:
        write_grades(dst / GRADES_FILE, grades)
    report.grades = len(grades)
    report.patients = len({patient_of(n) for n in report.names})
    _check_sizes(report, shapes)
    _warn_singles(report, report.names)
    return report

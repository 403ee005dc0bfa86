"""Intra-patient affine pre-alignment, cached per dataset (METHOD.md section 1).

For every ordered pair ``(a, b)`` of images of one patient, ``matrix(a, b)`` is a 2x3
float64 affine in OpenCV's *inverse-map* convention: it maps a fixed-frame (``b``)
pixel ``(x, y, 1)`` to the moving-frame (``a``) pixel it samples, so
``cv2.warpAffine(a, M, (W, H), flags=INTER_LINEAR | WARP_INVERSE_MAP) ~ b`` and
``warp(a, field_from_affine(M, (H, W))) ~ b``.

Estimation (:func:`estimate_affine`): lightly smoothed, normalised images; a
Gaussian pyramid; a translation from phase correlation at the coarsest level;
then OpenCV ECC (``MOTION_AFFINE``) coarse to fine, the translation doubling
from one level to the next. A pair whose ECC fails, diverges, or ends with a
correlation below identity's (by more than ``CORR_TOL``) falls back to identity
with a warning.

Cache: ``DATA_DIR/prealign.json`` holds only matrices and correlations (warped
images are never stored: consumers call ``networks.spatial_transformer.warp``),
plus each image's sha1 and the processing size (H, W). :func:`ensure_prealignment`
recomputes only pairs that are missing or involve an image whose bytes changed,
and everything when the processing size or the method version changed.

CLI: ``python -m utils.prealign DATA_DIR [--workers N] [--resize W H]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from dataloaders.dataset import NUM_FOLDS, DatasetFolder, fold_path, load_fold, read_image
from utils.errors import InputError, run_cli

CACHE_NAME = "prealign.json"
# Bump when the estimation changes in a way that should invalidate cached matrices.
METHOD_VERSION = 1

# Estimation parameters (tuned with benchmarks/bench_prealign.py on 740 x 350 images).
SMOOTH_SIGMA = 1.0          # Gaussian sigma (pixels, processing size) before anything else
COARSEST_MIN_SIDE = 24      # pyramid stops before the shorter side would drop below this
MAX_LEVELS = 4              # at most this many levels (level 0 = processing size)
FINEST_LEVEL = 0            # finest level ECC runs on (0 = processing size)
ECC_ITERS_COARSE = 100      # ECC iterations at the coarsest level
ECC_ITERS_FINE = 20         # ECC iterations at each finer level
ECC_EPS = 1e-5              # ECC stop: increment of the correlation coefficient
ECC_GAUSS = 3               # ECC's internal Gaussian filter size (images are pre-smoothed)
MIN_OVERLAP = 0.5           # a result whose warped moving image covers less of fixed diverged
DET_RANGE = (0.5, 2.0)      # allowed determinant of the linear part
CORR_TOL = 1e-3             # an estimate this much below identity's correlation is as good (aligned pair)

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


# --------------------------------------------------------------------------- estimation

def _prepare(image: np.ndarray, levels: int | None = None) -> list[np.ndarray]:
    """``float32 [H, W]`` -> Gaussian pyramid of the smoothed, zero-mean unit-std image.

    Element ``l`` has size ``ceil(H / 2^l) x ceil(W / 2^l)``; pixel ``p`` at level
    ``l + 1`` sits at ``2 p`` of level ``l`` (``cv2.pyrDown``).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a [H, W] image, got shape {image.shape}")
    smooth = cv2.GaussianBlur(image, (0, 0), SMOOTH_SIGMA) if SMOOTH_SIGMA > 0 else image.copy()
    std = float(smooth.std())
    smooth = (smooth - float(smooth.mean())) / std if std > 1e-8 else np.zeros_like(smooth)
    if levels is None:
        levels = 1
        while levels < MAX_LEVELS and min(smooth.shape) // 2 ** levels >= COARSEST_MIN_SIDE:
            levels += 1
    pyramid = [smooth]
    for _ in range(1, levels):
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    return pyramid


def _scale_matrix(matrix: np.ndarray, factor: float) -> np.ndarray:
    """Inverse-map affine between pyramid levels whose coordinates differ by ``factor``
    (``x_new = factor * x_old``): the linear part is unchanged, the translation scales."""
    out = matrix.copy()
    out[:, 2] *= factor
    return out


def _correlation(moving: np.ndarray, fixed: np.ndarray, matrix: np.ndarray) -> tuple[float, float]:
    """Pearson correlation of ``fixed`` and ``moving`` warped by ``matrix`` (inverse map),
    over the fixed pixels whose source lies inside ``moving``; and that overlap fraction.
    The correlation is 0 when either side has no variance there."""
    height, width = fixed.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(moving, matrix, (width, height), flags=flags)
    valid = cv2.warpAffine(np.ones_like(moving, dtype=np.uint8), matrix, (width, height),
                           flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    overlap = float(valid.mean())
    if valid.sum() < 16:
        return 0.0, overlap
    a = warped[valid].astype(np.float64)
    b = fixed[valid].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    # elementwise sums, not BLAS dot products: a threaded BLAS would busy-spin extra cores
    denom = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return (float(np.sum(a * b)) / denom if denom > 1e-12 else 0.0), overlap


def _phase_shift(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Translation-only inverse-map affine from phase correlation.

    ``cv2.phaseCorrelate(fixed, moving)`` returns ``(dx, dy)`` with
    ``moving(p) ~ fixed(p - d)``, i.e. ``fixed(p) ~ moving(p + d)``: ``d`` is the
    inverse-map translation directly (checked in tests/test_prealign.py).
    """
    window = cv2.createHanningWindow((fixed.shape[1], fixed.shape[0]), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(fixed.astype(np.float64), moving.astype(np.float64), window)
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def _ecc(moving: np.ndarray, fixed: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """One ECC MOTION_AFFINE run (raises cv2.error when it fails)."""
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, ECC_EPS)
    warp = init.astype(np.float32).copy()
    _, warp = cv2.findTransformECC(fixed, moving, warp, cv2.MOTION_AFFINE, criteria, None, ECC_GAUSS)
    return warp.astype(np.float64)


def _plausible(matrix: np.ndarray, overlap: float) -> bool:
    det = float(np.linalg.det(matrix[:, :2]))
    return bool(np.all(np.isfinite(matrix))) and DET_RANGE[0] <= det <= DET_RANGE[1] \
        and overlap >= MIN_OVERLAP


def _estimate_prepared(moving: list[np.ndarray], fixed: list[np.ndarray],
                       label: str = "pair") -> tuple[np.ndarray, float, bool]:
    """:func:`estimate_affine` on pyramids from :func:`_prepare` (same number of levels)."""
    levels = min(len(moving), len(fixed))
    finest = min(FINEST_LEVEL, levels - 1)
    coarse = levels - 1
    identity_corr, _ = _correlation(moving[finest], fixed[finest], IDENTITY)

    # Coarsest level: ECC from the phase-correlation translation and from identity; keep the best.
    best, best_corr, errors = None, -np.inf, []
    for init in (_phase_shift(moving[coarse], fixed[coarse]), IDENTITY):
        try:
            candidate = _ecc(moving[coarse], fixed[coarse], init, ECC_ITERS_COARSE)
        except cv2.error as exc:
            message = str(getattr(exc, "err", "") or exc).strip()
            if message not in errors:
                errors.append(message)
            continue
        corr, overlap = _correlation(moving[coarse], fixed[coarse], candidate)
        if _plausible(candidate, overlap) and corr > best_corr:
            best, best_corr = candidate, corr

    # Finer levels: refine; a failing level keeps the coarser estimate (checked below).
    if best is not None:
        for level in range(coarse - 1, finest - 1, -1):
            best = _scale_matrix(best, 2.0)
            try:
                best = _ecc(moving[level], fixed[level], best, ECC_ITERS_FINE)
            except cv2.error:
                pass
        best = _scale_matrix(best, 2.0 ** finest)

    if best is not None:
        corr, overlap = _correlation(moving[finest], fixed[finest], _scale_matrix(best, 0.5 ** finest))
        if _plausible(best, overlap) and corr >= identity_corr - CORR_TOL:
            return best, corr, True
        reason = "the estimate diverged (degenerate matrix or too little overlap)" \
            if corr >= identity_corr - CORR_TOL else \
            f"correlation {corr:.4f} is below identity's {identity_corr:.4f}"
    else:
        reason = f"ECC failed ({'; '.join(errors)})" if errors else \
            "the estimate diverged (degenerate matrix or too little overlap)"
    warnings.warn(f"prealign {label}: {reason}; using the identity", RuntimeWarning, stacklevel=2)
    return IDENTITY.copy(), identity_corr, False


def estimate_affine(moving: np.ndarray, fixed: np.ndarray,
                    label: str = "pair") -> tuple[np.ndarray, float, bool]:
    """Affine ``M`` (2x3 float64, inverse map) with ``warpAffine(moving, M, INVERSE_MAP) ~ fixed``.

    ``moving``, ``fixed``: ``float32 [H, W]`` in [0, 1], same size. Returns
    ``(M, correlation, ok)``: the Pearson correlation of the smoothed fixed image and
    the warped smoothed moving image over their overlap, and ``ok = False`` when the
    estimate failed and ``M`` is the identity (a RuntimeWarning naming ``label`` is
    emitted then). Same as ``cv2.findTransformECC(templateImage=fixed,
    inputImage=moving, MOTION_AFFINE)`` but initialised and run coarse to fine.
    """
    moving = np.asarray(moving, dtype=np.float32)
    fixed = np.asarray(fixed, dtype=np.float32)
    if moving.shape != fixed.shape or moving.ndim != 2:
        raise ValueError(f"images must be [H, W] of one size, got {moving.shape} and {fixed.shape}")
    pyr_fixed = _prepare(fixed)
    pyr_moving = _prepare(moving, len(pyr_fixed))
    return _estimate_prepared(pyr_moving, pyr_fixed, label)


# --------------------------------------------------------------------------- cached result

@dataclass(frozen=True)
class PairResult:
    """One estimated pair: 2x3 inverse-map ``matrix``, achieved ``correlation``, ``ok``
    (False = estimation failed and ``matrix`` is the identity fallback)."""

    matrix: np.ndarray
    correlation: float
    ok: bool


class Prealignment:
    """Affine pre-alignment of intra-patient image pairs at one processing size.

    Returned by :func:`ensure_prealignment` (or :meth:`load`). ``size`` is ``(H, W)``.
    ``computed`` lists the pairs the producing call estimated, ``reused`` the
    requested pairs it took from the cache.
    """

    def __init__(self, size: tuple[int, int], pairs: dict[tuple[str, str], PairResult],
                 path: Path | None = None, computed: Sequence[tuple[str, str]] = (),
                 reused: Sequence[tuple[str, str]] = ()):
        self.size = (int(size[0]), int(size[1]))
        self.path = path
        self._pairs = dict(pairs)
        self.computed = list(computed)
        self.reused = list(reused)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return pair[0] == pair[1] or tuple(pair) in self._pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def pairs(self) -> list[tuple[str, str]]:
        """All stored ordered pairs ``(moving, fixed)``."""
        return sorted(self._pairs)

    def result(self, moving: str, fixed: str) -> PairResult:
        if moving == fixed:
            return PairResult(IDENTITY.copy(), 1.0, True)
        try:
            return self._pairs[(moving, fixed)]
        except KeyError:
            where = self.path if self.path is not None else "this pre-alignment"
            raise KeyError(f"no affine pre-alignment for moving '{moving}' -> fixed '{fixed}' in "
                           f"{where}; only pairs of images of one patient are computed "
                           f"(ensure_prealignment with both in one group)") from None

    def matrix(self, moving: str, fixed: str) -> np.ndarray:
        """2x3 float64 inverse-map affine (a copy); identity when ``moving == fixed``."""
        return self.result(moving, fixed).matrix.copy()

    def correlation(self, moving: str, fixed: str) -> float:
        """Correlation achieved by :meth:`matrix` (1.0 for ``moving == fixed``)."""
        return self.result(moving, fixed).correlation

    def ok(self, moving: str, fixed: str) -> bool:
        """False when the pair fell back to the identity."""
        return self.result(moving, fixed).ok

    def field(self, moving: str, fixed: str):
        """``[2, H, W]`` float32 torch field ``d`` with ``warp(moving_image, d) ~ fixed_image``."""
        from networks.spatial_transformer import field_from_affine  # torch only where needed
        return field_from_affine(self.result(moving, fixed).matrix, self.size)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Prealignment":
        """Read a ``prealign.json`` written by :func:`ensure_prealignment`."""
        path = Path(path)
        data = _read_cache(path)
        if data is None:
            raise InputError(f"{path} is missing or unreadable: run python -m utils.prealign {path.parent}")
        return cls(tuple(data["size"]), _pairs_from_json(data), path=path)


def _pairs_from_json(data: dict) -> dict[tuple[str, str], PairResult]:
    pairs = {}
    for moving, row in data["pairs"].items():
        for fixed, entry in row.items():
            matrix = np.asarray(entry["matrix"], dtype=np.float64)
            if matrix.shape != (2, 3) or not np.all(np.isfinite(matrix)):
                raise ValueError(f"bad matrix for {moving} -> {fixed}")
            pairs[(moving, fixed)] = PairResult(matrix, float(entry["correlation"]), bool(entry["ok"]))
    return pairs


def _pairs_to_json(pairs: dict[tuple[str, str], PairResult]) -> dict:
    out: dict[str, dict] = {}
    for (moving, fixed) in sorted(pairs):
        result = pairs[(moving, fixed)]
        out.setdefault(moving, {})[fixed] = {
            "matrix": [[float(v) for v in row] for row in result.matrix],
            "correlation": float(result.correlation),
            "ok": bool(result.ok),
        }
    return out


def _read_cache(path: Path) -> dict | None:
    """The cache's JSON, or None when it is missing or malformed (a warning says so)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict) \
                or not isinstance(data.get("images"), dict) or len(data.get("size", ())) != 2:
            raise ValueError("missing 'size', 'images' or 'pairs'")
        _pairs_from_json(data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        warnings.warn(f"{path}: unreadable pre-alignment cache ({exc}); recomputing it", RuntimeWarning)
        return None
    return data


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- computing pairs

def _init_worker() -> None:
    cv2.setNumThreads(1)


def _align_task(task: tuple[dict[str, str], tuple[int, int], list[tuple[str, str]]]) -> list[tuple]:
    """Estimate ``pairs`` of one patient. ``task = (paths by name, (W, H), pairs)``.

    Each image is read and its pyramid built once. Returns ``(moving, fixed, matrix,
    correlation, ok, warning messages)`` per pair (warnings are re-emitted by the caller,
    as those of a worker process would be lost).
    """
    paths, wh, pairs = task
    pyramids: dict[str, list[np.ndarray]] = {}
    out = []
    for moving, fixed in pairs:
        for name in (moving, fixed):
            if name not in pyramids:
                pyramids[name] = _prepare(read_image(paths[name], wh))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            matrix, corr, ok = _estimate_prepared(pyramids[moving], pyramids[fixed], f"{moving} -> {fixed}")
        out.append((moving, fixed, matrix, corr, ok, [str(w.message) for w in caught]))
    return out


def _make_tasks(folder: DatasetFolder, todo: list[tuple[str, str]], group_of: dict[str, int],
                workers: int) -> list[tuple]:
    """One task per patient, or per (patient, moving image) when patients are fewer than
    twice the workers (so one large patient still uses every core)."""
    per_group: dict[int, list[tuple[str, str]]] = {}
    for pair in todo:
        per_group.setdefault(group_of[pair[0]], []).append(pair)
    chunks = list(per_group.values())
    if len(chunks) < 2 * workers:
        chunks = [[p for p in chunk if p[0] == moving] for chunk in chunks
                  for moving in dict.fromkeys(p[0] for p in chunk)]
    tasks = []
    for chunk in chunks:
        names = {n for pair in chunk for n in pair}
        tasks.append(({n: str(folder.image_paths[n]) for n in names}, folder.wh, chunk))
    return tasks


def _run_tasks(tasks: list[tuple], workers: int, progress: bool, total: int) -> Iterable[tuple]:
    """Yield per-pair results of all tasks, in a process pool when it pays."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="pair", desc="prealign", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            previous = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for task in tasks:
                    results = _align_task(task)
                    bar.update(len(results))
                    yield from results
            finally:
                cv2.setNumThreads(previous)
            return
        # spawn, never fork: a forked child deadlocks in OpenCV's thread pool (copied mid-state)
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [pool.submit(_align_task, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    results = future.result()
                    bar.update(len(results))
                    yield from results
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()


def _requested_pairs(folder: DatasetFolder, patients: Sequence[Sequence[str]]
                     ) -> tuple[list[tuple[str, str]], dict[str, int]]:
    pairs, group_of = [], {}
    for index, group in enumerate(patients):
        names = list(dict.fromkeys(group))
        for name in names:
            if name not in folder.image_paths:
                raise InputError(f"image '{name}' is not in {folder.root / 'Image'}; fix the fold files "
                                 f"or rerun python -m utils.make_folds {folder.root}")
            if group_of.get(name, index) != index:
                raise InputError(f"image '{name}' is listed under two patients; a patient's images "
                                 f"must form one group (check the fold files)")
            group_of[name] = index
        pairs.extend((a, b) for a in names for b in names if a != b)
    return list(dict.fromkeys(pairs)), group_of


def ensure_prealignment(folder: DatasetFolder, patients: list[list[str]], workers: int | None = None,
                        progress: bool = True) -> Prealignment:
    """Pre-align every ordered pair ``(a, b)``, ``a != b``, of each group in ``patients``.

    Uses and updates the cache ``folder.root / "prealign.json"`` (see the module
    docstring): only pairs that are missing, or involve an image whose file bytes
    changed, are estimated; all of them when the processing size ``folder.size``
    changed. Cached pairs not requested now are kept. ``workers``: processes
    (default ``os.cpu_count()``). Pairs that fall back to identity warn.
    """
    workers = int(workers) if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    path = folder.root / CACHE_NAME
    requested, group_of = _requested_pairs(folder, patients)

    data = _read_cache(path)
    if data is not None and (data.get("version") != METHOD_VERSION
                             or tuple(data["size"]) != tuple(folder.size)):
        data = None  # another processing size or method: every matrix is stale
    old_hashes: dict[str, str] = dict(data["images"]) if data else {}
    cached = _pairs_from_json(data) if data else {}

    names = set(group_of) | {n for pair in cached for n in pair}
    hashes = {n: _sha1(folder.image_paths[n]) for n in sorted(names) if n in folder.image_paths}
    valid = {pair: result for pair, result in cached.items()
             if all(n in hashes and old_hashes.get(n) == hashes[n] for n in pair)}
    todo = [pair for pair in requested if pair not in valid]
    reused = [pair for pair in requested if pair in valid]

    computed: list[tuple[str, str]] = []
    tasks = _make_tasks(folder, todo, group_of, workers)
    try:
        with closing(_run_tasks(tasks, workers, progress, len(todo))) as results:
            for moving, fixed, matrix, corr, ok, messages in results:
                for message in messages:
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
                valid[(moving, fixed)] = PairResult(np.asarray(matrix, dtype=np.float64), float(corr),
                                                    bool(ok))
                computed.append((moving, fixed))
    finally:  # also keeps the pairs finished before an interruption
        kept_names = {n for pair in valid for n in pair}
        new_data = {
            "version": METHOD_VERSION,
            "convention": "matrix maps fixed pixel (x, y, 1) to moving pixel; cv2.warpAffine(moving, "
                          "matrix, (W, H), INTER_LINEAR | WARP_INVERSE_MAP) ~ fixed",
            "size": [int(folder.size[0]), int(folder.size[1])],
            "images": {n: hashes[n] for n in sorted(kept_names)},
            "pairs": _pairs_to_json(valid),
        }
        if computed or new_data["images"] != old_hashes or data is None \
                or len(valid) != len(cached):
            _write_json_atomic(path, new_data)
    return Prealignment(folder.size, valid, path=path, computed=computed, reused=reused)


# --------------------------------------------------------------------------- folds and CLI

def patients_from_folds(data_dir: str | os.PathLike, folder: DatasetFolder) -> list[list[str]]:
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.prealign",
        description="Affine pre-alignment of every ordered pair of images of each patient listed in "
                    "DATA_DIR/train_dict*.json (OpenCV ECC on an image pyramid). Matrices are cached in "
                    "DATA_DIR/prealign.json; a rerun only recomputes pairs whose images changed.")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder with Image/, Label/ and "
                        "train_dict*.json (made by python -m utils.make_folds)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help=f"worker processes (default: all {os.cpu_count() or 1} cores)")
    parser.add_argument("--resize", type=_positive_int, nargs=2, default=None, metavar=("W", "H"),
                        help="process images at W x H (needed when image sizes differ; the trainers must "
                             "use the same size, otherwise they recompute the cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> Prealignment:
    args = build_parser().parse_args(argv)
    folder = DatasetFolder(args.data_dir, resize=tuple(args.resize) if args.resize else None)
    patients = patients_from_folds(args.data_dir, folder)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pre = ensure_prealignment(folder, patients, workers=args.workers, progress=not args.quiet)
        except KeyboardInterrupt:
            print(f"interrupted: the pairs finished so far are saved in {folder.root / CACHE_NAME}; "
                  f"rerun the same command to compute the rest", file=sys.stderr)
            sys.exit(130)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    seconds = time.perf_counter() - start
    requested = pre.reused + pre.computed
    fallbacks = [pair for pair in requested if not pre.ok(*pair)]
    corrs = [pre.correlation(*pair) for pair in requested]
    height, width = pre.size
    print(f"prealign: {len(requested)} pairs of {len(patients)} patients at {width}x{height} (W x H): "
          f"{len(pre.computed)} computed, {len(pre.reused)} reused, {len(fallbacks)} fallbacks to identity; "
          f"mean correlation {np.mean(corrs) if corrs else float('nan'):.3f} "
          f"(min {min(corrs) if corrs else float('nan'):.3f}); {seconds:.1f} s -> {pre.path}")
    if fallbacks:
        shown = ", ".join(f"{a}->{b}" for a, b in fallbacks[:5]) + (" ..." if len(fallbacks) > 5 else "")
        print(f"prealign: identity used for {shown}; check those images", file=sys.stderr)
    return pre


if __name__ == "__main__":
    run_cli(main)

"""The per-dataset cache of intra-patient affine pre-alignments (docs/METHOD.md section 1).

``DATA_DIR/prealign.json`` holds, for every ordered pair ``(a, b)`` of images of
one patient, the 2x3 matrix of :mod:`dataloaders.prealignment.estimation` (OpenCV
inverse-map convention), its correlation, whether it fell back to the identity and
why; plus each image's sha1 and the processing size (H, W). Warped images are never
stored: consumers warp with :meth:`Prealignment.field`. :func:`ensure_prealignment`
recomputes only pairs that are missing or involve an image whose bytes changed,
and everything when the processing size or the method version changed.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from dataloaders.dataset import DatasetFolder, read_image
from dataloaders.prealignment.estimation import IDENTITY, estimate_prepared, prepare
from networks.spatial_transformer import field_from_affine
from utils.errors import InputError
from utils.files import atomic_write_json

CACHE_NAME = "prealign.json"
# Bump when the estimation changes in a way that should invalidate cached matrices.
METHOD_VERSION = 1


@dataclass(frozen=True)
class PairResult:
    """One estimated pair: 2x3 inverse-map ``matrix``, achieved ``correlation``, ``ok``
    (False = estimation failed and ``matrix`` is the identity fallback) and, for a
    fallback, the ``reason``."""

    matrix: np.ndarray
    correlation: float
    ok: bool
    reason: str = ""


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

    def field(self, moving: str, fixed: str) -> torch.Tensor:
        """``[2, H, W]`` float32 torch field ``d`` with ``warp(moving_image, d) ~ fixed_image``."""
        return field_from_affine(self.result(moving, fixed).matrix, self.size)

    def fallbacks(self, pairs: Iterable[tuple[str, str]] | None = None) -> list[tuple[str, str, str]]:
        """``(moving, fixed, reason)`` of every pair (of ``pairs``, default all stored) that
        fell back to the identity."""
        chosen = self.pairs() if pairs is None else list(pairs)
        return [(m, f, self.result(m, f).reason) for m, f in chosen if not self.result(m, f).ok]

    def fallback_summary(self, pairs: Iterable[tuple[str, str]] | None = None) -> str:
        """One line: how many pairs (of ``pairs``, default all) fell back to the identity and
        why (reasons grouped by kind), or ``""`` when none did."""
        chosen = self.pairs() if pairs is None else list(pairs)
        fallbacks = self.fallbacks(chosen)
        if not fallbacks:
            return ""
        kinds: dict[str, int] = {}
        for _, _, reason in fallbacks:
            kind = reason.split(" (")[0] if reason.startswith("ECC failed") else reason.split(" is below")[0]
            kind = "correlation below identity's" if kind.startswith("correlation") else kind
            kinds[kind or "unknown"] = kinds.get(kind or "unknown", 0) + 1
        why = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]))
        where = self.path if self.path is not None else "the pre-alignment cache"
        return (f"prealign: {len(fallbacks)} of {len(chosen)} pairs fell back to the identity ({why}); "
                f"the pairs and reasons are listed in {where} under \"fallbacks\"")

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
            pairs[(moving, fixed)] = PairResult(matrix, float(entry["correlation"]), bool(entry["ok"]),
                                                str(entry.get("reason", "")))
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
        if result.reason:
            out[moving][fixed]["reason"] = result.reason
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
        warnings.warn(f"{path}: unreadable pre-alignment cache ({exc}); recomputing it", RuntimeWarning,
                      stacklevel=2)
        return None
    return data


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- computing pairs

def _init_worker() -> None:
    cv2.setNumThreads(1)


def _align_task(task: tuple[dict[str, str], tuple[int, int], list[tuple[str, str]]]) -> list[tuple]:
    """Estimate ``pairs`` of one patient. ``task = (paths by name, (W, H), pairs)``.

    Each image is read and its pyramid built once. Returns ``(moving, fixed, matrix,
    correlation, ok, reason)`` per pair.
    """
    paths, wh, pairs = task
    pyramids: dict[str, list[np.ndarray]] = {}
    out = []
    for moving, fixed in pairs:
        for name in (moving, fixed):
            if name not in pyramids:
                pyramids[name] = prepare(read_image(paths[name], wh))
        out.append((moving, fixed, *estimate_prepared(pyramids[moving], pyramids[fixed])))
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
    """Yield per-pair results of all tasks, in a process pool when it pays (no progress bar,
    and nothing at all, when there is nothing to compute)."""
    if not tasks:
        return
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
    (default ``os.cpu_count()``). Pairs that fall back to the identity keep their
    reason (:meth:`Prealignment.fallbacks`); nothing is printed per pair.
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
            for moving, fixed, matrix, corr, ok, reason in results:
                valid[(moving, fixed)] = PairResult(np.asarray(matrix, dtype=np.float64), float(corr),
                                                    bool(ok), str(reason))
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
            "fallbacks": [{"moving": m, "fixed": f, "reason": valid[(m, f)].reason}
                          for m, f in sorted(valid) if not valid[(m, f)].ok],
        }
        if computed or new_data["images"] != old_hashes or data is None \
                or len(valid) != len(cached):
            atomic_write_json(new_data, path, indent=1)
    return Prealignment(folder.size, valid, path=path, computed=computed, reused=reused)

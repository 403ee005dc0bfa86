"""Affine estimation of one image pair (docs/METHOD.md section 1), OpenCV only.

For images ``moving``, ``fixed`` of one size, :func:`estimate_affine` returns a 2x3
float64 affine ``M`` in OpenCV's *inverse-map* convention: it maps a fixed-frame
pixel ``(x, y, 1)`` to the moving-frame pixel it samples, so
``cv2.warpAffine(moving, M, (W, H), flags=INTER_LINEAR | WARP_INVERSE_MAP) ~ fixed``
and ``warp(moving, field_from_affine(M, (H, W))) ~ fixed``.

Lightly smoothed, normalised images; a Gaussian pyramid; a translation from phase
correlation at the coarsest level; then OpenCV ECC (``MOTION_AFFINE``) coarse to
fine, the translation doubling from one level to the next. A pair whose ECC fails,
diverges, or ends with a correlation below identity's (by more than ``CORR_TOL``)
falls back to the identity, with the reason.
"""
from __future__ import annotations

import math
import warnings

import cv2
import numpy as np

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

def prepare(image: np.ndarray, levels: int | None = None) -> list[np.ndarray]:
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


def estimate_prepared(moving: list[np.ndarray], fixed: list[np.ndarray]) -> tuple[np.ndarray, float, bool, str]:
    """:func:`estimate_affine` on pyramids from :func:`prepare` (same number of levels).

    Returns ``(M, correlation, ok, reason)``; ``reason`` says why the estimate fell back
    to the identity (empty when ``ok``). Emits no warning: callers report fallbacks."""
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
            return best, corr, True, ""
        reason = "the estimate diverged (degenerate matrix or too little overlap)" \
            if corr >= identity_corr - CORR_TOL else \
            f"correlation {corr:.4f} is below identity's {identity_corr:.4f}"
    else:
        reason = f"ECC failed ({'; '.join(errors)})" if errors else \
            "the estimate diverged (degenerate matrix or too little overlap)"
    return IDENTITY.copy(), identity_corr, False, reason


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
    pyr_fixed = prepare(fixed)
    pyr_moving = prepare(moving, len(pyr_fixed))
    matrix, corr, ok, reason = estimate_prepared(pyr_moving, pyr_fixed)
    if not ok:
        warnings.warn(f"prealign {label}: {reason}; using the identity", RuntimeWarning, stacklevel=2)
    return matrix, corr, ok

"""Synthetic infrared meibography of the upper eyelid, for demos and tests.

    python -m utils.make_demo_data DATA_DIR [--patients P] [--images-per-patient N]
                                   [--size W H] [--seed S] [--overwrite]

writes ``DATA_DIR/Image/P###_k.png`` (8-bit gray) and ``DATA_DIR/Label/P###_k.png``
(0 = background, 255 = gland), patients ``P001..`` and images ``_1..``.

Each patient has ONE anatomy (the *canonical* image): a dark background, the
everted lid as a brighter curved band and 15-30 bright, roughly vertical,
slightly tortuous glands of varying length and width inside it (some shortened,
some missing). It is rendered at twice the resolution on a canvas a margin larger
than the frame, then area-downsampled. Every image of the patient is that
anatomy seen through its own smooth deformation (an affine map, then a small
elastic field) under its own illumination (gain, gamma, offset, vignetting,
gradient, noise, specular highlights). Image and mask are warped with the same
map (image bilinear; mask: the soft coverage mask bilinear, thresholded at 0.5).

Geometry of image ``k`` (size ``W x H``; ``A_k`` = ``matrices[k]``, 2x3, OpenCV
inverse-map convention; ``e_k`` = ``fields[k]``, ``[2, H, W]`` pixels, channel 0 =
row, 1 = column)::

    image_k(p) = canonical(A_k @ (p + e_k(p), 1))

i.e. with the project's spatial transformer, ``image_k ~ warp(canonical,
compose(e_k, field_from_affine(A_k, (H, W))))``. :func:`view_to_canonical` and
:func:`pair_maps` turn these into ``cv2.remap`` coordinate maps.

Output is a deterministic function of the seed and the patient number (patient
``i`` does not depend on how many patients are generated).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from utils.errors import InputError, run_cli

DEFAULT_PATIENTS = 12
DEFAULT_IMAGES_PER_PATIENT = 4
DEFAULT_SIZE = (256, 128)  # (W, H)
DEFAULT_SEED = 0
MIN_SIDE, MAX_SIDE = 32, 8192
SUPERSAMPLE = 2          # canonical anatomy is drawn at this factor, then area-downsampled
MARGIN = 0.12            # canvas margin around the frame, as a fraction of max(W, H)
DEMO_FILE = re.compile(r"P\d{3,}_\d+\.png")

# ---------------------------------------------------------------------------------------------
# small numeric helpers


def demo_name(patient: int, image: int) -> str:
    """File name stem of image ``image`` (1-based) of patient ``patient`` (1-based): ``P007_2``."""
    return f"P{patient:03d}_{image}"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  cells: tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field ``float32 shape`` from a ``cells`` (rows, cols)
    grid of normal values: upsampled bicubically to 8 px per cell, Gaussian-blurred there
    (removes the grid), then resized to ``shape``."""
    height, width = shape
    rows, cols = max(2, int(round(cells[0]))), max(2, int(round(cells[1])))
    coarse = rng.standard_normal((rows, cols), dtype=np.float32)
    mid = (min(width, 8 * cols), min(height, 8 * rows))
    field = cv2.resize(coarse, mid, interpolation=cv2.INTER_CUBIC)
    sigma = 0.35 * min(mid[1] / rows, mid[0] / cols)
    field = cv2.GaussianBlur(field, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    if mid != (width, height):
        field = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 1e-8 else field


def _to_fixed(points: np.ndarray, shift: int = 4) -> np.ndarray:
    """Float (x, y) points ``[N, 2]`` -> int32 for cv2 drawing with ``shift`` fractional bits."""
    return np.round(points * (1 << shift)).astype(np.int32)


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# canonical anatomy


class _Canvas:
    """The canonical frame (``W x H``) plus a margin, drawn at ``SUPERSAMPLE`` x resolution.

    Canonical point ``(x, y)`` is canvas pixel ``(x + mx, y + my)`` at 1x and
    ``(SUPERSAMPLE * (x + mx) + (SUPERSAMPLE - 1) / 2, ...)`` at the drawing
    resolution (pixel centres of an area downsampling).
    """

    def __init__(self, size: tuple[int, int]):
        self.width, self.height = size
        self.mx = self.my = int(np.ceil(MARGIN * max(size)))
        self.shape1 = (self.height + 2 * self.my, self.width + 2 * self.mx)
        self.shape2 = (SUPERSAMPLE * self.shape1[0], SUPERSAMPLE * self.shape1[1])

    def to_draw(self, points: np.ndarray) -> np.ndarray:
        """Canonical (x, y) ``[N, 2]`` -> drawing-resolution canvas coordinates."""
        offset = np.array([self.mx, self.my], dtype=np.float64)
        return SUPERSAMPLE * (points + offset) + (SUPERSAMPLE - 1) / 2.0

    def down(self, image2: np.ndarray) -> np.ndarray:
        """Drawing resolution -> 1x canvas (area average), float32."""
        return cv2.resize(image2.astype(np.float32), (self.shape1[1], self.shape1[0]),
                          interpolation=cv2.INTER_AREA)

    def crop(self, canvas1: np.ndarray) -> np.ndarray:
        """1x canvas -> the canonical frame ``[H, W]``."""
        return canvas1[self.my:self.my + self.height, self.mx:self.mx + self.width]


class _Band:
    """The everted lid: a curved lens-shaped band ``top(x) <= y <= bottom(x)`` for
    ``|x - cx| <= half``. The lid margin (where glands open) is the bottom edge."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.cx = width * (0.5 + rng.uniform(-0.04, 0.04))
        self.half = width * rng.uniform(0.40, 0.46)
        self.cy = height * (0.5 + rng.uniform(-0.05, 0.05))
        self.thick = height * rng.uniform(0.46, 0.60)
        self.bend = height * rng.uniform(0.06, 0.14) * rng.choice([-1.0, 1.0])

    def u(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.cx) / self.half

    def centre(self, x: np.ndarray) -> np.ndarray:
        return self.cy + self.bend * (self.u(x) ** 2 - 1.0 / 3.0)

    def half_thickness(self, x: np.ndarray) -> np.ndarray:
        return 0.5 * self.thick * np.sqrt(np.clip(1.0 - self.u(x) ** 6, 0.0, 1.0))

    def slope(self, x: np.ndarray) -> np.ndarray:
        return 2.0 * self.bend * self.u(x) / self.half

    def outline(self, inset: float = 0.0, samples: int = 200) -> np.ndarray:
        """Closed polygon (x, y) ``[2 * samples, 2]`` in canonical coordinates; ``inset`` > 0
        pulls the edges in by about that many pixels."""
        ends = 1.0 - inset / self.half
        xs = self.cx + self.half * ends * np.linspace(-1.0, 1.0, samples)
        half = np.maximum(self.half_thickness(xs) - inset, 0.0)
        top = np.stack([xs, self.centre(xs) - half], axis=1)
        bottom = np.stack([xs, self.centre(xs) + half], axis=1)
        return np.concatenate([top, bottom[::-1]], axis=0)


def _gland_polygon(rng: np.random.Generator, base: np.ndarray, up: np.ndarray, length: float,
                   radius: float, wiggle: float) -> tuple[np.ndarray, np.ndarray]:
    """One tortuous gland: closed outline ``[2n, 2]`` and centreline ``[n, 2]`` (canonical x, y).

    ``base``: the end at the lid margin; ``up``: unit direction into the lid; the tube
    narrows towards its far end and its width ripples slightly along it."""
    steps = max(12, int(length / 1.5))
    t = np.linspace(0.0, 1.0, steps)
    side = np.array([-up[1], up[0]])
    lateral = np.zeros_like(t)
    for _ in range(2):
        lateral += wiggle * rng.uniform(0.3, 1.0) * np.sin(
            2 * np.pi * rng.uniform(0.5, 2.2) * t + rng.uniform(0, 2 * np.pi))
    centre = base + np.outer(t * length, up) + np.outer(lateral, side)
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    ripple = 1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(1.0, 3.0) * t + rng.uniform(0, 2 * np.pi))
    r = radius * ripple * (1.0 - 0.35 * t ** 2)
    outline = np.concatenate([centre + normal * r[:, None], (centre - normal * r[:, None])[::-1]])
    return outline, centre


def _render_anatomy(rng: np.random.Generator, size: tuple[int, int]):
    """Render one patient's anatomy on the 1x canvas.

    Returns ``(canvas, image, gland_soft, lid_soft)``: ``image`` float32 in [0, 1]
    (illumination-free), ``gland_soft`` / ``lid_soft`` float32 coverage in [0, 1];
    all ``canvas.shape1``.
    """
    width, height = size
    canvas = _Canvas(size)
    band = _Band(rng, width, height)
    h1, w1 = canvas.shape1

    # lid band: hard coverage mask (for the label region) and a soft-edged brightness
    lid2 = np.zeros(canvas.shape2, np.uint8)
    cv2.fillPoly(lid2, [_to_fixed(canvas.to_draw(band.outline()))], 255, cv2.LINE_AA, shift=4)
    inner2 = np.zeros(canvas.shape2, np.uint8)          # where glands may lie
    cv2.fillPoly(inner2, [_to_fixed(canvas.to_draw(band.outline(inset=0.035 * height)))], 255,
                 cv2.LINE_AA, shift=4)

    # glands: evenly spaced slots along the lid, jittered; some shortened, some dropped
    n_slots = int(rng.integers(15, 31))
    u_slots = np.linspace(-0.88, 0.88, n_slots)
    spacing = band.half * 1.76 / max(n_slots - 1, 1)
    u_slots = u_slots + rng.uniform(-0.12, 0.12, n_slots) * (spacing / band.half)
    mask2 = np.zeros(canvas.shape2, np.uint8)
    value2 = np.zeros(canvas.shape2, np.uint8)
    radii = []
    for u in u_slots:
        kind = rng.uniform()
        if kind < 0.08:                       # dropped out
            continue
        x0 = band.cx + u * band.half
        half = float(band.half_thickness(x0))
        slope = float(band.slope(x0))
        up = np.array([slope, -1.0]) / np.hypot(slope, 1.0)   # normal to the lid, pointing up
        margin_y = float(band.centre(x0)) + half
        base = np.array([x0, margin_y]) + up * (0.08 * 2 * half)
        reach = 2 * half * 0.88
        frac = rng.uniform(0.2, 0.45) if kind < 0.22 else rng.uniform(0.65, 1.0)
        radius = spacing * rng.uniform(0.20, 0.31) * (0.75 if kind < 0.22 else 1.0)
        outline, centre = _gland_polygon(rng, base, up, frac * reach, radius, 0.10 * spacing)
        radii.append(radius)
        pts = _to_fixed(canvas.to_draw(outline))
        bright = int(round(255 * rng.uniform(0.55, 1.0)))
        cv2.fillPoly(mask2, [pts], 255, cv2.LINE_AA, shift=4)
        cv2.fillPoly(value2, [pts], bright, cv2.LINE_AA, shift=4)
        ends = canvas.to_draw(centre[[0]])                  # rounded cap at the margin end
        cv2.circle(mask2, tuple(_to_fixed(ends)[0]), int(round(radius * SUPERSAMPLE * 16)),
                   255, -1, cv2.LINE_AA, shift=4)
        cv2.circle(value2, tuple(_to_fixed(ends)[0]), int(round(radius * SUPERSAMPLE * 16)),
                   bright, -1, cv2.LINE_AA, shift=4)
    inside = inner2.astype(np.float32) / 255.0
    gland_soft = canvas.down(mask2.astype(np.float32) / 255.0 * inside)
    gland_value = canvas.down(value2.astype(np.float32) / 255.0 * inside)
    lid_soft = canvas.down(lid2.astype(np.float32) / 255.0)

    # shading: background < lid < glands, each with its own texture
    mean_r = float(np.mean(radii)) if radii else 1.0
    lid_edge = cv2.GaussianBlur(lid_soft, (0, 0), 0.02 * height + 0.5)
    tube = cv2.GaussianBlur(gland_value, (0, 0), 0.3 * mean_r + 0.3)
    acini = _smooth_noise(rng, (h1, w1), (h1 / max(2 * mean_r, 2.0), w1 / max(2 * mean_r, 2.0)))
    bg = rng.uniform(0.08, 0.16) * (1.0 + 0.25 * _smooth_noise(rng, (h1, w1), (3, 6)))
    lid_level = rng.uniform(0.30, 0.40) * (1.0 + 0.10 * _smooth_noise(rng, (h1, w1), (4, 10))
                                           + 0.05 * _smooth_noise(rng, (h1, w1), (h1 / 6, w1 / 6)))
    gland_gain = rng.uniform(0.28, 0.38)
    image = bg + (lid_level - bg) * lid_edge + gland_gain * tube * (1.0 + 0.15 * acini)
    image += 0.012 * rng.standard_normal((h1, w1), dtype=np.float32)   # fixed fine texture
    return canvas, np.clip(image, 0.0, 1.0).astype(np.float32), gland_soft, lid_soft


# ---------------------------------------------------------------------------------------------
# per-image geometry and illumination


def random_affine(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A random 2x3 affine (inverse-map convention: frame pixel -> canonical point) about the
    frame centre: rotation +-4 deg, scale 0.95..1.05 (+-2 % anisotropy), shear +-0.03,
    shift +-3 % of each side."""
    width, height = size
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    scale = rng.uniform(0.95, 1.05)
    aniso = rng.uniform(-0.02, 0.02)
    shear = rng.uniform(-0.03, 0.03)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rot @ np.array([[scale * (1 + aniso), shear], [0.0, scale * (1 - aniso)]])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = rng.uniform(-0.03, 0.03, 2) * np.array([width, height])
    offset = centre + shift - linear @ centre
    return np.hstack([linear, offset[:, None]]).astype(np.float64)


def random_elastic_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A smooth random displacement field ``float32 [2, H, W]`` (pixels; channel 0 = row,
    1 = column): a coarse normal grid upsampled and blurred, RMS about
    ``0.008 * sqrt(W * H)`` pixels per component (about 1.5 px at 256 x 128, 4 px at 740 x 350)."""
    width, height = size
    rms = float(0.008 * np.sqrt(width * height))
    cells = (3, max(3, int(round(3 * width / height))))
    return np.stack([rms * _smooth_noise(rng, (height, width), cells) for _ in range(2)]).astype(
        np.float32)


def view_to_canonical(matrix: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical coordinates ``(map_x, map_y)`` (float32 ``[H, W]``) seen by each pixel
    ``p`` of a view: ``A @ (p + e(p), 1)``; use with ``cv2.remap(canonical, map_x, map_y)``."""
    height, width = field.shape[1:]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    qx, qy = xs + field[1], ys + field[0]
    a = np.asarray(matrix, dtype=np.float64)
    map_x = a[0, 0] * qx + a[0, 1] * qy + a[0, 2]
    map_y = a[1, 0] * qx + a[1, 1] * qy + a[1, 2]
    return map_x.astype(np.float32), map_y.astype(np.float32)


def canonical_to_view(matrix: np.ndarray, field: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                      iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`view_to_canonical`: the view pixel showing canonical point
    ``(map_x, map_y)`` (any shape), by fixed-point iteration ``q <- A^-1 s - e(q)``."""
    inv = np.linalg.inv(_homogeneous(matrix))[:2]
    rx = inv[0, 0] * map_x + inv[0, 1] * map_y + inv[0, 2]
    ry = inv[1, 0] * map_x + inv[1, 1] * map_y + inv[1, 2]
    rx, ry = rx.astype(np.float32), ry.astype(np.float32)
    field = np.asarray(field, dtype=np.float32)
    qx, qy = rx.copy(), ry.copy()
    for _ in range(iterations):
        ex = cv2.remap(field[1], qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ey = cv2.remap(field[0], qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        qx, qy = rx - ex, ry - ey
    return qx, qy


def pair_maps(patient: dict, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps ``(map_x, map_y)`` float32 ``[H, W]`` with
    ``cv2.remap(patient["images"][j], map_x, map_y, ...) ~ patient["images"][i]``
    (anatomy of image ``j`` carried into image ``i``'s frame)."""
    sx, sy = view_to_canonical(patient["matrices"][i], patient["fields"][i])
    return canonical_to_view(patient["matrices"][j], patient["fields"][j], sx, sy)


def relative_affine(matrices: Sequence[np.ndarray], i: int, j: int) -> np.ndarray:
    """The affine part of :func:`pair_maps`: 2x3 ``M`` (inverse-map convention) with
    ``cv2.warpAffine(image_j, M, (W, H), flags=WARP_INVERSE_MAP) ~ image_i`` up to the
    elastic fields. ``M = A_j^-1 A_i``."""
    return (np.linalg.inv(_homogeneous(matrices[j])) @ _homogeneous(matrices[i]))[:2]


def _illuminate(rng: np.random.Generator, image: np.ndarray, lid: np.ndarray) -> np.ndarray:
    """Per-image acquisition: gamma, gain, offset, vignetting, a linear gradient, specular
    highlights (mostly on the lid), sensor noise. float32 ``[H, W]`` in [0, 1]."""
    height, width = image.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width * (0.5 + rng.uniform(-0.1, 0.1))
    cy = height * (0.5 + rng.uniform(-0.1, 0.1))
    radial = ((xs - cx) / (0.6 * width)) ** 2 + ((ys - cy) / (0.6 * height)) ** 2
    vignette = 1.0 - rng.uniform(0.10, 0.35) * radial
    gradient = 1.0 + rng.uniform(-0.10, 0.10) * (xs / width - 0.5) + rng.uniform(-0.06, 0.06) * (
        ys / height - 0.5)
    out = rng.uniform(0.85, 1.15) * np.power(image, rng.uniform(0.8, 1.25)) * vignette * gradient
    out += rng.uniform(-0.03, 0.03)
    spots = np.zeros_like(out)
    candidates = np.argwhere(lid > 0.5)
    for _ in range(int(rng.integers(1, 5))):
        if len(candidates) and rng.uniform() < 0.8:
            y, x = candidates[rng.integers(len(candidates))]
        else:
            y, x = rng.uniform(0, height), rng.uniform(0, width)
        axes = np.sqrt(width * height) * rng.uniform(0.004, 0.012, 2) * np.array([2.0, 1.0])
        angle = rng.uniform(0, 180)
        cv2.ellipse(spots, ((float(x), float(y)), tuple(float(a) * 2 for a in axes), float(angle)),
                    float(rng.uniform(0.5, 0.9)), -1, cv2.LINE_AA)
    out += cv2.GaussianBlur(spots, (0, 0), 0.6)
    out += rng.uniform(0.008, 0.025) * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# public API


def generate_patient(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE,
                     images_per_patient: int = DEFAULT_IMAGES_PER_PATIENT) -> dict:
    """One synthetic patient, in memory. ``size`` is ``(W, H)``.

    Returns a dict (lists have one entry per image, ``H x W`` arrays):

    - ``"images"``: float32 ``[H, W]`` in [0, 1] (what is saved, before 8-bit rounding);
    - ``"masks"``: uint8 ``[H, W]`` in {0, 1}, the glands;
    - ``"lid_masks"``: uint8 ``[H, W]`` in {0, 1}, the lid band;
    - ``"matrices"``: 2x3 float64 ``A_k`` (frame pixel -> canonical point, OpenCV inverse-map
      convention); ``"fields"``: float32 ``[2, H, W]`` elastic fields ``e_k`` (pixels,
      channel 0 = row). Image k is ``canonical(A_k @ (p + e_k(p)))``, see the module docstring;
    - ``"canonical_image"`` (float32, illumination-free), ``"canonical_mask"`` and
      ``"canonical_lid"`` (uint8 {0, 1}): the anatomy in the canonical frame ``[H, W]``
      (views may also see the canonical canvas's margin just outside this frame).
    """
    width, height = size
    canvas, anatomy, gland_soft, lid_soft = _render_anatomy(rng, (width, height))
    out: dict = {key: [] for key in ("images", "masks", "lid_masks", "matrices", "fields")}
    for _ in range(images_per_patient):
        matrix = random_affine(rng, (width, height))
        field = random_elastic_field(rng, (width, height))
        map_x, map_y = view_to_canonical(matrix, field)
        map_x += canvas.mx
        map_y += canvas.my

        def sample(src: np.ndarray) -> np.ndarray:
            return cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

        lid = sample(lid_soft)
        out["images"].append(_illuminate(rng, sample(anatomy), lid))
        out["masks"].append((sample(gland_soft) >= 0.5).astype(np.uint8))
        out["lid_masks"].append((lid >= 0.5).astype(np.uint8))
        out["matrices"].append(matrix)
        out["fields"].append(field.astype(np.float32))
    out["canonical_image"] = canvas.crop(anatomy).copy()
    out["canonical_mask"] = (canvas.crop(gland_soft) >= 0.5).astype(np.uint8)
    out["canonical_lid"] = (canvas.crop(lid_soft) >= 0.5).astype(np.uint8)
    return out


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    """The generator of patient ``patient`` (1-based) for dataset seed ``seed``."""
    return np.random.default_rng([int(seed), int(patient)])


def validate_args(patients: int, images_per_patient: int, size: Sequence[int], seed: int) -> None:
    """Raise a one-line :class:`InputError` for unusable generation settings."""
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


def _prepare_output(out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    """Create ``Image/`` and ``Label/``; refuse to mix with existing files unless
    ``overwrite``, which deletes earlier demo files (``P###_k.png``) only."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder; choose another DATA_DIR")
    image_dir, label_dir = out_dir / "Image", out_dir / "Label"
    existing = [p for d in (image_dir, label_dir) if d.is_dir() for p in sorted(d.iterdir())]
    if existing and not overwrite:
        raise InputError(f"{out_dir}: Image/ or Label/ already holds files (e.g. {existing[0].name}); "
                         f"pass --overwrite to replace a previous demo set or choose an empty DATA_DIR")
    foreign = [p for p in existing if not (p.is_file() and DEMO_FILE.fullmatch(p.name))]
    if foreign:
        raise InputError(f"{foreign[0]}: not a demo file (P###_k.png); --overwrite only replaces "
                         f"demo data, so choose another DATA_DIR or move this file away")
    for path in existing:
        path.unlink()
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    return image_dir, label_dir


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise InputError(f"{path}: could not encode the image")
    try:
        path.write_bytes(data.tobytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror}); check the folder's permissions "
                         f"and free space") from exc


def generate_dataset(out_dir, patients: int = DEFAULT_PATIENTS,
                     images_per_patient: int = DEFAULT_IMAGES_PER_PATIENT,
                     size: tuple[int, int] = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
                     progress: bool = True, overwrite: bool = False) -> list[str]:
    """Write ``out_dir/Image/P###_k.png`` (8-bit gray) and ``out_dir/Label/P###_k.png``
    (0/255) for ``patients`` patients x ``images_per_patient`` images of ``size = (W, H)``.

    Raises :class:`InputError` on bad settings or when ``Image/``/``Label/`` already hold
    files (``overwrite=True`` replaces an earlier demo set). Returns the names written.
    """
    validate_args(patients, images_per_patient, size, seed)
    image_dir, label_dir = _prepare_output(Path(out_dir), overwrite)
    size = (int(size[0]), int(size[1]))
    names = []
    for patient in tqdm(range(1, patients + 1), desc="demo patients", unit="patient",
                        disable=not progress):
        data = generate_patient(patient_rng(seed, patient), size, images_per_patient)
        for k, (image, mask) in enumerate(zip(data["images"], data["masks"]), start=1):
            name = demo_name(patient, k)
            _write_png(image_dir / f"{name}.png", np.round(image * 255.0).astype(np.uint8))
            _write_png(label_dir / f"{name}.png", mask * np.uint8(255))
            names.append(name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.make_demo_data",
        description="Generate a synthetic infrared meibography (upper eyelid) data set: "
                    "DATA_DIR/Image/P###_k.png (8-bit gray) and DATA_DIR/Label/P###_k.png "
                    "(0/255 gland masks). The images of one patient show the same anatomy under "
                    "different smooth deformations and illumination. Output is deterministic "
                    "for a seed.")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="output folder (created if missing)")
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS, metavar="P",
                        help=f"number of patients, >= 1 (default {DEFAULT_PATIENTS})")
    parser.add_argument("--images-per-patient", type=int, default=DEFAULT_IMAGES_PER_PATIENT,
                        metavar="N", help=f"images per patient, >= 2 "
                                          f"(default {DEFAULT_IMAGES_PER_PATIENT})")
    parser.add_argument("--size", type=int, nargs=2, default=list(DEFAULT_SIZE), metavar=("W", "H"),
                        help=f"image width and height in pixels, each {MIN_SIDE}..{MAX_SIDE} "
                             f"(default {DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]}; the paper's images "
                             f"are 740 350)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                        help=f"random seed, >= 0 (default {DEFAULT_SEED})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo set in DATA_DIR (only P###_k.png files in "
                             "Image/ and Label/ are deleted; anything else there is an error)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.data_dir)
    names = generate_dataset(out_dir, patients=args.patients,
                             images_per_patient=args.images_per_patient, size=tuple(args.size),
                             seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"wrote {len(names)} images and masks ({args.patients} patients x "
          f"{args.images_per_patient}, {args.size[0]} x {args.size[1]}) to {out_dir}/Image and "
          f"{out_dir}/Label")
    stale = sorted(out_dir.glob("train_dict*.json"))
    if stale:
        print(f"note: {out_dir} still holds fold files from earlier data ({stale[0].name}, ...); "
              f"remake them: python -m utils.make_folds {out_dir}", file=sys.stderr)
    else:
        print(f"next: python -m utils.make_folds {out_dir}")


if __name__ == "__main__":
    run_cli(main)

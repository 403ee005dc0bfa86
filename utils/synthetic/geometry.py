"""Geometry shared by the synthetic data styles (:mod:`utils.synthetic.generate`).

The canonical anatomy of a patient is drawn on a :class:`Canvas` (the frame plus a
margin, at ``SUPERSAMPLE`` x resolution); image ``k`` of the patient is that anatomy
seen through its own affine map ``A_k`` (2x3, OpenCV inverse-map convention: frame
pixel -> canonical point) and elastic field ``e_k`` (``[2, H, W]`` pixels, channel 0 =
row): ``image_k(p) = canonical(A_k @ (p + e_k(p), 1))``. :func:`view_to_canonical`,
:func:`canonical_to_view` and :func:`pair_maps` turn these into ``cv2.remap`` maps.
"""
from __future__ import annotations

import cv2
import numpy as np

SUPERSAMPLE = 2          # canonical anatomy is drawn at this factor, then area-downsampled
MARGIN = 0.12            # canvas margin around the frame, as a fraction of max(W, H)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
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


def to_fixed(points: np.ndarray, shift: int = 4) -> np.ndarray:
    """Float (x, y) points ``[N, 2]`` -> int32 for cv2 drawing with ``shift`` fractional bits."""
    return np.round(points * (1 << shift)).astype(np.int32)


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])



class Canvas:
    """The canonical frame (``W x H``) plus a margin, drawn at ``SUPERSAMPLE`` x resolution.

    Canonical point ``(x, y)`` is canvas pixel ``(x + mx, y + my)`` at 1x and
    ``(SUPERSAMPLE * (x + mx) + (SUPERSAMPLE - 1) / 2, ...)`` at the drawing
    resolution (pixel centres of an area downsampling).
    """

    def __init__(self, size: tuple[int, int], margin: float = MARGIN):
        self.width, self.height = size
        self.mx = self.my = int(np.ceil(margin * max(size)))
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


def random_affine(rng: np.random.Generator, size: tuple[int, int], rotation: float = 4.0,
                  scale: float = 0.05, aniso: float = 0.02, shear: float = 0.03,
                  shift: float = 0.03) -> np.ndarray:
    """A random 2x3 affine (inverse-map convention: frame pixel -> canonical point) about the
    frame centre: rotation +-``rotation`` deg, scale 1 +- ``scale`` (+- ``aniso`` anisotropy),
    shear +- ``shear``, shift +- ``shift`` of each side (defaults: the simple style)."""
    width, height = size
    angle = np.deg2rad(rng.uniform(-rotation, rotation))
    factor = rng.uniform(1.0 - scale, 1.0 + scale)
    stretch = rng.uniform(-aniso, aniso)
    skew = rng.uniform(-shear, shear)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rot @ np.array([[factor * (1 + stretch), skew], [0.0, factor * (1 - stretch)]])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    offset = centre + rng.uniform(-shift, shift, 2) * np.array([width, height]) - linear @ centre
    return np.hstack([linear, offset[:, None]]).astype(np.float64)


def random_elastic_field(rng: np.random.Generator, size: tuple[int, int], rms_factor: float = 0.008,
                         cells: tuple[int, int] | None = None) -> np.ndarray:
    """A smooth random displacement field ``float32 [2, H, W]`` (pixels; channel 0 = row,
    1 = column): a coarse normal grid of ``cells`` (rows, cols; default 3 rows and square
    cells) upsampled and blurred, RMS ``rms_factor * sqrt(W * H)`` pixels per component."""
    width, height = size
    rms = float(rms_factor * np.sqrt(width * height))
    if cells is None:
        cells = (3, max(3, int(round(3 * width / height))))
    return np.stack([rms * smooth_noise(rng, (height, width), cells) for _ in range(2)]).astype(
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

"""The simple style of :mod:`utils.synthetic.generate` (its first look, kept byte for byte).

A dark background, the everted lid as a brighter curved band (its bottom edge the lid
margin) and 15-30 bright, roughly vertical glands inside it, some shortened, some
missing; per image gain, gamma, vignetting, noise and a few highlights. The eyelid
mask is the band.
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.synthetic.geometry import (SUPERSAMPLE, Canvas, random_affine, random_elastic_field, smooth_noise, to_fixed,
                                 view_to_canonical)


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
    canvas = Canvas(size)
    band = _Band(rng, width, height)
    h1, w1 = canvas.shape1

    # lid band: hard coverage mask (for the label region) and a soft-edged brightness
    lid2 = np.zeros(canvas.shape2, np.uint8)
    cv2.fillPoly(lid2, [to_fixed(canvas.to_draw(band.outline()))], 255, cv2.LINE_AA, shift=4)
    inner2 = np.zeros(canvas.shape2, np.uint8)          # where glands may lie
    cv2.fillPoly(inner2, [to_fixed(canvas.to_draw(band.outline(inset=0.035 * height)))], 255,
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
        pts = to_fixed(canvas.to_draw(outline))
        bright = int(round(255 * rng.uniform(0.55, 1.0)))
        cv2.fillPoly(mask2, [pts], 255, cv2.LINE_AA, shift=4)
        cv2.fillPoly(value2, [pts], bright, cv2.LINE_AA, shift=4)
        ends = canvas.to_draw(centre[[0]])                  # rounded cap at the margin end
        cv2.circle(mask2, tuple(to_fixed(ends)[0]), int(round(radius * SUPERSAMPLE * 16)),
                   255, -1, cv2.LINE_AA, shift=4)
        cv2.circle(value2, tuple(to_fixed(ends)[0]), int(round(radius * SUPERSAMPLE * 16)),
                   bright, -1, cv2.LINE_AA, shift=4)
    inside = inner2.astype(np.float32) / 255.0
    gland_soft = canvas.down(mask2.astype(np.float32) / 255.0 * inside)
    gland_value = canvas.down(value2.astype(np.float32) / 255.0 * inside)
    lid_soft = canvas.down(lid2.astype(np.float32) / 255.0)

    # shading: background < lid < glands, each with its own texture
    mean_r = float(np.mean(radii)) if radii else 1.0
    lid_edge = cv2.GaussianBlur(lid_soft, (0, 0), 0.02 * height + 0.5)
    tube = cv2.GaussianBlur(gland_value, (0, 0), 0.3 * mean_r + 0.3)
    acini = smooth_noise(rng, (h1, w1), (h1 / max(2 * mean_r, 2.0), w1 / max(2 * mean_r, 2.0)))
    bg = rng.uniform(0.08, 0.16) * (1.0 + 0.25 * smooth_noise(rng, (h1, w1), (3, 6)))
    lid_level = rng.uniform(0.30, 0.40) * (1.0 + 0.10 * smooth_noise(rng, (h1, w1), (4, 10))
                                           + 0.05 * smooth_noise(rng, (h1, w1), (h1 / 6, w1 / 6)))
    gland_gain = rng.uniform(0.28, 0.38)
    image = bg + (lid_level - bg) * lid_edge + gland_gain * tube * (1.0 + 0.15 * acini)
    image += 0.012 * rng.standard_normal((h1, w1), dtype=np.float32)   # fixed fine texture
    return canvas, np.clip(image, 0.0, 1.0).astype(np.float32), gland_soft, lid_soft


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


def generate_simple_patient(rng: np.random.Generator, size: tuple[int, int],
                             images_per_patient: int) -> dict:
    """One simple-style patient: the dict of :func:`utils.synthetic.generate.generate_patient`."""
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

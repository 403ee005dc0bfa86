"""The realistic style of :mod:`utils.synthetic.generate`: infrared meibography of an everted
upper lid with skin, eyelashes, the eye below the lid, specular glints, low and uneven
gland contrast, known gland dropout and per-image acquisition artefacts.

Canonical frame (``W x H`` pixels, x = column, y = row). The tarsal plate (the eyelid
mask ``E``) lies between the lid margin (its top edge, ``y = margin(x)``) and its far
edge (``y = margin(x) + depth(x)``) for ``|u| <= 1``, ``u = (x - cx) / half``. Lid
coordinates ``(u, v)``: ``v = 0`` at the margin, ``v = 1`` at the far edge. Skin and
eyelashes lie above the margin, the fold and the eye below the far edge.

Glands: slot ``i`` sits at ``u_i`` and owns the vertical strip ``bounds[i] <= u <=
bounds[i + 1]`` (midpoints to its neighbours; the outer strips reach the lid ends). Its
gland starts at the margin and ends at the tip row ``margin(x_i) + lengths[i] *
depth(x_i)`` (``lengths[i] = 0``: no gland). As on real lids, the glands of a healthy lid
fill only the margin side of the plate: each patient has a healthy extent drawn from
:data:`HEALTHY_EXTENT` (share of the plate's depth), and a healthy gland's length
``healthy[i]`` is that extent times :data:`HEALTHY_JITTER`; the far part of the plate holds
no glands. Dropout shortens (from the far end) or removes glands. The gland-bearing region
``R`` is the union, over slots with a gland, of the strip's part from the margin down to
that tip row; the healthy span ``S`` the same with every slot's healthy length; both
clipped to ``E``. Rasterised in the canonical frame and warped like the masks, they give
the true dropout of a view, ``1 - |R & S & E| / |S & E|`` on that view's pixels: the span
definition of :mod:`utils.clinical.dropout` with the generator's own healthy lengths.

Grades over patients: :data:`GRADE_SHARES`, the shares of clinicians' meiboscores 0-3 on
public upper-lid meibography (MGD-1k), and within a grade a level from
:data:`GRADE_RANGES`.
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.synthetic.geometry import (SUPERSAMPLE, Canvas, random_affine, random_elastic_field, smooth_noise, to_fixed,
                                 view_to_canonical)

# dropout levels of the grades none, mild, moderate, severe, and the grades' shares over patients
GRADE_RANGES = ((0.0, 0.04), (0.08, 0.30), (0.38, 0.62), (0.70, 0.90))
GRADE_SHARES = tuple(p / 99 for p in (21, 58, 17, 3))   # MGD-1k upper lids: 21 / 58 / 17 / 3 % (rounded)

CANVAS_MARGIN = 0.2          # larger than the simple style's: views move more
MIN_LENGTH = 0.15            # a gland shortened below this fraction of its healthy length is removed
HEALTHY_EXTENT = (0.50, 0.62)   # a patient's healthy glands fill this share of the plate's depth
HEALTHY_JITTER = (0.96, 1.0)    # a healthy gland's length, fraction of the patient's healthy extent
DILATION = 1.3               # width factor of a gland beside a lost stretch
NATIVE_HEIGHT = 350          # per-pixel noise is that of a frame this tall, averaged down if smaller
DEVICES = ("IR-MEIBO 5", "MGX-500", "K-SCAN IR", "LIDCAM 2", "OPTO-IR M3")


# ---------------------------------------------------------------------------------------------
# lid geometry


class Tarsus:
    """The everted tarsal plate in canonical coordinates (see the module docstring)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.cx = width * (0.5 + rng.uniform(-0.03, 0.03))
        self.half = width * rng.uniform(0.40, 0.45)
        self.top = height * rng.uniform(0.24, 0.33)
        self.arch = height * rng.uniform(0.02, 0.08)
        self.tilt = height * rng.uniform(-0.03, 0.03)
        self.depth0 = height * rng.uniform(0.40, 0.50)
        self.power = rng.uniform(2.0, 3.2)
        self.roundness = rng.uniform(0.45, 0.70)
        self.skew = rng.uniform(-0.12, 0.12)
        self.wobble = (height * rng.uniform(0.003, 0.01), rng.uniform(1.5, 3.5),
                       rng.uniform(0.0, 2 * np.pi))

    def u(self, x: np.ndarray) -> np.ndarray:
        """Canonical column -> lid coordinate ``u`` (-1 and 1 at the lid ends)."""
        return (np.asarray(x, dtype=np.float64) - self.cx) / self.half

    def x(self, u: np.ndarray) -> np.ndarray:
        """Lid coordinate ``u`` -> canonical column."""
        return self.cx + self.half * np.asarray(u, dtype=np.float64)

    def margin(self, x: np.ndarray) -> np.ndarray:
        """Row of the lid margin at column ``x`` (defined beyond the lid ends too)."""
        u = self.u(x)
        amp, freq, phase = self.wobble
        return self.top + self.arch * u ** 2 + self.tilt * u + amp * np.sin(freq * u + phase)

    def depth(self, x: np.ndarray) -> np.ndarray:
        """Height of the plate at column ``x``; 0 beyond the lid ends."""
        u = np.clip(self.u(x), -1.0, 1.0)
        return self.depth0 * (1.0 - np.abs(u) ** self.power) ** self.roundness * (1 + self.skew * u)

    def point(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Lid coordinates -> canonical (x, y) ``[N, 2]``."""
        x = self.x(u)
        return np.stack([x, self.margin(x) + np.asarray(v) * self.depth(x)], axis=1)

    def strip(self, u0: float, u1: float, v0: float, v1: float, step: float) -> np.ndarray:
        """Closed polygon (x, y) of ``u0 <= u <= u1, v0 <= v <= v1``; ``step``: sampling in px."""
        n = max(3, int(np.ceil(self.half * (u1 - u0) / step)) + 1)
        us = np.linspace(u0, u1, n)
        return np.concatenate([self.point(us, np.full(n, v0)), self.point(us[::-1], np.full(n, v1))])


def _slots(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gland slots along the lid: ``u`` ``[n]`` (jittered, even spacing) and strip ``bounds``
    ``[n + 1]`` (midpoints; the outer ones at the lid ends, -1 and 1)."""
    n = int(rng.integers(20, 31))
    pitch = 2.0 / n
    u = -1.0 + pitch * (np.arange(n) + 0.5) + rng.uniform(-0.12, 0.12, n) * pitch
    bounds = np.concatenate([[-1.0], 0.5 * (u[1:] + u[:-1]), [1.0]])
    return u, bounds


class LidGrid:
    """The plate sampled on a fine grid of columns, to measure canonical dropout fast."""

    def __init__(self, tarsus: Tarsus, u: np.ndarray, bounds: np.ndarray, samples: int = 4000):
        edges = np.linspace(-1.0, 1.0, samples + 1)
        x = tarsus.x(0.5 * (edges[1:] + edges[:-1]))
        self.margin, self.depth = tarsus.margin(x), tarsus.depth(x)
        self.owner = np.clip(np.searchsorted(bounds, tarsus.u(x), side="right") - 1, 0, len(u) - 1)
        slot_x = tarsus.x(u)
        self.slot_margin, self.slot_depth = tarsus.margin(slot_x), tarsus.depth(slot_x)

    def tips(self, lengths: np.ndarray) -> np.ndarray:
        """Row of each gland's tip ``[n]`` (canonical y)."""
        return self.slot_margin + lengths * self.slot_depth

    def covered(self, lengths: np.ndarray) -> float:
        """Plate area (in grid units) of the strips' parts from the margin down to their
        gland's tip row."""
        tip = self.tips(lengths)[self.owner]
        return float((np.clip(tip - self.margin, 0.0, self.depth) * (lengths[self.owner] > 0.0)).sum())

    def dropout(self, lengths: np.ndarray, healthy: np.ndarray) -> float:
        """Canonical true dropout: the share of the healthy span ``S`` (the strips down to
        their healthy tips) outside the gland-bearing region ``R``."""
        return 1.0 - self.covered(lengths) / self.covered(healthy)


def _span_pattern(rng: np.random.Generator, u: np.ndarray, level: float) -> np.ndarray:
    """Where dropout strikes, ``[n]`` in [0, 1]: one or two contiguous spans of the lid,
    flat in the middle, tapering at their ends (those glands are shortened, not removed)."""
    spans = 1 if level > 0.6 else int(rng.integers(1, 3))
    total = min(1.0, level * rng.uniform(1.1, 1.4) + 0.06)
    widths = 2.0 * total * rng.dirichlet(np.full(spans, 2.0))
    pattern = np.zeros_like(u)
    for width in widths:
        centre = rng.uniform(-1.0 + 0.5 * width, 1.0 - 0.5 * width) if width < 2.0 else 0.0
        dist = np.abs(u - centre) / (0.5 * width + 1e-9)
        taper = 0.5 * (1.0 + np.cos(np.pi * np.clip((dist - 0.55) / 0.45, 0.0, 1.0)))
        pattern = np.maximum(pattern, np.where(dist <= 1.0, taper, 0.0))
    return pattern * rng.uniform(0.85, 1.15, len(u))


def _shortened(healthy: np.ndarray, pattern: np.ndarray, strength: float) -> np.ndarray:
    """Gland lengths after cutting ``strength * pattern`` (fraction) off their far part."""
    kept = 1.0 - np.clip(strength * pattern, 0.0, 1.0)
    return np.where(kept < MIN_LENGTH, 0.0, healthy * kept)


def gland_lengths(rng: np.random.Generator, u: np.ndarray, grid: LidGrid,
                  level: float) -> tuple[np.ndarray, np.ndarray]:
    """Gland lengths ``[n]`` (fraction of the local lid depth, 0 = missing) whose canonical
    dropout is as close to ``level`` as the slots allow (bisection on the cut strength), and
    the healthy lengths they were cut from."""
    healthy = rng.uniform(*HEALTHY_EXTENT) * rng.uniform(*HEALTHY_JITTER, len(u))
    pattern = _span_pattern(rng, u, level)
    if level <= 0.0:
        return healthy, healthy
    if grid.dropout(_shortened(healthy, pattern, 1e3), healthy) < level:
        pattern = np.maximum(pattern, 0.5)          # the spans cannot hold it: widen to the lid
    lo, hi = 0.0, 1e3
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if grid.dropout(_shortened(healthy, pattern, mid), healthy) < level \
            else (lo, mid)
    return _shortened(healthy, pattern, hi), healthy


# ---------------------------------------------------------------------------------------------
# anatomy layers (1x canvas unless named ...2: drawing resolution)


def _fill(canvas: Canvas, polygons: list, value: int = 255, antialias: bool = True) -> np.ndarray:
    """Polygons (canonical x, y) filled into a new uint8 drawing-resolution layer."""
    layer = np.zeros(canvas.shape2, np.uint8)
    pts = [to_fixed(canvas.to_draw(p)) for p in polygons]
    cv2.fillPoly(layer, pts, value, cv2.LINE_AA if antialias else cv2.LINE_8, shift=4)
    return layer


def _gland_outline(rng: np.random.Generator, tarsus: Tarsus, u0: float, v_range: tuple[float, float],
                   pitch: float, radius: float) -> np.ndarray:
    """Closed outline (x, y) ``[2n, 2]`` of one gland over ``v_range`` (lid coordinates):
    tortuous, lobulated, fanning out a little, with a blunt, rounded far tip."""
    x0 = float(tarsus.x(u0))
    depth = float(tarsus.depth(x0))
    start, end = v_range
    steps = max(16, int((end - start) * depth / 0.7))
    v = np.linspace(start, end, steps)
    t = (v + 0.06) / 1.06
    lateral = 0.1 * pitch * u0 * t
    for _ in range(3):
        lateral += pitch * rng.uniform(0.02, 0.08) * np.sin(
            2 * np.pi * rng.uniform(0.5, 3.0) * t + rng.uniform(0, 2 * np.pi))
    centre = np.stack([x0 + lateral, tarsus.margin(x0) + v * depth], axis=1)
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    lobes = (1.0 + 0.14 * np.sin(2 * np.pi * rng.uniform(3.0, 8.0) * t + rng.uniform(0, 2 * np.pi))
             + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi)))
    to_tip = np.clip((end - v) * depth / max(0.5 * radius, 1e-6), 0.0, 1.0)
    r = radius * lobes * np.sqrt(1.0 - (1.0 - to_tip) ** 2)
    return np.concatenate([centre + normal * r[:, None], (centre - normal * r[:, None])[::-1]])


def _draw_glands(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus, u: np.ndarray,
                 lengths: np.ndarray, healthy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Glands at drawing resolution: coverage ``uint8`` and brightness ``uint8``. Glands beside
    a lost stretch are dilated; where a gland was shortened or removed, sometimes a faint
    unlabelled remnant (a ghost gland) is left."""
    pitch = tarsus.half * 2.0 / len(u)
    mask2 = np.zeros(canvas.shape2, np.uint8)
    value2 = np.zeros(canvas.shape2, np.uint8)
    kept = lengths / healthy
    padded = np.concatenate([[0.0], kept, [0.0]])
    beside_loss = np.maximum(kept - padded[:-2], kept - padded[2:]) > 0.35
    for u0, length, full, dilated in zip(u, lengths, healthy, beside_loss):
        radius = pitch * rng.uniform(0.23, 0.31) * (DILATION if dilated else 1.0)
        bright = int(round(255 * rng.uniform(0.5, 1.0)))
        ghost = rng.uniform() < 0.5 and full - length > 0.25 * full
        if length > 0.0:
            outline = _gland_outline(rng, tarsus, u0, (-0.06, length), pitch, radius)
            pts = to_fixed(canvas.to_draw(outline))
            cv2.fillPoly(mask2, [pts], 255, cv2.LINE_AA, shift=4)
            cv2.fillPoly(value2, [pts], bright, cv2.LINE_AA, shift=4)
        if ghost:
            begin = length + rng.uniform(0.05, 0.2) * (full - length)
            end = begin + rng.uniform(0.2, 0.6) * (full - begin)
            outline = _gland_outline(rng, tarsus, u0, (begin, end), pitch, 0.6 * radius)
            cv2.fillPoly(value2, [to_fixed(canvas.to_draw(outline))],
                         int(round(bright * rng.uniform(0.2, 0.4))), cv2.LINE_AA, shift=4)
    return mask2, value2


def _region_layer(canvas: Canvas, tarsus: Tarsus, bounds: np.ndarray, tips: np.ndarray,
                  lengths: np.ndarray) -> np.ndarray:
    """Gland-bearing strips (uint8 drawing resolution, not yet clipped to the plate): slot
    ``i``'s strip from above the margin down to the row ``tips[i]``; the outer strips and the
    margin side overshoot so that clipping to the plate sets those edges."""
    ends = bounds.copy()
    ends[0], ends[-1] = -1.1, 1.1
    polygons = []
    for i in np.flatnonzero(lengths > 0.0):
        top = tarsus.strip(ends[i], ends[i + 1], -0.2, -0.2, 1.0)
        half = len(top) // 2
        bottom = top[half:].copy()
        bottom[:, 1] = tips[i]
        polygons.append(np.concatenate([top[:half], bottom]))
    return _fill(canvas, polygons, antialias=False) if polygons else np.zeros(canvas.shape2, np.uint8)


def _column_geometry(canvas: Canvas, tarsus: Tarsus) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1x canvas grids ``[h1, w1]``: row ``y`` (canonical), margin row and far-edge row of
    each column (the far edge equals the margin beyond the lid ends)."""
    h1, w1 = canvas.shape1
    xs = np.arange(w1, dtype=np.float64) - canvas.mx
    ys = (np.arange(h1, dtype=np.float64) - canvas.my)[:, None]
    margin = tarsus.margin(xs)[None, :]
    far = margin + tarsus.depth(xs)[None, :]
    return ys, margin, far


def _lashes(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus, height: int) -> np.ndarray:
    """Eyelashes rooted just above the margin, curving up and outwards: coverage 1x float32."""
    layer = np.zeros(canvas.shape2, np.uint8)
    count = int(rng.integers(70, 130))
    roots_u = rng.uniform(-1.05, 1.05, count)
    t = np.linspace(0.0, 1.0, 9)[:, None]
    for u0 in roots_u:
        x0 = float(tarsus.x(u0))
        root = np.array([x0, float(tarsus.margin(x0)) - height * rng.uniform(0.01, 0.035)])
        angle = np.deg2rad(30.0 * u0 + rng.normal(0.0, 12.0))
        direction = np.array([np.sin(angle), -np.cos(angle)])
        side = np.array([-direction[1], direction[0]]) * np.sign(u0 + 1e-9)
        length = height * rng.uniform(0.07, 0.22)
        pts = root + length * (t * direction + rng.uniform(0.1, 0.35) * t ** 2 * side)
        thick = max(1, int(round(SUPERSAMPLE * height * 0.0045 * rng.uniform(0.7, 1.4))))
        cv2.polylines(layer, [to_fixed(canvas.to_draw(pts))], False,
                      int(round(255 * rng.uniform(0.5, 1.0))), thick, cv2.LINE_AA, shift=4)
    return canvas.down(layer.astype(np.float32) / 255.0)


def _vessels(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus) -> np.ndarray:
    """Faint conjunctival vessels over the plate (random walks): coverage 1x float32."""
    layer = np.zeros(canvas.shape2, np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        steps = 24
        u0, v0 = rng.uniform(-0.8, 0.8), rng.uniform(0.1, 0.9)
        us = u0 + np.cumsum(rng.normal(0.0, 0.02, steps)) + np.linspace(0, rng.uniform(-0.3, 0.3), steps)
        vs = np.clip(v0 + np.cumsum(rng.normal(0.0, 0.04, steps)), 0.0, 1.0)
        pts = tarsus.point(np.clip(us, -1.0, 1.0), vs)
        cv2.polylines(layer, [to_fixed(canvas.to_draw(pts))], False, 255,
                      max(1, int(round(SUPERSAMPLE * tarsus.depth0 * 0.012))), cv2.LINE_AA, shift=4)
    return canvas.down(layer.astype(np.float32) / 255.0)


def _skin(rng: np.random.Generator, shape: tuple[int, int], height: int) -> np.ndarray:
    """Eyelid skin: shading, wrinkles roughly parallel to the lid and dark pores, 1x float32."""
    h1, w1 = shape
    level = rng.uniform(0.38, 0.55)
    shading = 1.0 + 0.15 * smooth_noise(rng, shape, (3, 6))
    wrinkles = smooth_noise(rng, shape, (h1 / max(0.025 * height, 2.0), w1 / max(0.2 * h1, 4.0)))
    fine = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0),
                            max(0.5, 0.0035 * height))
    fine /= float(fine.std()) + 1e-8
    pores = np.clip(fine - 2.0, 0.0, None)
    return level * shading * (1.0 + 0.06 * wrinkles + 0.04 * fine - 0.35 * pores)


def _eye(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus, width: int,
         height: int) -> np.ndarray:
    """Below the lid: the dark eye with a darker iris and small corneal reflections, 1x."""
    h1, w1 = canvas.shape1
    level = rng.uniform(0.07, 0.17) * (1.0 + 0.25 * smooth_noise(rng, (h1, w1), (3, 6)))
    centre = np.array([tarsus.cx + width * rng.uniform(-0.15, 0.15),
                       tarsus.top + tarsus.depth0 + height * rng.uniform(0.25, 0.5)])
    radius = height * rng.uniform(0.2, 0.32)
    yy, xx = np.mgrid[0:h1, 0:w1].astype(np.float32)
    dist = np.hypot(xx - canvas.mx - centre[0], yy - canvas.my - centre[1]) / radius
    eye = level * (1.0 - 0.5 / (1.0 + np.exp((dist - 1.0) * 12.0)))
    spots = np.zeros((h1, w1), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        p = centre + radius * rng.uniform(-0.5, 0.5, 2)
        cv2.circle(spots, (int(p[0] + canvas.mx), int(p[1] + canvas.my)),
                   max(1, int(round(height * rng.uniform(0.006, 0.015)))),
                   float(rng.uniform(0.4, 0.8)), -1, cv2.LINE_AA)
    return eye + cv2.GaussianBlur(spots, (0, 0), 0.7)


def _gland_shading(rng: np.random.Generator, shape: tuple[int, int], value: np.ndarray,
                   pitch: float) -> np.ndarray:
    """Brightness the glands add: blurred tubes, lobulated (acini), unevenly lit, with a
    diffuse glow between them; 1x float32."""
    h1, w1 = shape
    tube = cv2.GaussianBlur(value, (0, 0), 0.12 * pitch + 0.3)
    cell = max(0.35 * pitch, 2.0)
    acini = smooth_noise(rng, shape, (h1 / cell, w1 / cell))
    uneven = np.clip(1.0 + 0.3 * smooth_noise(rng, shape, (3, 5)), 0.45, None)
    glow = cv2.GaussianBlur(value, (0, 0), 1.2 * pitch)
    gain = rng.uniform(0.16, 0.30)
    return gain * uneven * (tube * (1.0 + 0.3 * acini) + 0.25 * glow)


def _lid_layers(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus, u: np.ndarray,
                bounds: np.ndarray, grid: LidGrid, level: float) -> dict:
    """Gland lengths for ``level`` (and the healthy ones) and the 1x coverage layers ``gland``,
    ``lid`` (``E``), ``region`` (``R``) and ``span`` (``S``; both clipped to ``E``) and the
    glands' brightness ``value``."""
    lengths, healthy = gland_lengths(rng, u, grid, level)
    lid2 = _fill(canvas, [tarsus.strip(-1.0, 1.0, 0.0, 1.0, 1.0)])
    mask2, value2 = _draw_glands(rng, canvas, tarsus, u, lengths, healthy)
    region2 = np.minimum(_region_layer(canvas, tarsus, bounds, grid.tips(lengths), lengths), lid2)
    span2 = np.minimum(_region_layer(canvas, tarsus, bounds, grid.tips(healthy), healthy), lid2)
    lid_frac2 = lid2.astype(np.float32) / 255.0
    return {"lengths": lengths, "healthy": healthy,
            "span": canvas.down(span2.astype(np.float32) / 255.0),
            "gland": canvas.down(np.minimum(mask2, lid2).astype(np.float32) / 255.0),
            "value": canvas.down(value2.astype(np.float32) / 255.0 * lid_frac2),
            "lid": canvas.down(lid_frac2),
            "region": canvas.down(region2.astype(np.float32) / 255.0)}


def _surroundings(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus,
                  size: tuple[int, int]) -> np.ndarray:
    """Everything but the plate, 1x: skin and lashes above the margin, a bright rim along it,
    the fold's shadow below the far edge and the eye beneath."""
    width, height = size
    ys, margin, far = _column_geometry(canvas, tarsus)
    soft = 0.006 * height + 0.5
    skin_side = 1.0 / (1.0 + np.exp(np.clip((ys - margin) / soft, -50, 50)))
    skin = _skin(rng, canvas.shape1, height)
    outside = skin * (1.0 - rng.uniform(0.55, 0.8) * _lashes(rng, canvas, tarsus, height))
    outside = skin_side * outside + (1.0 - skin_side) * _eye(rng, canvas, tarsus, width, height)
    in_lid = np.abs(tarsus.u(np.arange(canvas.shape1[1]) - canvas.mx))[None, :] < 1.02
    rim = np.exp(-((margin - ys - 0.012 * height) / (0.008 * height + 0.5)) ** 2) * in_lid
    fold = np.exp(-((ys - far - 0.015 * height) / (0.012 * height + 0.5)) ** 2) * in_lid
    return outside * (1.0 - 0.6 * fold) + rng.uniform(0.06, 0.16) * rim


def _plate_texture(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus,
                   pitch: float) -> np.ndarray:
    """The plate without glands, 1x: uneven brightness, gland-sized blotches, faint vessels."""
    shape = canvas.shape1
    tarsal = rng.uniform(0.28, 0.42) * (1.0 + 0.2 * smooth_noise(rng, shape, (3, 6))
                                        + 0.07 * smooth_noise(rng, shape, (8, 16)))
    cell = max(0.5 * pitch, 2.0)
    tarsal += rng.uniform(0.01, 0.03) * smooth_noise(rng, shape, (shape[0] / cell, shape[1] / cell))
    return tarsal - rng.uniform(0.02, 0.05) * _vessels(rng, canvas, tarsus)


def render_anatomy(rng: np.random.Generator, size: tuple[int, int], level: float) -> dict:
    """One patient's anatomy on a canvas (see the module docstring).

    Returns a dict: ``canvas``; ``tarsus``; ``image`` (illumination-free, float32 in
    [0, 1]); ``gland``, ``lid``, ``region``, ``span``: float32 coverage in [0, 1] of the
    glands, the plate ``E``, the gland-bearing region ``R`` and the healthy span ``S``
    (both clipped to ``E``), all ``canvas.shape1``; ``u``, ``bounds``, ``lengths``,
    ``healthy``: the slots; ``canonical_dropout``.
    """
    width, height = size
    canvas = Canvas(size, CANVAS_MARGIN)
    tarsus = Tarsus(rng, width, height)
    u, bounds = _slots(rng)
    grid = LidGrid(tarsus, u, bounds)
    pitch = tarsus.half * 2.0 / len(u)
    layers = _lid_layers(rng, canvas, tarsus, u, bounds, grid, level)
    plate = cv2.GaussianBlur(layers["lid"], (0, 0), 0.004 * height + 0.4)
    outside = _surroundings(rng, canvas, tarsus, size)
    inside = _plate_texture(rng, canvas, tarsus, pitch) + _gland_shading(rng, canvas.shape1,
                                                                        layers["value"], pitch)
    image = outside * (1.0 - plate) + inside * plate
    image += 0.01 * np.sqrt(min(1.0, height / NATIVE_HEIGHT)) * rng.standard_normal(
        canvas.shape1, dtype=np.float32)
    return {"canvas": canvas, "tarsus": tarsus, "image": np.clip(image, 0.0, 1.0).astype(np.float32),
            "gland": layers["gland"], "lid": layers["lid"], "region": layers["region"],
            "span": layers["span"], "u": u, "bounds": bounds, "lengths": layers["lengths"],
            "healthy": layers["healthy"],
            "canonical_dropout": grid.dropout(layers["lengths"], layers["healthy"])}


# ---------------------------------------------------------------------------------------------
# per-image geometry and acquisition


def _jacobian_min(field: np.ndarray) -> float:
    """Smallest Jacobian determinant of ``p -> p + e(p)`` for a field ``[2, H, W]``."""
    d_row_dy, d_row_dx = np.gradient(field[0].astype(np.float64))
    d_col_dy, d_col_dx = np.gradient(field[1].astype(np.float64))
    return float(((1 + d_col_dx) * (1 + d_row_dy) - d_col_dy * d_row_dx).min())


def realistic_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A coarse plus a more local smooth field ``float32 [2, H, W]``, scaled down if needed so
    that the map stays fold-free (Jacobian determinant above 0.5)."""
    width, height = size
    field = random_elastic_field(rng, size, 0.009)
    field += random_elastic_field(rng, size, 0.0045, (6, max(6, int(round(6 * width / height)))))
    while _jacobian_min(field) < 0.5:
        field *= 0.8
    return field.astype(np.float32)


def _margin_glints(rng: np.random.Generator, canvas: Canvas, tarsus: Tarsus,
                   height: int) -> np.ndarray:
    """Specular glints of the tear film along the lid margin and a few on the plate: a 1x
    canvas layer to add to the anatomy before warping."""
    layer = np.zeros(canvas.shape1, np.float32)
    for k in range(int(rng.integers(4, 14)) + int(rng.integers(0, 6))):
        on_margin = k < 4 or rng.uniform() < 0.7
        u0 = rng.uniform(-0.9, 0.9)
        x0 = float(tarsus.x(u0))
        if on_margin:
            y0 = float(tarsus.margin(x0)) + height * rng.uniform(-0.015, 0.01)
            axes = height * np.array([rng.uniform(0.006, 0.025), rng.uniform(0.002, 0.006)])
            angle = np.degrees(np.arctan(2 * tarsus.arch * u0 / tarsus.half))
        else:
            y0 = float(tarsus.margin(x0) + rng.uniform(0.1, 0.9) * tarsus.depth(x0))
            axes = height * rng.uniform(0.002, 0.007, 2)
            angle = rng.uniform(0, 180)
        centre = (x0 + canvas.mx, y0 + canvas.my)
        cv2.ellipse(layer, (centre, (2 * float(axes[0]), 2 * float(axes[1])), float(angle)),
                    float(rng.uniform(0.3, 0.8) if on_margin else rng.uniform(0.15, 0.4)), -1,
                    cv2.LINE_AA)
    return cv2.GaussianBlur(layer, (0, 0), 0.0015 * height + 0.4)


def _finger(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An examiner's fingertip entering from the top edge: (brightness, opacity) ``[H, W]``."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    centre = (width * rng.uniform(0.15, 0.85), -height * rng.uniform(0.05, 0.2))
    axes = (width * rng.uniform(0.1, 0.18), height * rng.uniform(0.2, 0.32))
    cv2.ellipse(mask, (centre, (2 * axes[0], 2 * axes[1]), float(rng.uniform(-30, 30))), 255, -1,
                cv2.LINE_AA)
    depth = cv2.distanceTransform((mask > 127).astype(np.uint8), cv2.DIST_L2, 3)
    depth /= max(float(depth.max()), 1.0)
    ridges = smooth_noise(rng, (height, width), (height / max(0.01 * height, 1.5), 4))
    value = rng.uniform(0.55, 0.8) * (0.7 + 0.3 * np.sqrt(depth)) * (1 + 0.03 * ridges)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.004 * height + 0.5)
    return value.astype(np.float32), alpha


def _swab(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A cotton swab entering from the left or right edge low in the frame: (brightness,
    opacity) ``[H, W]``."""
    width, height = size
    left = rng.uniform() < 0.5
    tip = np.array([width * rng.uniform(0.12, 0.3), height * rng.uniform(0.72, 0.95)])
    if not left:
        tip[0] = width - tip[0]
    end = np.array([0.0 if left else width - 1.0, tip[1] + height * rng.uniform(-0.2, 0.2)])
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, tuple(int(v) for v in end), tuple(int(v) for v in tip), 255,
             max(1, int(round(height * rng.uniform(0.012, 0.022)))), cv2.LINE_AA)
    head = (width * rng.uniform(0.05, 0.075), height * rng.uniform(0.04, 0.055))
    angle = float(np.degrees(np.arctan2(tip[1] - end[1], tip[0] - end[0])))
    cv2.ellipse(mask, ((float(tip[0]), float(tip[1])), (2 * head[0], 2 * head[1]), angle), 255, -1,
                cv2.LINE_AA)
    fibres = smooth_noise(rng, (height, width), (height / max(0.01 * height, 1.5),
                                                  width / max(0.01 * height, 1.5)))
    value = rng.uniform(0.7, 0.85) * (1.0 + 0.05 * fibres)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.003 * height + 0.5)
    return value.astype(np.float32), alpha


def _expose(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gain, gamma, offset, vignetting and a lighting gradient."""
    height, width = image.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    radial = ((xs - cx) / (0.6 * width)) ** 2 + ((ys - cy) / (0.6 * height)) ** 2
    light = (1.0 - rng.uniform(0.1, 0.35) * radial) * (
        1.0 + rng.uniform(-0.15, 0.15) * (xs / width - 0.5) + rng.uniform(-0.1, 0.1) * (ys / height - 0.5))
    out = rng.uniform(0.8, 1.2) * np.power(np.clip(image, 0.0, 1.0), rng.uniform(0.85, 1.2)) * light
    return out + rng.uniform(-0.03, 0.04)


def _defocus_and_motion(rng: np.random.Generator, image: np.ndarray, pitch: float) -> np.ndarray:
    """Depth-of-field blur varying across the frame and, in some images, a short motion blur;
    blur lengths scale with the gland pitch ``pitch`` (pixels)."""
    height, width = image.shape
    sigma = pitch * rng.uniform(0.03, 0.09)
    near = cv2.GaussianBlur(image, (0, 0), sigma + 0.2)
    far = cv2.GaussianBlur(image, (0, 0), 2.0 * sigma + 0.3)
    weight = np.clip(0.5 + 0.5 * smooth_noise(rng, (height, width), (2, 4)), 0.0, 1.0)
    out = (1.0 - weight) * near + weight * far
    if rng.uniform() < 0.4:
        length = pitch * rng.uniform(0.1, 0.35)
        k = 2 * int(np.ceil(length / 2)) + 1
        kernel = np.zeros((k, k), np.float32)
        angle = rng.uniform(0, np.pi)
        dx, dy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
        c = k // 2
        cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))),
                 (int(round(c + dx)), int(round(c + dy))), 1.0, 1, cv2.LINE_AA)
        out = cv2.filter2D(out, -1, kernel / max(float(kernel.sum()), 1e-6),
                           borderType=cv2.BORDER_REFLECT)
    return out


def _sensor_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Read noise plus signal-dependent (shot) noise, as a camera frame of at least
    ``NATIVE_HEIGHT`` rows shows it after downsampling to this size."""
    scale = np.sqrt(min(1.0, image.shape[0] / NATIVE_HEIGHT))
    read = scale * rng.uniform(0.008, 0.03) * rng.standard_normal(image.shape, dtype=np.float32)
    shot = scale * rng.uniform(0.0, 0.03) * np.sqrt(np.clip(image, 0.0, 1.0)) * rng.standard_normal(
        image.shape, dtype=np.float32)
    return image + read + shot


def overlay_plan(rng: np.random.Generator) -> dict | None:
    """A patient's on-screen text (or ``None``): corner, lines and a brightness."""
    if rng.uniform() >= 0.5:
        return None
    date = (f"{rng.integers(2015, 2025)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d} "
            f"{rng.integers(8, 19):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}")
    lines = [DEVICES[int(rng.integers(len(DEVICES)))], date]
    if rng.uniform() < 0.5:
        lines.append("OD" if rng.uniform() < 0.5 else "OS")
    corner = ("top-left", "top-right", "bottom-left", "bottom-right")[int(rng.integers(4))]
    return {"corner": corner, "lines": lines, "value": float(rng.uniform(0.85, 1.0))}


def draw_overlay(image: np.ndarray, plan: dict) -> None:
    """In place: the plan's text lines in its corner (cv2.putText, anti-aliased)."""
    height, width = image.shape
    ink = np.zeros((height, width), np.uint8)
    scale = max(0.15, height / 700.0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    line_h = int(round(30 * scale)) + 2
    sizes = [cv2.getTextSize(text, font, scale, 1)[0] for text in plan["lines"]]
    pad = max(2, int(0.015 * height))
    top = plan["corner"].startswith("top")
    for k, (text, (tw, th)) in enumerate(zip(plan["lines"], sizes)):
        row = pad + th + k * line_h if top else height - pad - (len(sizes) - 1 - k) * line_h
        col = pad if plan["corner"].endswith("left") else width - pad - tw
        cv2.putText(ink, text, (col, row), font, scale, 255, 1, cv2.LINE_AA)
    alpha = ink.astype(np.float32) / 255.0
    image *= 1.0 - alpha
    image += plan["value"] * alpha


# ---------------------------------------------------------------------------------------------
# one view and one patient


def _occluder(rng: np.random.Generator, size: tuple[int, int]
              ) -> tuple[str | None, np.ndarray | None, np.ndarray | None]:
    """Sometimes a fingertip or a swab: ``(kind, brightness, opacity)``, or ``(None, None,
    None)``."""
    draw = rng.uniform()
    if draw < 0.12:
        return ("finger", *_finger(rng, size))
    if draw < 0.2:
        return ("swab", *_swab(rng, size))
    return None, None, None


def _view(rng: np.random.Generator, anatomy: dict, size: tuple[int, int], overlay: dict | None
          ) -> dict:
    """One image of the patient: geometry, acquisition and its label masks (the occluder is
    left out of the eyelid and gland masks)."""
    canvas, tarsus = anatomy["canvas"], anatomy["tarsus"]
    matrix = random_affine(rng, size, rotation=6.0, scale=0.08, aniso=0.03, shear=0.04, shift=0.05)
    field = realistic_field(rng, size)
    map_x, map_y = view_to_canonical(matrix, field)
    map_x += canvas.mx
    map_y += canvas.my

    def sample(src: np.ndarray) -> np.ndarray:
        return cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    scene = sample(anatomy["image"] + _margin_glints(rng, canvas, tarsus, size[1]))
    lid = sample(anatomy["lid"]) >= 0.5
    occluder, value, alpha = _occluder(rng, size)
    if occluder is not None:
        scene = scene * (1.0 - alpha) + value * alpha
        lid &= alpha < 0.5
    pitch = tarsus.half * 2.0 / len(anatomy["u"])
    image = _sensor_noise(rng, _defocus_and_motion(rng, _expose(rng, scene), pitch))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if overlay is not None:
        draw_overlay(image, overlay)
    gland = (sample(anatomy["gland"]) >= 0.5) & lid
    span = (sample(anatomy["span"]) >= 0.5) & lid
    region = (sample(anatomy["region"]) >= 0.5) & span
    dropout = 1.0 - float(region.sum()) / float(span.sum()) if span.any() else 0.0
    return {"images": image, "masks": gland.astype(np.uint8), "lid_masks": lid.astype(np.uint8),
            "region_masks": region.astype(np.uint8), "span_masks": span.astype(np.uint8),
            "dropout": dropout, "matrices": matrix,
            "fields": field, "acquisition": {"occluder": occluder,
                                             "text": overlay["corner"] if overlay else None}}


def generate_realistic_patient(rng: np.random.Generator, size: tuple[int, int],
                               images_per_patient: int,
                               dropout_range: tuple[float, float] | None = None) -> dict:
    """One realistic patient; the dict of :func:`utils.synthetic.generate.generate_patient`
    plus ``"region_masks"`` and ``"span_masks"`` (uint8 {0, 1}, the gland-bearing region ``R``
    and the healthy span ``S``, both within the eyelid mask), ``"dropout"``
    (true dropout per image), ``"acquisition"`` (per image: ``occluder`` None / "finger" /
    "swab", ``text`` None or its corner), ``"dropout_level"`` (the patient's target),
    ``"canonical_dropout"``, ``"canonical_region"`` and ``"canonical_span"``. ``dropout_range``:
    the level is drawn uniformly from it; ``None`` draws a grade (none / mild / moderate /
    severe, with the shares :data:`GRADE_SHARES`) first.
    """
    if dropout_range is None:
        dropout_range = GRADE_RANGES[int(rng.choice(len(GRADE_RANGES), p=GRADE_SHARES))]
    level = float(rng.uniform(*dropout_range))
    anatomy = render_anatomy(rng, size, level)
    overlay = overlay_plan(rng)
    views = [_view(rng, anatomy, size, overlay) for _ in range(images_per_patient)]
    out = {key: [view[key] for view in views] for key in views[0]}
    canvas = anatomy["canvas"]
    out["canonical_image"] = canvas.crop(anatomy["image"]).copy()
    for key, layer in (("canonical_mask", "gland"), ("canonical_lid", "lid"),
                       ("canonical_region", "region"), ("canonical_span", "span")):
        out[key] = (canvas.crop(anatomy[layer]) >= 0.5).astype(np.uint8)
    out["canonical_dropout"] = anatomy["canonical_dropout"]
    out["dropout_level"] = level
    return out

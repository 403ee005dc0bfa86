"""The project's one spatial transformer.

Conventions (docs/METHOD.md): a displacement field ``d`` has shape ``[B, 2, H, W]``,
in pixels, channel 0 = row (y), channel 1 = column (x). Warping is a pull-back:
``warp(m, d)(p) = m(p + d(p))``, sampled with ``grid_sample`` using
``align_corners=True`` (pixel ``p`` maps to ``2 p / (size - 1) - 1``) and zeros
outside the image; bilinear for images, :func:`warp_label` (nearest) for labels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.onehot import class_index, one_hot

_GRID_CACHE: dict[tuple, torch.Tensor] = {}
_GRID_CACHE_MAX = 16


def identity_grid(height: int, width: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel coordinates ``[1, 2, H, W]`` (channel 0 = row, 1 = column), cached per
    size, device and dtype. Treat the result as read-only."""
    key = (int(height), int(width), torch.device(device), dtype)
    grid = _GRID_CACHE.get(key)
    if grid is None:
        rows = torch.arange(height, device=device, dtype=dtype)
        cols = torch.arange(width, device=device, dtype=dtype)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))[None]
        if len(_GRID_CACHE) >= _GRID_CACHE_MAX:
            _GRID_CACHE.pop(next(iter(_GRID_CACHE)))
        _GRID_CACHE[key] = grid
    return grid


def _sampling_grid(field: torch.Tensor) -> torch.Tensor:
    """Field ``[B, 2, H, W]`` (pixels) -> normalised ``grid_sample`` grid ``[B, H, W, 2]`` (x, y)."""
    height, width = field.shape[-2:]
    if height < 2 or width < 2:
        raise ValueError(f"warp needs an image of at least 2 x 2 pixels, got {height} x {width}")
    coords = identity_grid(height, width, field.device, field.dtype) + field
    rows = coords[:, 0] * (2.0 / (height - 1)) - 1.0
    cols = coords[:, 1] * (2.0 / (width - 1)) - 1.0
    return torch.stack((cols, rows), dim=-1)


def warp(image: torch.Tensor, field: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Pull-back warp ``image [B, C, H, W]`` by ``field [B, 2, H, W]`` (pixels, row first).

    ``mode`` is ``"bilinear"`` for images and fields, ``"nearest"`` for labels
    (keeps one-hot / binary values exact). Samples outside the image are 0.
    """
    if image.shape[-2:] != field.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and field {tuple(field.shape)} differ in size")
    grid = _sampling_grid(field.to(image.dtype))
    return F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=True)


def warp_label(label: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Nearest warp of a one-hot label ``[B, C, H, W]`` by ``field [B, 2, H, W]``.

    The class index is warped (not the channels), so pixels sampled outside the
    image become class 0 (background) and the result is one-hot everywhere,
    float32 ``[B, C, H, W]``.
    """
    index = class_index(label, keepdim=True).to(field.dtype)
    warped = warp(index, field, mode="nearest")
    return one_hot(warped.round().long(), label.shape[1])


def compose(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Field ``h`` with ``warp(m, h) == warp(warp(m, g), f)``: first ``g``, then ``f``.

    ``h(p) = f(p) + g(p + f(p))``, i.e. ``f + warp(g, f)``. Both ``[B, 2, H, W]``.
    """
    return f + warp(g, f, mode="bilinear")


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement of the stationary velocity field ``velocity [B, 2, H, W]`` (pixels per unit
    time) at time 1, by scaling and squaring: ``d = v / 2^steps``, then ``steps`` times
    ``d = compose(d, d)`` (VoxelMorph's integration). The map ``p -> p + d(p)`` is then
    (nearly) invertible: it folds only where interpolation errors add up. ``steps = 0``
    returns ``velocity`` itself."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    field = velocity / (2 ** steps)
    for _ in range(steps):
        field = compose(field, field)
    return field


def field_from_affine(matrix: torch.Tensor | np.ndarray | Sequence,
                      size: tuple[int, int]) -> torch.Tensor:
    """Displacement field of a 2x3 affine matrix in OpenCV's inverse-map convention.

    ``matrix`` ``[2, 3]`` or ``[B, 2, 3]`` maps an output pixel ``(x, y, 1)`` to the
    source pixel ``(x', y')`` it samples, as ``cv2.warpAffine(src, M, (W, H),
    flags=cv2.WARP_INVERSE_MAP)`` does. ``size`` is ``(H, W)``. Returns
    ``[2, H, W]`` (or ``[B, 2, H, W]``) float32 with ``warp(src, d) ~`` that
    OpenCV warp: ``d = (y' - y, x' - x)``.
    """
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float64) if not torch.is_tensor(matrix) else matrix,
                        dtype=torch.float64)
    batched = m.dim() == 3
    if not batched:
        m = m[None]
    if m.shape[-2:] != (2, 3):
        raise ValueError(f"affine matrix must be 2x3, got {tuple(m.shape)}")
    height, width = size
    grid = identity_grid(height, width, m.device, torch.float64)[0]
    y, x = grid[0], grid[1]
    src_x = m[:, 0, 0, None, None] * x + m[:, 0, 1, None, None] * y + m[:, 0, 2, None, None]
    src_y = m[:, 1, 0, None, None] * x + m[:, 1, 1, None, None] * y + m[:, 1, 2, None, None]
    field = torch.stack((src_y - y, src_x - x), dim=1).to(torch.float32)
    return field if batched else field[0]

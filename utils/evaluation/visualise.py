"""Small image helpers for TensorBoard panels and test-time overlays.

Images are ``[H, W]`` grayscale or ``[H, W, 3]`` RGB, numpy arrays or tensors
(a leading singleton ``[1, H, W]`` is accepted), float in [0, 1] or uint8 in
[0, 255]. Colours are RGB triples of floats in [0, 1]. Everything here returns
RGB (not OpenCV's BGR); write PNGs with :func:`save_png`, which converts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from networks.spatial_transformer import warp
from utils.files import write_png

RED = (1.0, 0.0, 0.0)
GREEN = (0.0, 1.0, 0.0)
BLUE = (0.0, 0.0, 1.0)


def _numpy(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_rgb(image: Any) -> np.ndarray:
    """Image -> float32 ``[H, W, 3]`` RGB in [0, 1] (gray replicated, uint8 scaled, clipped)."""
    array = _numpy(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    array = np.clip(array.astype(np.float32) / scale, 0.0, 1.0)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise ValueError(f"expected an [H, W] or [H, W, 3] image, got shape {array.shape}")


def _blend(rgb: np.ndarray, mask: np.ndarray, color: Sequence[float], alpha: float) -> None:
    """In place: ``rgb[mask] = (1 - alpha) rgb[mask] + alpha color``."""
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(color, dtype=np.float32)


def overlay_mask(image: Any, mask: Any, color: Sequence[float] = RED, alpha: float = 0.5) -> np.ndarray:
    """Tint the ``mask`` pixels of ``image`` with ``color``: float32 ``[H, W, 3]`` in [0, 1].

    A masked pixel becomes ``(1 - alpha) * image + alpha * color``; others are unchanged.
    """
    rgb = to_rgb(image)
    mask = _numpy(mask) != 0
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {rgb.shape[:2]}")
    _blend(rgb, mask, color, alpha)
    return rgb


def tp_fp_fn_overlay(image: Any, pred: Any, gt: Any, alpha: float = 0.5) -> np.ndarray:
    """Error map for test outputs: uint8 RGB ``[H, W, 3]``.

    True positives (pred and gt) are tinted green, false positives (pred only)
    red, false negatives (gt only) blue, each as ``(1 - alpha) * image + alpha *
    colour``; true negatives show the plain image.
    """
    rgb = to_rgb(image)
    pred, gt = _numpy(pred) != 0, _numpy(gt) != 0
    if pred.shape != rgb.shape[:2] or gt.shape != rgb.shape[:2]:
        raise ValueError(f"pred {pred.shape} / gt {gt.shape} do not match image {rgb.shape[:2]}")
    _blend(rgb, pred & gt, GREEN, alpha)
    _blend(rgb, pred & ~gt, RED, alpha)
    _blend(rgb, ~pred & gt, BLUE, alpha)
    return np.round(rgb * 255.0).astype(np.uint8)


def image_grid_panel(images: Sequence[Any], pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Images side by side as one float ``[3, H', W']`` tensor for ``writer.add_image``.

    ``H'`` is the tallest image's height (shorter ones are padded below),
    ``W' = sum(W_i) + pad * (n - 1)``; the gaps and padding are ``pad_value``.
    """
    if not images:
        raise ValueError("image_grid_panel needs at least one image")
    rgbs = [to_rgb(image) for image in images]
    height = max(rgb.shape[0] for rgb in rgbs)
    width = sum(rgb.shape[1] for rgb in rgbs) + pad * (len(rgbs) - 1)
    panel = np.full((height, width, 3), pad_value, dtype=np.float32)
    col = 0
    for rgb in rgbs:
        panel[:rgb.shape[0], col:col + rgb.shape[1]] = rgb
        col += rgb.shape[1] + pad
    return torch.from_numpy(panel).permute(2, 0, 1).contiguous()


def grid_lines(height: int, width: int, spacing: int = 8) -> np.ndarray:
    """float32 ``[H, W]``: 1 on every ``spacing``-th row and column (from 0), else 0."""
    if spacing < 1:
        raise ValueError(f"spacing must be >= 1, got {spacing}")
    image = np.zeros((height, width), dtype=np.float32)
    image[::spacing, :] = 1.0
    image[:, ::spacing] = 1.0
    return image


def deformation_grid(field: Any, spacing: int = 8) -> np.ndarray:
    """Picture of a displacement field: :func:`grid_lines` warped by ``field``.

    ``field``: ``[2, H, W]`` or ``[1, 2, H, W]`` in pixels (channel 0 = row), tensor
    or array. Returns float32 ``[H, W]`` in [0, 1] (bilinear ``warp``); a zero
    field gives the plain grid.
    """
    field = torch.as_tensor(_numpy(field), dtype=torch.float32)
    if field.dim() == 3:
        field = field[None]
    if field.dim() != 4 or field.shape[:2] != (1, 2):
        raise ValueError(f"expected a [2, H, W] or [1, 2, H, W] field, got {tuple(field.shape)}")
    height, width = field.shape[-2:]
    lines = torch.from_numpy(grid_lines(height, width, spacing))[None, None]
    return warp(lines, field)[0, 0].clamp(0.0, 1.0).numpy()


def save_png(path: str | os.PathLike, rgb: Any) -> Path:
    """Write an RGB (``[H, W, 3]``) or gray image as PNG (float [0, 1] or uint8), creating
    the folder. InputError if it cannot be written."""
    array = _numpy(rgb)
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    return write_png(path, array)

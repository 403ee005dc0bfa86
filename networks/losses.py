"""Image-similarity, regularisation and segmentation losses (docs/METHOD.md sections 2 and 5).

All functions take ``[B, C, H, W]`` tensors and follow the inputs' device. Half and
bfloat16 inputs are promoted to float32 and autocast is switched off inside, so the
small constants (SSIM's C1/C2, NCC's 1e-5, the Dice smoothing) keep their meaning under
mixed precision; float64 stays float64.

- :func:`ssim` / :func:`ssim_loss`: mean SSIM map, 11x11 Gaussian window (sigma 1.5),
  C1 = 0.01^2, C2 = 0.03^2, zero padding so the map has the image size.
- :func:`ncc_loss`: VoxelMorph-style local normalised cross-correlation.
- :func:`smoothness_loss`: mean squared forward differences of a field.
- :func:`soft_dice`: the project's one soft Dice (V-Net form), per batch item and channel.
- :func:`dice_ce_loss`: ``(1 - mean soft Dice) + 0.5 * CE``.
- :func:`deep_supervision_loss`: ``L_seg``, DiceCE of the full-resolution and 1/4-level heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.onehot import class_index
from utils.precision import no_autocast

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
NCC_EPS = 1e-5
DICE_SMOOTH = 1.0
CE_WEIGHT = 0.5

_WINDOW_CACHE: dict[tuple, torch.Tensor] = {}


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"{name}: expected two [B, C, H, W] tensors of the same shape, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
                       device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[size]`` centred on ``size // 2`` (sums to 1)."""
    centre = size // 2
    values = [math.exp(-((i - centre) ** 2) / (2.0 * sigma ** 2)) for i in range(size)]
    total = sum(values)
    return torch.tensor([v / total for v in values], dtype=torch.float64).to(device=device, dtype=dtype)


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SSIM's :func:`gaussian_window_1d`, cached per device and dtype."""
    key = (device, dtype)
    if key not in _WINDOW_CACHE:
        _WINDOW_CACHE[key] = gaussian_window_1d(SSIM_WINDOW, SSIM_SIGMA, device, dtype)
    return _WINDOW_CACHE[key]


def _separable_filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 2-D filter with the outer product ``kernel kernel^T`` (``kernel [k]``,
    k odd), zero padding, same size: ``[B, C, H, W] -> [B, C, H, W]``.

    Two depthwise convolutions (``k x 1`` then ``1 x k``) over all channels at once:
    faster (forward and backward) than one ``k x k`` or one convolution per map, and
    exact (zero padding separates).
    """
    channels, size = x.shape[1], kernel.numel()
    pad = size // 2
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    x = F.conv2d(x, kernel.view(1, 1, size, 1).repeat(channels, 1, 1, 1), padding=(pad, 0), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, 1, size).repeat(channels, 1, 1, 1), padding=(0, pad), groups=channels)


def _filter_maps(kernel: torch.Tensor, *maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`_separable_filter` of several ``[B, C, H, W]`` maps as one ``[B, n C, H, W]`` call."""
    channels = maps[0].shape[1]
    return torch.split(_separable_filter(torch.cat(maps, dim=1), kernel), channels, dim=1)


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map ``[B, C, H, W]`` of two ``[B, C, H, W]`` images in [0, 1].

    Local statistics use an 11x11 Gaussian window (sigma 1.5) with zero padding at the
    border (as the published code's ``conv2d(padding=5)``); population (biased)
    variances; ``((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``.
    """
    _check_pair(x, y, "ssim")
    dtype = _compute_dtype(x, y)
    with no_autocast(x.device):
        x = x.to(dtype)
        y = y.to(dtype)
        mu_x, mu_y, e_xx, e_yy, e_xy = _filter_maps(_gaussian_window(x.device, dtype), x, y, x * x, y * y, x * y)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        var_x, var_y, cov = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
        num = (2 * mu_xy + SSIM_C1) * (2 * cov + SSIM_C2)
        den = (mu_xx + mu_yy + SSIM_C1) * (var_x + var_y + SSIM_C2)
        return num / den


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of :func:`ssim_map` over batch, channels and pixels (scalar)."""
    return ssim_map(x, y).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - ssim(x, y)`` (scalar)."""
    return 1.0 - ssim(x, y)


def local_ncc_map(x: torch.Tensor, y: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Squared local correlation ``cc`` ``[B, C, H, W]`` (VoxelMorph definition).

    With box sums over a ``window x window`` neighbourhood (zero padding, so the
    neighbourhood size ``n = window^2`` is used everywhere, also at the border):
    ``S_I = sum(I)``, ``S_J = sum(J)``, ``u_I = S_I / n``, ``u_J = S_J / n`` and

    - ``cross = sum(IJ) - u_J * S_I - u_I * S_J + u_I * u_J * n``  (= sum(IJ) - S_I S_J / n)
    - ``var_I = sum(I^2) - 2 u_I S_I + u_I^2 n``                 (= sum(I^2) - S_I^2 / n)
    - ``var_J = sum(J^2) - 2 u_J S_J + u_J^2 n``
    - ``cc = cross^2 / (var_I * var_J + 1e-5)``.
    """
    _check_pair(x, y, "ncc_loss")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"ncc_loss: window must be a positive odd integer, got {window}")
    dtype = _compute_dtype(x, y)
    with no_autocast(x.device):
        x = x.to(dtype)
        y = y.to(dtype)
        n = float(window * window)
        box = torch.ones(window, device=x.device, dtype=dtype)
        s_i, s_j, s_ii, s_jj, s_ij = _filter_maps(box, x, y, x * x, y * y, x * y)
        u_i, u_j = s_i / n, s_j / n
        cross = s_ij - u_j * s_i - u_i * s_j + u_i * u_j * n
        var_i = s_ii - 2 * u_i * s_i + u_i * u_i * n
        var_j = s_jj - 2 * u_j * s_j + u_j * u_j * n
        return cross * cross / (var_i * var_j + NCC_EPS)


def ncc_loss(x: torch.Tensor, y: torch.Tensor, window: int = 9) -> torch.Tensor:
    """``1 - mean(local_ncc_map(x, y, window))`` (scalar); 0 for locally linearly related images."""
    return 1.0 - local_ncc_map(x, y, window).mean()


def smoothness_loss(flow: torch.Tensor) -> torch.Tensor:
    """``(mean(dx^2) + mean(dy^2)) / 2`` with forward differences of ``flow`` ``[B, 2, H, W]``."""
    if flow.dim() != 4:
        raise ValueError(f"smoothness_loss: expected [B, 2, H, W], got {tuple(flow.shape)}")
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    return ((dx * dx).mean() + (dy * dy).mean()) / 2.0


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """V-Net soft Dice ``[B, C]``: ``(2 sum(y p) + 1) / (sum(y^2) + sum(p^2) + 1)``.

    ``probs`` and ``onehot`` are ``[B, C, H, W]``; sums run over the spatial dims, one
    value per batch item and channel. ``mask`` (``[B, 1, H, W]`` weights, e.g. 0/1 for a
    region) restricts every sum to the weighted pixels. The project's one soft Dice.
    """
    if probs.shape != onehot.shape or probs.dim() < 3:
        raise ValueError(f"soft_dice: expected two [B, C, H, W] tensors of the same shape, "
                         f"got {tuple(probs.shape)} and {tuple(onehot.shape)}")
    onehot = onehot.to(probs.dtype)
    dims = tuple(range(2, probs.dim()))
    if mask is not None:
        mask = mask.to(probs.dtype)
        inter = (mask * onehot * probs).sum(dims)
        denom = (mask * onehot * onehot).sum(dims) + (mask * probs * probs).sum(dims)
        return (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
    inter = (onehot * probs).sum(dims)
    denom = (onehot * onehot).sum(dims) + (probs * probs).sum(dims)
    return (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)


def dice_ce_loss(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``(1 - mean_{b,c} soft_dice(softmax(logits), onehot)) + 0.5 * CE`` (scalar).

    ``logits`` ``[B, C, H, W]``; ``onehot`` ``[B, C, H, W]`` (target class = argmax over C).
    CE is unweighted, averaged over all pixels. Computed in float32 (float64 stays
    float64) with autocast disabled.
    """
    if logits.shape != onehot.shape or logits.dim() != 4:
        raise ValueError(f"dice_ce_loss: expected logits and one-hot [B, C, H, W] of the same shape, "
                         f"got {tuple(logits.shape)} and {tuple(onehot.shape)}")
    dtype = _compute_dtype(logits)
    with no_autocast(logits.device):
        logits = logits.to(dtype)
        target = onehot.to(dtype)
        dice = soft_dice(torch.softmax(logits, dim=1), target).mean()
        ce = F.cross_entropy(logits, class_index(target))
        return (1.0 - dice) + CE_WEIGHT * ce


def deep_supervision_loss(outputs: dict[str, torch.Tensor], onehot: torch.Tensor) -> torch.Tensor:
    """``L_seg = DiceCE(out, y) + DiceCE(level2, y)`` (docs/METHOD.md section 5) for the
    ``SegmentationNet`` outputs of labelled images and their one-hot labels ``[B, 2, H, W]``.
    The one supervised loss of every segmentation method."""
    return dice_ce_loss(outputs["out"], onehot) + dice_ce_loss(outputs["level2"], onehot)


def region_dice_loss(logits: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - mean_{b,c} soft_dice(softmax(logits), onehot, mask)``: Dice loss on the pixels of
    ``mask [B, 1, H, W]`` only (e.g. confident pseudo-labels, or one region of a mixed
    image). ``logits``, ``onehot`` ``[B, C, H, W]``; float32, autocast off."""
    dtype = _compute_dtype(logits)
    with no_autocast(logits.device):
        logits = logits.to(dtype)
        return 1.0 - soft_dice(torch.softmax(logits, dim=1), onehot.to(dtype), mask).mean()


def region_cross_entropy(logits: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the pixels of ``mask [B, 1, H, W]``:
    ``sum(mask CE) / (sum(mask) + 1e-16)`` (0 for an empty mask). Shapes as
    :func:`region_dice_loss`."""
    dtype = _compute_dtype(logits)
    with no_autocast(logits.device):
        ce = F.cross_entropy(logits.to(dtype), class_index(onehot), reduction="none")  # [B, H, W]
        weights = mask.to(dtype)[:, 0]
        return (ce * weights).sum() / (weights.sum() + 1e-16)

"""Tests for utils/losses.py against hand-computed and naive reference values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from networks.losses import (dice_ce_loss, gaussian_window_1d, local_ncc_map, ncc_loss, smoothness_loss,
                          soft_dice, ssim, ssim_loss, ssim_map)


def _smooth_image(seed: int, h: int = 40, w: int = 56) -> torch.Tensor:
    """Blurred noise in [0, 1], shape [1, 1, h, w], float64."""
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(rng.random((1, 1, h, w)))
    img = F.avg_pool2d(img, 3, stride=1, padding=1)
    return (img - img.min()) / (img.max() - img.min())


# ---------------------------------------------------------------- SSIM

def test_gaussian_window_is_normalised_gaussian():
    g = gaussian_window_1d(11, 1.5, dtype=torch.float64)
    assert g.shape == (11,)
    assert torch.isclose(g.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.isclose(g[5] / g[6], torch.tensor(math.exp(1 / (2 * 1.5 ** 2)), dtype=torch.float64))
    assert torch.equal(g, g.flip(0))


def test_ssim_identical_images_is_one():
    x = _smooth_image(0)
    assert torch.isclose(ssim(x, x), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    assert abs(ssim_loss(x, x).item()) < 1e-12


def test_ssim_matches_skimage_on_interior():
    x, y = _smooth_image(1), _smooth_image(2)
    ours = ssim_map(x, y)[0, 0].numpy()
    _, ref = structural_similarity(x[0, 0].numpy(), y[0, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=1.0, full=True)
    # skimage pads by reflection; with an 11x11 window the maps agree 5 px away from the border
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], rtol=1e-6, atol=1e-8)
    assert ssim(x, y).item() < 0.9


def _naive_ssim_at(x: np.ndarray, y: np.ndarray, r: int, c: int) -> float:
    """Direct loop SSIM at pixel (r, c) with an 11x11 Gaussian window, zeros outside."""
    g1 = [math.exp(-((i - 5) ** 2) / (2 * 1.5 ** 2)) for i in range(11)]
    s = sum(g1)
    mx = my = sxx = syy = sxy = 0.0
    for i in range(11):
        for j in range(11):
            rr, cc = r + i - 5, c + j - 5
            inside = 0 <= rr < x.shape[0] and 0 <= cc < x.shape[1]
            a = x[rr, cc] if inside else 0.0
            b = y[rr, cc] if inside else 0.0
            wgt = g1[i] * g1[j] / (s * s)
            mx += wgt * a
            my += wgt * b
            sxx += wgt * a * a
            syy += wgt * b * b
            sxy += wgt * a * b
    vx, vy, cov = sxx - mx * mx, syy - my * my, sxy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def test_ssim_map_matches_naive_loop_including_border():
    x, y = _smooth_image(3, 16, 20), _smooth_image(4, 16, 20)
    ours = ssim_map(x, y)[0, 0]
    xn, yn = x[0, 0].numpy(), y[0, 0].numpy()
    for r, c in [(0, 0), (2, 17), (8, 9), (15, 19), (7, 0)]:
        assert ours[r, c].item() == pytest.approx(_naive_ssim_at(xn, yn, r, c), rel=1e-9, abs=1e-12)
    assert ssim(x, y).item() == pytest.approx(ours.mean().item(), rel=1e-12)


def test_ssim_float32_and_multichannel():
    x, y = _smooth_image(5), _smooth_image(6)
    both = torch.cat([x, y], 1)
    swapped = torch.cat([y, x], 1)
    v64 = ssim_map(both, swapped)
    v32 = ssim_map(both.float(), swapped.float())
    assert v32.dtype == torch.float32 and v32.shape == both.shape
    torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-4)
    # channels are filtered independently: channel 0 equals the single-channel map
    torch.testing.assert_close(v64[:, :1], ssim_map(x, y))


def test_ssim_half_input_returns_float32():
    x, y = _smooth_image(7), _smooth_image(8)
    out = ssim(x.half(), y.half())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ssim(x.half().double(), y.half().double()).item(), abs=1e-5)


def test_ssim_is_differentiable():
    x = _smooth_image(9).requires_grad_()
    y = _smooth_image(10)
    ssim_loss(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- NCC

def _naive_ncc_map(x: np.ndarray, y: np.ndarray, win: int) -> np.ndarray:
    h, w = x.shape
    r = win // 2
    n = win * win
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            si = sj = sii = sjj = sij = 0.0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    ii, jj = i + di, j + dj
                    if 0 <= ii < h and 0 <= jj < w:
                        a, b = x[ii, jj], y[ii, jj]
                        si += a
                        sj += b
                        sii += a * a
                        sjj += b * b
                        sij += a * b
            cross = sij - si * sj / n
            vi = sii - si * si / n
            vj = sjj - sj * sj / n
            out[i, j] = cross * cross / (vi * vj + 1e-5)
    return out


@pytest.mark.parametrize("win", [3, 9])
def test_ncc_matches_naive_loop(win):
    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.random((1, 1, 7, 10)))
    y = torch.from_numpy(rng.random((1, 1, 7, 10)))
    ref = _naive_ncc_map(x[0, 0].numpy(), y[0, 0].numpy(), win)
    np.testing.assert_allclose(local_ncc_map(x, y, win)[0, 0].numpy(), ref, rtol=1e-9, atol=1e-12)
    assert ncc_loss(x, y, win).item() == pytest.approx(1.0 - ref.mean(), rel=1e-9)


def test_ncc_multichannel_batch_matches_naive_loop_per_slice():
    # the maps of all items and channels are filtered in one call: no mixing between them
    rng = np.random.default_rng(13)
    x = torch.from_numpy(rng.random((2, 3, 6, 9)))
    y = torch.from_numpy(rng.random((2, 3, 6, 9)))
    ours = local_ncc_map(x, y, 3).numpy()
    for b in range(2):
        for c in range(3):
            ref = _naive_ncc_map(x[b, c].numpy(), y[b, c].numpy(), 3)
            np.testing.assert_allclose(ours[b, c], ref, rtol=1e-9, atol=1e-12)


def test_ssim_and_ncc_gradients_match_finite_differences():
    rng = np.random.default_rng(14)
    x = torch.from_numpy(rng.random((1, 2, 6, 7))).requires_grad_()
    y = torch.from_numpy(rng.random((1, 2, 6, 7)))
    assert torch.autograd.gradcheck(lambda a: ssim_map(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a: local_ncc_map(a, y, 3), (x,))


def test_ncc_self_and_linear_transform_near_zero():
    rng = np.random.default_rng(12)
    x = torch.from_numpy(rng.random((2, 1, 24, 32)))
    assert abs(ncc_loss(x, x).item()) < 1e-5
    assert abs(ncc_loss(x, 2.5 * x).item()) < 1e-5
    assert abs(ncc_loss(x, -0.7 * x).item()) < 1e-4
    # with an offset, windows touching the zero padding are not linear any more; the interior is
    cc = local_ncc_map(x, 0.5 * x + 0.3)
    assert (1.0 - cc[..., 4:-4, 4:-4]).abs().max().item() < 1e-4
    # unrelated noise is far from correlated
    y = torch.from_numpy(rng.random((2, 1, 24, 32)))
    assert ncc_loss(x, y).item() > 0.7


def test_ncc_rejects_even_window():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError):
        ncc_loss(x, x, window=4)


# ---------------------------------------------------------------- smoothness

def test_smoothness_constant_flow_is_zero():
    flow = torch.ones(2, 2, 6, 7) * torch.tensor([1.5, -3.0]).view(1, 2, 1, 1)
    assert smoothness_loss(flow).item() == 0.0


def test_smoothness_hand_value():
    flow = torch.zeros(1, 2, 2, 2)
    flow[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    # dx (along columns): ch0 -> 1, 2 ; ch1 -> 0, 0  => mean(dx^2) = (1 + 4) / 4
    # dy (along rows):    ch0 -> 2, 3 ; ch1 -> 0, 0  => mean(dy^2) = (4 + 9) / 4
    assert smoothness_loss(flow).item() == pytest.approx((5 / 4 + 13 / 4) / 2)


# ---------------------------------------------------------------- Dice / DiceCE

def _hand_example():
    p1 = torch.tensor([[0.9, 0.2], [0.6, 0.1]], dtype=torch.float64)
    y1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1])[None]
    onehot = torch.stack([1 - y1, y1])[None]
    return probs, onehot


def test_soft_dice_hand_values():
    probs, onehot = _hand_example()
    # channel 0: sum(yp) = 0.8 + 0.9, sum(y^2) = 2, sum(p^2) = 0.01 + 0.64 + 0.16 + 0.81
    # channel 1: sum(yp) = 0.9 + 0.6, sum(y^2) = 2, sum(p^2) = 0.81 + 0.04 + 0.36 + 0.01
    expected = torch.tensor([[(2 * 1.7 + 1) / (2 + 1.62 + 1), (2 * 1.5 + 1) / (2 + 1.22 + 1)]],
                            dtype=torch.float64)
    torch.testing.assert_close(soft_dice(probs, onehot), expected)


def test_soft_dice_is_per_item_and_perfect_is_one():
    probs, onehot = _hand_example()
    other = torch.flip(probs, dims=[3])
    batch = soft_dice(torch.cat([probs, other]), torch.cat([onehot, onehot]))
    assert batch.shape == (2, 2)
    torch.testing.assert_close(batch[1:], soft_dice(other, onehot))
    torch.testing.assert_close(soft_dice(onehot, onehot), torch.ones(1, 2, dtype=torch.float64))


def test_dice_ce_hand_value_and_torch_ce():
    probs, onehot = _hand_example()
    logits = torch.log(probs)  # softmax(log p) = p since p sums to 1
    ce = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9)) / 4
    dice_mean = ((2 * 1.7 + 1) / 4.62 + (2 * 1.5 + 1) / 4.22) / 2
    loss = dice_ce_loss(logits, onehot)
    assert loss.item() == pytest.approx(1 - dice_mean + 0.5 * ce, rel=1e-12)
    torch_ce = F.cross_entropy(logits, onehot.argmax(1))
    assert (loss - (1 - soft_dice(probs, onehot).mean())).item() == pytest.approx(0.5 * torch_ce.item(),
                                                                                  rel=1e-12)


def test_dice_ce_random_batch_matches_composition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, 7, generator=g)
    target = torch.randint(0, 2, (3, 5, 7), generator=g)
    onehot = F.one_hot(target, 2).permute(0, 3, 1, 2).float()
    expected = (1 - soft_dice(logits.softmax(1), onehot).mean()) + 0.5 * F.cross_entropy(logits, target)
    torch.testing.assert_close(dice_ce_loss(logits, onehot), expected)


def test_dice_ce_float32_under_autocast_and_half_input():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    onehot = F.one_hot(torch.randint(0, 2, (2, 8, 8), generator=g), 2).permute(0, 3, 1, 2).float()
    plain = dice_ce_loss(logits, onehot)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = dice_ce_loss(logits, onehot)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain)
    low = logits.bfloat16()
    out = dice_ce_loss(low, onehot)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, dice_ce_loss(low.float(), onehot))


def test_dice_ce_gradient_finite():
    logits = torch.randn(1, 2, 6, 6, requires_grad=True)
    onehot = torch.zeros(1, 2, 6, 6)
    onehot[:, 0] = 1
    dice_ce_loss(logits, onehot).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

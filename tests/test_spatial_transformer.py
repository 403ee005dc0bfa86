"""networks.spatial_transformer: warp, compose, field_from_affine, identity_grid."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from networks.spatial_transformer import compose, field_from_affine, identity_grid, warp

H, W = 24, 40


def smooth_field(seed: int, amplitude: float, size=(H, W), batch: int = 1) -> torch.Tensor:
    """Random smooth field [B, 2, H, W]: coarse noise upsampled, max |d| = amplitude."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 2, 4, 5, generator=g)
    field = F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)
    return field / field.abs().amax() * amplitude


def linear_image(size=(H, W), batch: int = 1) -> torch.Tensor:
    """m(y, x) = 0.02 y + 0.01 x + 0.1: bilinear interpolation reproduces it exactly."""
    y, x = identity_grid(*size)[0]
    return (0.02 * y + 0.01 * x + 0.1)[None, None].repeat(batch, 1, 1, 1)


def test_identity_field_returns_input():
    image = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(warp(image, torch.zeros(2, 2, H, W)), image, atol=1e-5, rtol=0)
    torch.testing.assert_close(warp(image, torch.zeros(2, 2, H, W), mode="nearest"), image)


def test_integer_row_translation_shifts_exactly_with_zero_border():
    image = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(1)) + 0.5  # no zeros inside
    field = torch.zeros(1, 2, H, W)
    field[:, 0] = 2.0  # row + 2: out[i] = in[i + 2]
    out = warp(image, field)
    torch.testing.assert_close(out[..., : H - 2, :], image[..., 2:, :], atol=1e-5, rtol=0)
    assert torch.all(out[..., H - 2:, :].abs() < 1e-6)


def test_integer_column_translation_shifts_exactly_with_zero_border():
    image = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(2)) + 0.5
    field = torch.zeros(1, 2, H, W)
    field[:, 1] = -3.0  # column - 3: out[:, j] = in[:, j - 3]
    out = warp(image, field, mode="nearest")
    torch.testing.assert_close(out[..., :, 3:], image[..., :, : W - 3])
    assert torch.all(out[..., :, :3] == 0)


def test_nearest_keeps_one_hot_labels_binary():
    g = torch.Generator().manual_seed(3)
    gland = (torch.rand(2, 1, H, W, generator=g) > 0.5).float()
    label = torch.cat([1 - gland, gland], dim=1)
    field = smooth_field(4, amplitude=4.5, batch=2)
    out = warp(label, field, mode="nearest")
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    total = out.sum(dim=1)
    assert set(total.unique().tolist()) <= {0.0, 1.0}  # one-hot inside, 0 outside the image
    inside = (total == 1)
    assert inside[:, 6:-6, 6:-6].all()  # away from the border every pixel samples inside
    bilinear = warp(label, field)
    assert ((bilinear > 1e-3) & (bilinear < 1 - 1e-3)).any()  # the field really interpolates


def test_warp_matches_hand_computed_bilinear_sample():
    image = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W) ** 1.5
    field = torch.zeros(1, 2, H, W)
    field[0, :, 5, 7] = torch.tensor([0.25, 1.5])  # pixel (5, 7) samples (5.25, 8.5)
    expected = (0.75 * 0.5 * image[0, 0, 5, 8] + 0.75 * 0.5 * image[0, 0, 5, 9]
                + 0.25 * 0.5 * image[0, 0, 6, 8] + 0.25 * 0.5 * image[0, 0, 6, 9])
    torch.testing.assert_close(warp(image, field)[0, 0, 5, 7], expected, rtol=1e-5, atol=0)


def test_compose_equals_sequential_warps_for_linear_image():
    # For a linear image bilinear interpolation is exact, so warp(warp(m, g), f) and
    # warp(m, compose(f, g)) agree to rounding wherever every sample lies inside.
    f = smooth_field(5, amplitude=2.5)
    g = smooth_field(6, amplitude=2.5)
    m = linear_image()
    inner = (slice(None), slice(None), slice(7, -7), slice(7, -7))
    sequential = warp(warp(m, g), f)
    composed = warp(m, compose(f, g))
    torch.testing.assert_close(composed[inner], sequential[inner], atol=1e-5, rtol=0)
    wrong_order = warp(m, compose(g, f))
    assert (wrong_order[inner] - sequential[inner]).abs().max() > 1e-3  # the test sees the order


def test_compose_with_translations_adds_them():
    f = torch.zeros(1, 2, H, W)
    f[:, 0] = 1.0
    g = torch.zeros(1, 2, H, W)
    g[:, 1] = -2.0
    h = compose(f, g)
    torch.testing.assert_close(h[..., : H - 1, 2:], torch.tensor([1.0, -2.0])[None, :, None, None]
                               .expand(1, 2, H - 1, W - 2))


def _affine(angle_deg: float, scale: float, tx: float, ty: float, centre) -> np.ndarray:
    a = math.radians(angle_deg)
    cx, cy = centre
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, cx - c * cx + s * cy + tx], [s, c, cy - s * cx - c * cy + ty]], dtype=np.float64)


def test_field_from_affine_matches_cv2_inverse_map():
    h, w = 48, 80
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    image = (0.5 + 0.25 * np.sin(x / 7.0) * np.cos(y / 5.0) + 0.002 * x).astype(np.float32)
    matrix = _affine(6.0, 1.07, 2.3, -1.6, (w / 2, h / 2))
    expected = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    field = field_from_affine(matrix, (h, w))
    assert field.shape == (2, h, w) and field.dtype == torch.float32
    out = warp(torch.from_numpy(image)[None, None], field[None])[0, 0].numpy()
    # away from the border (OpenCV quantises its bilinear weights; measured diff ~1e-5,
    # a sign error in the field gives ~0.4)
    inner = (slice(6, -6), slice(6, -6))
    assert np.abs(out[inner] - expected[inner]).max() < 1e-3
    # the field itself: source pixel of output (x, y) is M @ (x, y, 1)
    src_x = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    src_y = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    np.testing.assert_allclose(field[0].numpy(), src_y - y, atol=1e-4)
    np.testing.assert_allclose(field[1].numpy(), src_x - x, atol=1e-4)


def test_field_from_affine_translation_and_batch():
    matrix = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]])
    field = field_from_affine(matrix, (5, 6))
    torch.testing.assert_close(field[0], torch.full((5, 6), -2.0))
    torch.testing.assert_close(field[1], torch.full((5, 6), 3.0))
    batch = field_from_affine(torch.from_numpy(np.stack([matrix, np.eye(2, 3)])), (5, 6))
    assert batch.shape == (2, 2, 5, 6)
    torch.testing.assert_close(batch[0], field)
    torch.testing.assert_close(batch[1], torch.zeros(2, 5, 6))


def test_identity_grid_is_cached_and_correct():
    grid = identity_grid(5, 7)
    assert identity_grid(5, 7) is grid
    assert grid.shape == (1, 2, 5, 7)
    assert grid[0, 0, 3, 4] == 3 and grid[0, 1, 3, 4] == 4
    assert identity_grid(5, 7, dtype=torch.float64) is not grid


def test_warp_rejects_size_mismatch():
    with pytest.raises(ValueError):
        warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 9))


# ----------------------------------------------------------------------------- velocity integration

def test_zero_velocity_integrates_to_the_identity():
    from networks.spatial_transformer import integrate_velocity
    assert torch.equal(integrate_velocity(torch.zeros(2, 2, 12, 17), 7), torch.zeros(2, 2, 12, 17))


def test_constant_velocity_integrates_to_the_same_translation():
    from networks.spatial_transformer import integrate_velocity
    v = torch.zeros(1, 2, 40, 50)
    v[:, 0], v[:, 1] = 1.25, -0.5
    d = integrate_velocity(v, 7)
    inner = d[:, :, 5:-5, 5:-5]  # away from the border, where zero padding enters
    torch.testing.assert_close(inner, v[:, :, 5:-5, 5:-5], atol=1e-5, rtol=0)


def test_rotation_velocity_integrates_to_the_rotation_and_does_not_fold():
    """v(p) = w J (p - c) is the velocity of a rotation about c: its flow at time 1 is the
    rotation by w (radians), p -> c + R(w) (p - c); the direct use of the same field as a
    displacement (what the paper's network outputs) folds once w is large."""
    from networks.spatial_transformer import integrate_velocity
    from utils.evaluation.metrics import jacobian_statistics
    size, w = 64, 1.2
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                                indexing="ij")
    c = (size - 1) / 2
    y, x = rows - c, cols - c
    velocity = torch.stack([w * x, -w * y])[None].float()
    d = integrate_velocity(velocity, 7)[0].double()
    cos, sin = math.cos(w), math.sin(w)
    expected = torch.stack([c + cos * y + sin * x - rows, c - sin * y + cos * x - cols])
    disc = (y ** 2 + x ** 2) <= (0.3 * size) ** 2  # where every intermediate sample stays inside the image
    assert float((d - expected)[:, disc].abs().max()) < 0.05 * size * w * 0.3
    assert jacobian_statistics(d[:, 10:-10, 10:-10])["folding_fraction"] == 0.0


def test_integrated_vortex_does_not_fold_where_the_direct_displacement_does():
    """A strong local vortex: used directly as a displacement (the paper's output) it folds;
    integrated as a velocity (``--diffeomorphic``) it does not."""
    from networks.spatial_transformer import integrate_velocity
    from utils.evaluation.metrics import jacobian_statistics
    size = 64
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                                indexing="ij")
    y, x = rows - (size - 1) / 2, cols - (size - 1) / 2
    strength = 3.0 * torch.exp(-(x ** 2 + y ** 2) / (2 * 8.0 ** 2))
    field = torch.stack([strength * x, -strength * y])[None].float()
    assert jacobian_statistics(field[0])["folding_fraction"] > 0.03
    integrated = jacobian_statistics(integrate_velocity(field, 7)[0])
    assert integrated["folding_fraction"] == 0.0 and integrated["jacobian_min"] > 0.2

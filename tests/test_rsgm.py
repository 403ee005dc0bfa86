"""Tests for networks/rsgm.py with small stand-in registration nets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dataloaders.folds import Subject
from dataloaders.registration_cache import RegistrationOutputCache
from networks.rsgm import (_beta_johnk, registration_outputs,
                           rsgm_generate, sample_coefficients)
from networks.spatial_transformer import compose, field_from_affine, warp
from utils.onehot import one_hot

H, W = 32, 48


class ConstNet(torch.nn.Module):
    """Returns the constant flow ``(dy, dx)``; records each call's batch size and grad mode."""

    def __init__(self, dy: float = 0.0, dx: float = 0.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.shift = (dy, dx)
        self.calls: list[tuple[int, bool]] = []

    def forward(self, moving, fixed):
        self.calls.append((moving.shape[0], torch.is_grad_enabled()))
        flow = torch.tensor(self.shift, dtype=moving.dtype).view(1, 2, 1, 1)
        return self.weight * flow.expand(moving.shape[0], 2, *moving.shape[-2:])


class ContentNet(torch.nn.Module):
    """Flow that depends on each item's images (no mixing across the batch)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, moving, fixed):
        self.calls.append((moving.clone(), fixed.clone()))
        return torch.cat([3.0 * (moving - fixed), 2.0 * fixed - moving], dim=1)


def smooth_images(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 5, 7, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True)


def random_field(batch: int, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = (torch.rand(batch, 2, 4, 6, generator=g) * 2 - 1) * scale
    return torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True)


def random_label(batch: int, seed: int) -> torch.Tensor:
    return one_hot((smooth_images(batch, seed) > 0.5).long())


def translation_field(dy: float, dx: float, batch: int = 1) -> torch.Tensor:
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    return field_from_affine(matrix, (H, W))[None].expand(batch, 2, H, W).clone()


def coefficients(value: float, batch: int) -> torch.Tensor:
    return torch.full((batch, 1, 1, 1), value)


# ---- rsgm_generate -------------------------------------------------------------------------------

def test_zero_coefficients_give_the_atlas_back():
    x_l, w_u1, y_l = smooth_images(2, 0), smooth_images(2, 1), random_label(2, 2)
    phi = random_field(2, 3, scale=6.0)
    g1, g2, y_g = rsgm_generate(x_l, y_l, w_u1, phi, coefficients(0.0, 2), coefficients(0.0, 2))
    # bilinear grid_sample at integer pixels is exact only up to float32 coordinate rounding
    torch.testing.assert_close(g1, x_l, atol=1e-5, rtol=0)
    torch.testing.assert_close(g2, x_l, atol=1e-5, rtol=0)
    assert torch.equal(y_g, y_l)


def test_beta_one_alpha_zero_gives_the_carried_image():
    x_l, w_u1, y_l = smooth_images(2, 0), smooth_images(2, 1), random_label(2, 2)
    phi = random_field(2, 3, scale=6.0)
    g1, g2, _ = rsgm_generate(x_l, y_l, w_u1, phi, coefficients(0.0, 2), coefficients(1.0, 2))
    torch.testing.assert_close(g2, w_u1, atol=1e-5, rtol=0)
    torch.testing.assert_close(g1, x_l, atol=1e-5, rtol=0)


def test_appearance_mix_is_linear_in_beta():
    x_l, w_u1, y_l = smooth_images(1, 0), smooth_images(1, 1), random_label(1, 2)
    phi = torch.zeros(1, 2, H, W)
    _, g2, _ = rsgm_generate(x_l, y_l, w_u1, phi, 0.0, 0.25)
    torch.testing.assert_close(g2, 0.75 * x_l + 0.25 * w_u1, atol=1e-5, rtol=0)


def test_alpha_scales_the_field_per_item():
    x_l, w_u1, y_l = smooth_images(2, 0), smooth_images(2, 1), random_label(2, 2)
    phi = translation_field(4.0, -6.0, batch=2)
    alpha = torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)
    g1, _, _ = rsgm_generate(x_l, y_l, w_u1, phi, alpha, 0.0)
    # item 0 shifted by (4, -6), item 1 by (2, -3): g(r, c) = x(r + dy, c + dx)
    torch.testing.assert_close(g1[0, 0, :H - 4, 6:], x_l[0, 0, 4:, :W - 6], atol=1e-5, rtol=0)
    torch.testing.assert_close(g1[1, 0, :H - 2, 3:], x_l[1, 0, 2:, :W - 3], atol=1e-5, rtol=0)


def test_generated_label_stays_binary_one_hot():
    y_l = random_label(3, 4)
    x_l, w_u1 = smooth_images(3, 5), smooth_images(3, 6)
    phi = random_field(3, 7, scale=15.0)  # large enough to sample outside the image
    alpha = torch.tensor([1.0, 0.6, 0.3]).view(3, 1, 1, 1)
    _, _, y_g = rsgm_generate(x_l, y_l, w_u1, phi, alpha, 0.5)
    assert y_g.shape == y_l.shape
    assert set(torch.unique(y_g).tolist()) <= {0.0, 1.0}
    assert torch.equal(y_g.sum(dim=1), torch.ones(3, H, W))
    assert 0 < y_g[:, 1].sum() < y_g[:, 1].numel()


def test_label_outside_the_image_becomes_background():
    y_l = one_hot(torch.ones(1, 1, H, W, dtype=torch.long))  # all gland
    phi = translation_field(0.0, 10.0)  # columns >= W - 10 sample outside
    _, _, y_g = rsgm_generate(smooth_images(1, 0), y_l, smooth_images(1, 1), phi, 1.0, 0.0)
    assert torch.equal(y_g[0, 1, :, :W - 10], torch.ones(H, W - 10))
    assert torch.equal(y_g[0, 1, :, W - 9:], torch.zeros(H, 9))
    assert torch.equal(y_g[0, 0], 1 - y_g[0, 1])


def test_generated_images_stay_in_unit_range():
    x_l, w_u1, y_l = smooth_images(4, 8), smooth_images(4, 9), random_label(4, 10)
    x_l[:, :, :4] = 1.0
    w_u1[:, :, -4:] = 0.0
    phi = random_field(4, 11, scale=12.0)
    alpha, beta = sample_coefficients(4, generator=torch.Generator().manual_seed(0))
    g1, g2, _ = rsgm_generate(x_l, y_l, w_u1, phi, alpha, beta)
    for g in (g1, g2):
        assert g.min() >= -1e-6 and g.max() <= 1 + 1e-6


def test_generate_rejects_bad_shapes():
    x_l, y_l = smooth_images(1, 0), random_label(1, 1)
    with pytest.raises(ValueError):
        rsgm_generate(x_l, y_l[:, :1], x_l, torch.zeros(1, 2, H, W), 1.0, 1.0)
    with pytest.raises(ValueError):
        rsgm_generate(x_l, y_l, x_l[..., :-1], torch.zeros(1, 2, H, W), 1.0, 1.0)


# ---- registration_outputs ------------------------------------------------------------------------

def test_one_batched_forward_without_grad():
    net = ContentNet()
    weighted = ConstNet(1.0, -2.0)
    x_l, u1_on_l, x_l_on_u2, u2 = (smooth_images(3, s) for s in range(4))
    field = random_field(3, 5, scale=3.0)
    w_u1, phi_u2 = registration_outputs(net, x_l, u1_on_l, x_l_on_u2, u2, field)
    assert len(net.calls) == 1
    moving, fixed = net.calls[0]
    assert torch.equal(moving, torch.cat([u1_on_l, x_l_on_u2]))
    assert torch.equal(fixed, torch.cat([x_l, u2]))
    # reference: the two registrations done separately
    torch.testing.assert_close(w_u1, warp(u1_on_l, net(u1_on_l, x_l)))
    torch.testing.assert_close(phi_u2, compose(net(x_l_on_u2, u2), field))
    assert w_u1.shape == (3, 1, H, W) and phi_u2.shape == (3, 2, H, W)

    w_u1, phi_u2 = registration_outputs(weighted, x_l, u1_on_l, x_l_on_u2, u2, field)
    assert weighted.calls == [(6, False)]
    assert not w_u1.requires_grad and not phi_u2.requires_grad


def test_zero_deformation_gives_the_affine_field():
    angle = np.deg2rad(7.0)
    matrix = np.array([[1.05 * np.cos(angle), -np.sin(angle), 2.5],
                       [np.sin(angle), 0.95 * np.cos(angle), -1.5]])
    field = field_from_affine(matrix, (H, W))[None].expand(2, 2, H, W).clone()
    x_l, u1_on_l = smooth_images(2, 0), smooth_images(2, 1)
    net = ConstNet(0.0, 0.0)
    w_u1, phi_u2 = registration_outputs(net, x_l, u1_on_l, warp(x_l, field), smooth_images(2, 2), field)
    torch.testing.assert_close(phi_u2, field, atol=1e-4, rtol=0)
    torch.testing.assert_close(w_u1, u1_on_l, atol=1e-5, rtol=0)
    g1, _, _ = rsgm_generate(x_l, random_label(2, 3), w_u1, phi_u2, 1.0, 0.0)
    torch.testing.assert_close(g1, warp(x_l, field), atol=1e-4, rtol=0)


def test_translations_compose_to_their_sum():
    t, s = (2.0, -3.0), (1.0, 4.0)  # deformable and affine translations (row, column)
    net = ConstNet(*t)
    field = translation_field(*s, batch=1)
    x_l = smooth_images(1, 0)
    _, phi = registration_outputs(net, x_l, smooth_images(1, 1), smooth_images(1, 2),
                                  smooth_images(1, 3), field)
    # interior: p + t inside the image, rows 0..H-3, columns 3..W-1
    interior = phi[0, :, :H - 2, 3:]
    torch.testing.assert_close(interior[0], torch.full_like(interior[0], 3.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(interior[1], torch.full_like(interior[1], 1.0), atol=1e-4, rtol=0)
    g1, _, _ = rsgm_generate(x_l, random_label(1, 4), x_l, phi, 1.0, 0.0)
    # g1(r, c) = x_l(r + 3, c + 1) wherever both the composition and the sample are inside
    torch.testing.assert_close(g1[0, 0, :H - 3, 3:W - 1], x_l[0, 0, 3:, 4:], atol=1e-4, rtol=0)


def test_fields_are_composed_not_added():
    t = (2.0, -3.0)
    net = ConstNet(*t)
    scale = 1.1  # affine part: d(p) = (scale - 1) p, not a translation
    field = field_from_affine(np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]]), (H, W))[None]
    _, phi = registration_outputs(net, *(smooth_images(1, s) for s in range(4)), field)
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float32),
                                torch.arange(W, dtype=torch.float32), indexing="ij")
    composed = torch.stack([t[0] + (scale - 1) * (rows + t[0]), t[1] + (scale - 1) * (cols + t[1])])
    added = torch.stack([t[0] + (scale - 1) * rows, t[1] + (scale - 1) * cols])
    torch.testing.assert_close(phi[0, :, :H - 2, 3:], composed[:, :H - 2, 3:], atol=1e-4, rtol=0)
    assert (phi[0, :, :H - 2, 3:] - added[:, :H - 2, 3:]).abs().max() > 0.2


# ---- sample_coefficients -------------------------------------------------------------------------

@pytest.mark.parametrize("distribution", ["uniform", "beta"])
def test_coefficients_are_reproducible(distribution):
    a1, b1 = sample_coefficients(5, distribution, generator=torch.Generator().manual_seed(11))
    a2, b2 = sample_coefficients(5, distribution, generator=torch.Generator().manual_seed(11))
    a3, _ = sample_coefficients(5, distribution, generator=torch.Generator().manual_seed(12))
    assert a1.shape == b1.shape == (5, 1, 1, 1) and a1.dtype == torch.float32
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, a3)
    assert not torch.equal(a1, b1)
    for v in (a1, b1):
        assert v.min() >= 0 and v.max() <= 1
    torch.manual_seed(5)
    g1 = sample_coefficients(3, distribution)
    torch.manual_seed(5)
    g2 = sample_coefficients(3, distribution)
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])


def test_uniform_coefficients_follow_uniform():
    alpha, beta = sample_coefficients(2000, "uniform", generator=torch.Generator().manual_seed(0))
    values = torch.cat([alpha.flatten(), beta.flatten()]).numpy()
    assert stats.kstest(values, "uniform").pvalue > 0.01


def test_beta_coefficients_are_u_shaped_beta_03():
    alpha, beta = sample_coefficients(2000, "beta", generator=torch.Generator().manual_seed(0))
    values = torch.cat([alpha.flatten(), beta.flatten()]).numpy()
    assert values.min() >= 0 and values.max() <= 1
    assert stats.kstest(values, stats.beta(0.3, 0.3).cdf).pvalue > 0.01
    assert stats.kstest(values, "uniform").pvalue < 1e-6
    ends = np.mean((values < 0.1) | (values > 0.9))
    assert ends > 0.35  # Uniform: 0.2; Beta(0.3, 0.3): about 0.45


def test_johnk_sampler_matches_other_beta_parameters():
    values = _beta_johnk(3000, 2.0, 0.5, torch.Generator().manual_seed(1), torch.device("cpu")).numpy()
    assert values.shape == (3000,)
    assert stats.kstest(values, stats.beta(2.0, 0.5).cdf).pvalue > 0.01


def test_unknown_distribution_is_rejected():
    with pytest.raises(ValueError):
        sample_coefficients(2, "gaussian")


# ---- RegistrationOutputCache ---------------------------------------------------------------------

class StandInFolder:
    def __init__(self, names):
        self.images = {n: smooth_images(1, 100 + i)[0, 0].numpy() for i, n in enumerate(names)}
        self.loads: list[str] = []

    def load_image(self, name):
        self.loads.append(name)
        return self.images[name]


class StandInPrealign:
    """Translation field depending on both names, antisymmetric like a real pre-alignment."""

    def __init__(self, names):
        self.order = {n: i for i, n in enumerate(names)}

    def field(self, moving, fixed):
        k = self.order[fixed] - self.order[moving]
        return translation_field(0.7 * k, -1.3 * k)[0]


SUBJECTS = [Subject("P1", ["A1"], ["B1", "C1"]),
            Subject("P2", ["A2", "A3"], ["B2"]),
            Subject("P3", [], ["X", "Y"])]
NAMES = ["A1", "B1", "C1", "A2", "A3", "B2", "X", "Y"]


def live_outputs(net, folder, prealign, atlas, u1, u2):
    def img(names):
        return torch.stack([torch.from_numpy(folder.images[n]) for n in names])[:, None]

    def fld(pairs):
        return torch.stack([prealign.field(m, f) for m, f in pairs])

    x_l, u1_img, u2_img = img(atlas), img(u1), img(u2)
    u1_on_l = warp(u1_img, fld(zip(u1, atlas)))
    field_l_u2 = fld(zip(atlas, u2))
    return registration_outputs(net, x_l, u1_on_l, warp(x_l, field_l_u2), u2_img, field_l_u2)


def test_cache_pairs_and_values_match_the_live_computation():
    folder, prealign, net = StandInFolder(NAMES), StandInPrealign(NAMES), ContentNet()
    cache = RegistrationOutputCache(net, folder, SUBJECTS, prealign, device="cpu", batch_size=4,
                                    progress=False)
    assert sorted(cache.pairs) == sorted([("A1", "B1"), ("A1", "C1"), ("A2", "A3"), ("A2", "B2"),
                                          ("A3", "A2"), ("A3", "B2")])
    assert len(cache) == 6 and len(net.calls) == 2  # two chunks of at most 4 pairs
    assert not {"X", "Y"} & set(folder.loads)
    assert len(folder.loads) == len(set(folder.loads))  # each image read once
    assert cache.nbytes == 6 * 3 * H * W * 4

    atlas, u1, u2 = ["A1", "A2", "A3", "A1"], ["B1", "A3", "B2", "C1"], ["C1", "B2", "A2", "C1"]
    w_u1, phi_u2 = cache.get(atlas, u1, u2, device="cpu")
    ref_w, ref_phi = live_outputs(net, folder, prealign, atlas, u1, u2)
    assert w_u1.shape == (4, 1, H, W) and phi_u2.shape == (4, 2, H, W)
    assert w_u1.dtype == phi_u2.dtype == torch.float32
    torch.testing.assert_close(w_u1, ref_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(phi_u2, ref_phi, atol=1e-5, rtol=0)
    # the items really differ (a mixed-up lookup would be caught)
    assert (phi_u2[0] - phi_u2[1]).abs().max() > 0.1 and (w_u1[0] - w_u1[3]).abs().max() > 0.01

    alpha, beta = coefficients(0.7, 4), coefficients(0.4, 4)
    x_l = torch.stack([torch.from_numpy(folder.images[n]) for n in atlas])[:, None]
    y_l = random_label(4, 9)
    cached = rsgm_generate(x_l, y_l, w_u1, phi_u2, alpha, beta)
    live = rsgm_generate(x_l, y_l, ref_w, ref_phi, alpha, beta)
    for c, r in zip(cached, live):
        torch.testing.assert_close(c, r, atol=1e-5, rtol=0)


def test_cache_float16_and_unknown_pairs():
    folder, prealign, net = StandInFolder(NAMES), StandInPrealign(NAMES), ContentNet()
    full = RegistrationOutputCache(net, folder, SUBJECTS, prealign, progress=False)
    half = RegistrationOutputCache(net, folder, SUBJECTS, prealign, progress=False, dtype=torch.float16)
    assert half.nbytes * 2 == full.nbytes
    w16, phi16 = half.get(["A2"], ["B2"], ["A3"])
    w32, phi32 = full.get(["A2"], ["B2"], ["A3"])
    assert w16.dtype == torch.float32
    torch.testing.assert_close(w16, w32, atol=1e-3, rtol=0)
    torch.testing.assert_close(phi16, phi32, atol=2e-2, rtol=0)
    with pytest.raises(KeyError):
        full.get(["A1"], ["B2"], ["B1"])  # B2 belongs to another patient
    with pytest.raises(KeyError):
        full.get(["B1"], ["A1"], ["A1"])  # B1 is not an Atlas image

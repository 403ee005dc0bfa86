"""SS-MGS's training step against an independent computation of its loss, on a tiny network."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from networks.losses import dice_ce_loss
from networks.rnsf import rnsf_loss
from networks.rsgm import sample_coefficients
from networks.spatial_transformer import warp, warp_label
from utils.onehot import one_hot
from utils.stages.ss_mgs import SegmentationConfig, segmentation_step

H, W = 16, 24
CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """SegmentationNet's output contract with a few per-pixel layers (batch items independent)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, 2, 3, padding=1)
        self.head2 = nn.Conv2d(1, 2, 1)
        self.projector = nn.Conv2d(1, 8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(x)
        quarter = (H // 4, W // 4)
        return {"out": out, "level2": self.head2(x), "project": self.projector(F.adaptive_avg_pool2d(x, quarter)),
                "project_map": F.interpolate(out, size=quarter, mode="bilinear", align_corners=False)}


class FixedRegistration:
    """Stand-in for the registration cache: the same ``w`` and ``phi`` for every pair."""

    def __init__(self, w: torch.Tensor, phi: torch.Tensor) -> None:
        self.w, self.phi = w, phi

    def get(self, atlas_names, u1_names, u2_names, device):
        return self.w, self.phi


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    gland = (torch.rand(1, H, W, generator=g) > 0.6).long()
    return {"x_l": torch.rand(1, 1, H, W, generator=g), "y_l": one_hot(gland), "u_neg": torch.rand(1, 1, H, W, generator=g),
            "atlas_name": ["a"], "u1_name": ["b"], "u2_name": ["c"]}


@pytest.mark.parametrize("use_rsgm, use_rnsf", list(itertools.product([True, False], repeat=2)))
def test_total_and_split_order_match_an_independent_computation(use_rsgm, use_rnsf):
    torch.manual_seed(0)
    net = TinyNet()
    batch = _batch(1)
    g = torch.Generator().manual_seed(2)
    w = torch.rand(1, 1, H, W, generator=g)
    phi = 3.0 * (torch.rand(1, 2, H, W, generator=g) - 0.5)
    config = SegmentationConfig(use_rsgm=use_rsgm, use_rnsf=use_rnsf, rs_weight=0.7, rnsf_weight=0.3, negatives=5)
    ramp = 0.4
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # the step must not change what we compare with
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    terms, extra = segmentation_step(net, optimizer, scaler, batch, FixedRegistration(w, phi), config, ramp,
                                     torch.Generator().manual_seed(9), CPU)

    x_l, y_l, u_neg = batch["x_l"], batch["y_l"], batch["u_neg"]
    alpha, beta = sample_coefficients(1, "uniform", torch.Generator().manual_seed(9), CPU)
    spa = alpha * phi
    inputs = {"x_l": x_l}
    if use_rsgm or use_rnsf:
        inputs["g1"] = warp(x_l, spa)
        inputs["g2"] = warp((1 - beta) * x_l + beta * w, spa)
        y_g = warp_label(y_l, spa)
    if use_rnsf:
        inputs["u_neg"] = u_neg
    with torch.no_grad():
        own = {name: net(image) for name, image in inputs.items()}  # each group on its own
        expected = dice_ce_loss(own["x_l"]["out"], y_l) + dice_ce_loss(own["x_l"]["level2"], y_l)
        if use_rsgm:
            expected += 0.7 * (dice_ce_loss(own["g1"]["out"], y_g) + dice_ce_loss(own["g2"]["out"], y_g))
        if use_rnsf:
            l_rnsf = rnsf_loss(own["g1"]["project"], own["g2"]["project"], own["g1"]["project_map"],
                               own["u_neg"]["project"], own["u_neg"]["project_map"], temperature=0.1, k=5)
            expected += 0.3 * ramp * l_rnsf

    assert terms["total"] == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert ("rs" in terms) == use_rsgm and ("rnsf" in terms) == use_rnsf
    if use_rsgm:
        assert terms["rs"] == pytest.approx(0.7 * (terms["rs_g1"] + terms["rs_g2"]), rel=1e-6)
    if use_rnsf:
        assert terms["rnsf"] == pytest.approx(float(l_rnsf), rel=1e-5)
    assert list(extra["outputs"]) == list(inputs)  # the groups, in the order they were batched
    for name, outputs in extra["outputs"].items():
        for key, value in outputs.items():
            torch.testing.assert_close(value, own[name][key], rtol=1e-5, atol=1e-6)


def test_augmentation_comes_after_the_rsgm_generation_in_three_groups():
    """The cached registration outputs are aligned with the stored images, so RSGM generates from
    the un-augmented x_l; then x_l with y_l, g1 with g2 and y_g (one transform), and u_neg."""
    net = TinyNet()
    batch = _batch(3)
    g = torch.Generator().manual_seed(4)
    w = torch.rand(1, 1, H, W, generator=g)
    phi = 3.0 * (torch.rand(1, 2, H, W, generator=g) - 0.5)
    groups = []

    def flipping(images, labels=()):
        groups.append(([i.clone() for i in images], [lab.clone() for lab in labels]))
        return [i.flip(-1) for i in images], [lab.flip(-1) for lab in labels]

    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _, extra = segmentation_step(net, optimizer, scaler, batch, FixedRegistration(w, phi),
                                 SegmentationConfig(negatives=5), 0.5, torch.Generator().manual_seed(9), CPU,
                                 augment=flipping)
    alpha, beta = sample_coefficients(1, "uniform", torch.Generator().manual_seed(9), CPU)
    spa = alpha * phi
    x_l, y_l = batch["x_l"], batch["y_l"]
    expected = [([x_l], [y_l]),
                ([warp(x_l, spa), warp((1 - beta) * x_l + beta * w, spa)], [warp_label(y_l, spa)]),
                ([batch["u_neg"]], [])]
    assert [(len(i), len(lab)) for i, lab in groups] == [(1, 1), (2, 1), (1, 0)]
    for (images, labels), (want_images, want_labels) in zip(groups, expected):
        for got, want in zip(images + labels, want_images + want_labels):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    images = extra["images"]  # what the network saw: the augmented tensors
    for name, (group, index) in {"x_l": (0, 0), "g1": (1, 0), "g2": (1, 1), "u_neg": (2, 0)}.items():
        torch.testing.assert_close(images[name], groups[group][0][index].flip(-1))
    torch.testing.assert_close(images["y_g"], groups[1][1][0].flip(-1))

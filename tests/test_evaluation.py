"""Jacobian statistics of deformation fields (utils.evaluation.metrics.jacobian_statistics)."""
from __future__ import annotations

import pytest
import torch

from utils.evaluation.metrics import jacobian_statistics


def folding_fraction(field: torch.Tensor) -> tuple[float, float]:
    stats = jacobian_statistics(field)
    return stats["folding_fraction"], stats["jacobian_mean"]


def test_identity_and_translation_do_not_fold():
    assert folding_fraction(torch.zeros(2, 16, 20)) == (0.0, 1.0)
    shift = torch.stack([torch.full((16, 20), 3.0), torch.full((16, 20), -1.5)])
    assert folding_fraction(shift) == (0.0, 1.0)


def test_uniform_scaling_has_known_determinant():
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    field = torch.stack([0.5 * rows, -0.25 * cols])  # p -> (1.5 r, 0.75 c)
    fraction, mean = folding_fraction(field)
    assert fraction == 0.0 and mean == pytest.approx(1.5 * 0.75)


def test_mirroring_folds_every_pixel():
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    field = torch.stack([torch.zeros_like(rows), -2.0 * cols])  # p -> (r, -c): det = -1
    fraction, mean = folding_fraction(field)
    assert fraction == 1.0 and mean == pytest.approx(-1.0)


def test_local_fold_is_counted():
    field = torch.zeros(2, 10, 10)
    field[1, :, 5:] = -3.0  # columns 5.. jump back 3 px: the map is not monotone at column 4 -> 5
    fraction, _ = folding_fraction(field)
    assert fraction == pytest.approx(9 / 81)


def test_minimum_and_spread_of_the_determinant():
    field = torch.zeros(2, 10, 10)
    field[1, :, 5:] = -3.0
    stats = jacobian_statistics(field)
    assert stats["jacobian_min"] == pytest.approx(-2.0)  # 1 + (-3) at the jump
    assert jacobian_statistics(torch.zeros(2, 5, 6)) == {"folding_fraction": 0.0, "jacobian_mean": 1.0,
                                                         "jacobian_min": 1.0, "jacobian_std": 0.0}

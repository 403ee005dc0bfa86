"""Prediction with one fold's model or an ensemble of folds."""
from __future__ import annotations

import json

import numpy as np
import torch

from networks.segmentation_net import SegmentationNet
from utils.files import atomic_save
from utils.evaluation.prediction import gland_probability, load_fold_models

CPU = torch.device("cpu")


def _fake_run(runs, exp: str, k: int, seed: int, resize=None, folder: str = "") -> None:
    """``RUNS/EXP/[folder/]fold<k>`` with one (randomly initialised) best checkpoint, as a trainer
    leaves it."""
    torch.manual_seed(seed)
    net = SegmentationNet()
    for module in net.modules():  # spread the logits so that probabilities differ between folds
        if isinstance(module, torch.nn.Conv2d) and module.out_channels == 2:
            torch.nn.init.normal_(module.weight, std=2.0)
    fold = runs / exp / folder / f"fold{k}"
    atomic_save({"model": net.state_dict(), "args": {"resize": resize}}, fold / "best_epoch001_score0.5000.pth")
    (fold / "best.json").write_text(json.dumps({"best": "best_epoch001_score0.5000.pth", "checkpoints": []}))


def test_two_folds_give_the_mean_of_the_single_fold_probabilities(tmp_path):
    _fake_run(tmp_path, "SEG", 1, seed=1)
    _fake_run(tmp_path, "SEG", 2, seed=2, resize=(48, 32))  # a fold trained at another size
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    both = gland_probability(load_fold_models(tmp_path, "SEG", [1, 2], CPU), image, CPU)
    one = gland_probability(load_fold_models(tmp_path, "SEG", [1], CPU), image, CPU)
    two = gland_probability(load_fold_models(tmp_path, "SEG", [2], CPU), image, CPU)
    assert both.shape == one.shape == two.shape == (40, 56)
    assert np.abs(one - two).max() > 0.05  # the folds really differ
    np.testing.assert_allclose(both, (one + two) / 2, atol=1e-7)
    assert ((both > 0.5) != (((one + two) / 2) > 0.5)).sum() == 0


def test_a_fold_trained_at_another_size_runs_at_that_size(tmp_path):
    _fake_run(tmp_path, "SEG", 1, seed=3, resize=(32, 16))
    model = load_fold_models(tmp_path, "SEG", [1], CPU)[0]
    assert model.resize == (32, 16)
    seen = []
    model.net.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    gland_probability([model], np.zeros((40, 56), np.float32), CPU)
    assert seen == [(16, 32)]


def test_every_seed_of_a_fold_joins_the_ensemble(tmp_path):
    _fake_run(tmp_path, "SEG", 1, seed=4, folder="seed11")
    _fake_run(tmp_path, "SEG", 1, seed=5, folder="seed12")
    _fake_run(tmp_path, "ONE", 1, seed=4)
    _fake_run(tmp_path, "TWO", 1, seed=5)
    image = np.random.default_rng(1).random((40, 56)).astype(np.float32)
    models = load_fold_models(tmp_path, "SEG", [1], CPU)
    assert [m.path.parent.parent.name for m in models] == ["seed11", "seed12"]
    one, two = (gland_probability(load_fold_models(tmp_path, exp, [1], CPU), image, CPU) for exp in ("ONE", "TWO"))
    np.testing.assert_allclose(gland_probability(models, image, CPU), (one + two) / 2, atol=1e-7)

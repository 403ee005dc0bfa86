"""The registration trainer learns a known smooth deformation that affine alignment cannot."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import utils.stages.registration as registration_stage
from dataloaders.dataset import DatasetFolder
from dataloaders.folds import load_fold
from dataloaders.prealignment.cache import ensure_prealignment
from dataloaders.registration_data import RegistrationPairSet
from networks.registration_net import RegistrationNet
from utils.evaluation.loops import evaluate_registration
from utils.evaluation.metrics import summarise
from utils.stages.registration import RegistrationStage, build_parser
from utils.stages.registration import load_registration_network
from utils.training.checkpoints import find_best_checkpoint, load_checkpoint
from utils.training.engine import TrainingDiverged
from utils.training.fold_runner import train_folds

H, W = 64, 128
CPU = torch.device("cpu")


def train(argv: list[str]) -> None:
    """The registration trainer as its script runs it, driven from the test."""
    train_folds(build_parser().parse_args(argv), CPU, RegistrationStage)


def _glands(rng: np.random.Generator) -> np.ndarray:
    """Binary mask of ~12 vertical bars of random width, length and position."""
    mask = np.zeros((H, W), np.uint8)
    for x in np.linspace(8, W - 8, 12) + rng.uniform(-2, 2, 12):
        top, bottom = rng.integers(6, 20), rng.integers(H - 20, H - 6)
        cv2.line(mask, (int(x), int(top)), (int(x + rng.uniform(-3, 3)), int(bottom)), 1, int(rng.integers(3, 5)))
    return mask


def _bend(array: np.ndarray, phase: float, amplitude: float = 3.0, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Sample at x + a sin(2 pi y / H + phase): a smooth bend no affine map undoes."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    map_x = xs + amplitude * np.sin(2 * np.pi * ys / H + phase).astype(np.float32)
    return cv2.remap(array, map_x, ys, interpolation, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def bent_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bent")
    (root / "Image").mkdir()
    (root / "Label").mkdir()
    rng = np.random.default_rng(0)
    subjects = []
    for p in range(6):
        mask = _glands(rng)
        image = (0.25 + 0.5 * cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 1.2)
                 + rng.normal(0, 0.02, (H, W))).clip(0, 1).astype(np.float32)
        names = []
        for j, phase in enumerate((0.0, 2.1, 4.2)):
            name = f"P{p}_{j}"
            cv2.imwrite(str(root / "Image" / f"{name}.png"), np.round(_bend(image, phase) * 255).astype(np.uint8))
            cv2.imwrite(str(root / "Label" / f"{name}.png"), _bend(mask, phase, interpolation=cv2.INTER_NEAREST) * 255)
            names.append(name)
        subjects.append({"patient": f"P{p}", "Atlas": names[:1], "OtherImg": names[1:]})
    fold = {"train": subjects[:4], "val": subjects[4:5], "test": subjects[5:]}
    for k in range(1, 6):
        (root / f"train_dict{k}.json").write_text(json.dumps(fold))
    return root


def _trained_scores(bent_dataset, runs, exp: str, *extra: str) -> dict:
    train(["--data-dir", str(bent_dataset), "--fold", "1", "--exp", exp, "--runs-dir", str(runs), "--device", "cpu",
           "--epochs", "3", "--iters", "40", "--lr", "1e-3", "--workers", "0", "--no-progress", *extra])
    folder = DatasetFolder(bent_dataset)
    fold = load_fold(bent_dataset, 1, folder)
    prealign = ensure_prealignment(folder, [s.images for s in fold.patients], progress=False)
    net, _ = load_registration_network(find_best_checkpoint(runs / exp / "fold1"), CPU)
    rows = evaluate_registration(net, RegistrationPairSet(folder, fold.val, prealign), CPU, progress=False)
    return summarise(rows, ["affine_dice", "dice", "folding_fraction"])


def test_training_beats_affine_alone_and_the_diffeomorphic_field_does_not_fold(bent_dataset, tmp_path):
    """Both settings learn the bend that affine alignment cannot undo; trained harder than the
    paper (lr 1e-3), the direct displacement starts to fold, the integrated velocity does not."""
    torch.set_num_threads(2)
    direct = _trained_scores(bent_dataset, tmp_path / "runs", "R")
    diffeomorphic = _trained_scores(bent_dataset, tmp_path / "runs", "D", "--diffeomorphic")
    for summary in (direct, diffeomorphic):
        assert summary["dice_mean"] > summary["affine_dice_mean"] + 0.03, summary
    assert diffeomorphic["folding_fraction_mean"] < 0.005, diffeomorphic
    assert direct["folding_fraction_mean"] > 4 * diffeomorphic["folding_fraction_mean"], (direct, diffeomorphic)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(bent_dataset, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    args = ["--data-dir", str(bent_dataset), "--fold", "1", "--exp", "R", "--runs-dir", str(runs), "--device", "cpu",
            "--iters", "2", "--workers", "0", "--no-progress"]
    train(args + ["--epochs", "1"])
    last = runs / "R" / "fold1" / "last.pth"
    before = last.read_bytes()
    monkeypatch.setattr(registration_stage, "ssim_loss", lambda x, y: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"'ssim' is nan at epoch 2, iteration 1.*last good checkpoint"):
        train(args + ["--epochs", "2", "--resume"])
    assert last.read_bytes() == before
    assert load_checkpoint(last)["epoch"] == 0


def test_diffeomorphic_setting_is_recorded_and_used_by_every_consumer(bent_dataset, tmp_path):
    from networks.spatial_transformer import integrate_velocity
    runs = tmp_path / "runs"
    train(["--data-dir", str(bent_dataset), "--fold", "1", "--exp", "D", "--runs-dir", str(runs), "--device", "cpu",
           "--epochs", "1", "--iters", "3", "--lr", "1e-2", "--workers", "0", "--no-progress", "--diffeomorphic",
           "--integration-steps", "5"])
    path = find_best_checkpoint(runs / "D" / "fold1")
    assert load_checkpoint(path)["network"] == {"integration_steps": 5}
    net, _ = load_registration_network(path, CPU)  # what SS-MGS and the test script call
    assert net.integration_steps == 5
    moving, fixed = torch.rand(1, 1, H, W), torch.rand(1, 1, H, W)
    with torch.no_grad():
        direct = RegistrationNet()  # the same weights without the integration
        direct.load_state_dict(net.state_dict())
        torch.testing.assert_close(net.eval()(moving, fixed), integrate_velocity(direct.eval()(moving, fixed), 5))
    legacy = tmp_path / "legacy.pth"  # a checkpoint written before the setting existed
    state = load_checkpoint(path)
    del state["network"]
    torch.save(state, legacy)
    assert load_registration_network(legacy, CPU)[0].integration_steps == 0

"""Pre-alignment: affine estimation, field convention, cache (dataloaders.prealignment), folds, CLI."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloaders.prealignment import cache as prealign
from dataloaders.prealignment import estimation
from dataloaders.dataset import DatasetFolder
from dataloaders.folds import patient_groups
from networks.spatial_transformer import warp
from utils.errors import InputError

H, W = 64, 128
PAD = 24
REPO = Path(__file__).resolve().parents[1]
INVERSE = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


def canvas(seed: int, height: int = H, width: int = W) -> np.ndarray:
    """Textured blob image, ``PAD`` pixels larger than ``height x width`` on each side."""
    rng = np.random.default_rng(seed)
    ch, cw = height + 2 * PAD, width + 2 * PAD
    y, x = np.mgrid[0:ch, 0:cw].astype(np.float32)
    image = np.zeros((ch, cw), np.float32)
    for _ in range(30):
        cy, cx = rng.uniform(0, ch), rng.uniform(0, cw)
        sy, sx = rng.uniform(2, 6, size=2)
        image += rng.uniform(0.3, 1.0) * np.exp(-((y - cy) ** 2 / (2 * sy ** 2) + (x - cx) ** 2 / (2 * sx ** 2)))
    image += 0.5 * cv2.GaussianBlur(rng.standard_normal((ch, cw)).astype(np.float32), (0, 0), 4)
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


def homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def view(big: np.ndarray, matrix: np.ndarray, height: int = H, width: int = W) -> np.ndarray:
    """The ``height x width`` image ``m(x) = big(crop(matrix x))`` (inverse-map affine of the crop)."""
    crop = np.array([[1.0, 0.0, PAD], [0.0, 1.0, PAD]])
    full = (homogeneous(crop) @ homogeneous(matrix))[:2]
    return cv2.warpAffine(big, full, (width, height), flags=INVERSE, borderMode=cv2.BORDER_REFLECT)


def affine(degrees: float, scale: float, shear: float, shift: tuple[float, float],
           height: int = H, width: int = W) -> np.ndarray:
    """Inverse-map affine rotating/scaling/shearing about the image centre, then shifting."""
    a = np.deg2rad(degrees)
    linear = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1, shear], [0, 1]])
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    return np.hstack([linear, (centre - linear @ centre + np.asarray(shift))[:, None]])


IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


# --------------------------------------------------------------------------- estimation

def test_phase_correlation_sign_gives_inverse_map_translation():
    big = canvas(1)
    moving = view(big, IDENTITY)
    fixed = view(big, np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]]))  # fixed(x) = moving(x + (5, -3))
    # OpenCV's own sign: phaseCorrelate(fixed, moving) -> +d when fixed(p) = moving(p + d)
    window = cv2.createHanningWindow((W, H), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(fixed.astype(np.float64), moving.astype(np.float64), window)
    assert (dx, dy) == pytest.approx((5.0, -3.0), abs=1.0)  # sign matters; sub-pixel is rough
    shift = estimation._phase_shift(estimation.prepare(moving)[0], estimation.prepare(fixed)[0])
    np.testing.assert_allclose(shift[:, :2], np.eye(2))
    np.testing.assert_allclose(shift[:, 2], [5.0, -3.0], atol=1.0)


def test_matrix_scaling_between_pyramid_levels():
    big = canvas(7)
    truth = affine(3.0, 1.02, 0.0, (8.0, -6.0))
    moving, fixed = estimation.prepare(view(big, IDENTITY)), estimation.prepare(view(big, truth))
    assert len(moving) == 2  # 64 x 128: levels at full and half size

    def misfit(matrix: np.ndarray) -> float:
        warped = cv2.warpAffine(moving[1], matrix, moving[1].shape[::-1], flags=INVERSE)
        return float(np.abs(warped - fixed[1])[6:-6, 6:-6].mean())

    coarse = estimation._scale_matrix(truth, 0.5)
    np.testing.assert_allclose(coarse[:, :2], truth[:, :2])
    np.testing.assert_allclose(coarse[:, 2], truth[:, 2] / 2)
    assert misfit(coarse) < 0.1 * misfit(IDENTITY)
    assert misfit(coarse) < 0.3 * misfit(truth)  # unscaled translation is clearly wrong


@pytest.mark.parametrize("degrees, scale, shear, shift", [
    (3.0, 1.03, 0.02, (4.0, -3.0)),
    (-4.0, 0.97, -0.03, (-6.0, 5.0)),
])
def test_recovers_known_affine(degrees, scale, shear, shift):
    big = canvas(2)
    truth = affine(degrees, scale, shear, shift)
    moving = view(big, IDENTITY)
    fixed = view(big, truth)
    matrix, corr, ok = estimation.estimate_affine(moving, fixed)
    assert ok
    assert matrix.shape == (2, 3) and matrix.dtype == np.float64
    assert np.abs(matrix[:, :2] - truth[:, :2]).max() < 0.01
    # translation compared where it matters: displacement of the image centre and corners
    corners = np.array([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1], [W / 2, H / 2, 1]]).T
    assert np.abs((matrix - truth) @ corners).max() < 0.5
    assert abs(matrix[0, 2] - truth[0, 2]) < 0.5 and abs(matrix[1, 2] - truth[1, 2]) < 0.5
    identity_corr, _ = estimation._correlation(estimation.prepare(moving)[0], estimation.prepare(fixed)[0],
                                             IDENTITY)
    assert corr > identity_corr + 0.1
    assert corr > 0.95
    # the estimate actually aligns the raw images better than the identity does
    aligned = cv2.warpAffine(moving, matrix, (W, H), flags=INVERSE)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(aligned - fixed)[inner].mean() < 0.3 * np.abs(moving - fixed)[inner].mean()


def test_same_image_gives_identity():
    image = view(canvas(3), IDENTITY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an aligned pair is not a failure
        matrix, corr, ok = estimation.estimate_affine(image, image)
    assert ok and corr == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(matrix, IDENTITY, atol=1e-3)


def test_noise_vs_constant_falls_back_to_identity_with_warning():
    noise = np.random.default_rng(0).random((H, W)).astype(np.float32)
    constant = np.full((H, W), 0.5, np.float32)
    with pytest.warns(RuntimeWarning, match=r"noise -> flat.*identity"):
        matrix, corr, ok = estimation.estimate_affine(noise, constant, label="noise -> flat")
    assert not ok
    np.testing.assert_array_equal(matrix, IDENTITY)
    assert corr == 0.0


@pytest.mark.parametrize("bad, reason", [
    (np.array([[1.0, 0.0, 9.0], [0.0, 1.0, -7.0]]), "below identity"),   # worse than no motion
    (np.array([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0]]), "diverged"),          # degenerate shrink
])
def test_bad_ecc_result_falls_back(monkeypatch, bad, reason):
    big = canvas(6)
    moving, fixed = view(big, IDENTITY), view(big, affine(1.0, 1.0, 0.0, (0.5, 0.0)))
    monkeypatch.setattr(estimation, "_ecc", lambda moving, fixed, init, iterations: bad.copy())
    with pytest.warns(RuntimeWarning, match=reason):
        matrix, corr, ok = estimation.estimate_affine(moving, fixed, label="a -> b")
    assert not ok
    np.testing.assert_array_equal(matrix, IDENTITY)
    identity_corr, _ = estimation._correlation(estimation.prepare(moving)[0], estimation.prepare(fixed)[0],
                                             IDENTITY)
    assert corr == pytest.approx(identity_corr)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        estimation.estimate_affine(np.zeros((H, W), np.float32), np.zeros((H, W + 1), np.float32))


# --------------------------------------------------------------------------- Prealignment

def test_field_matches_opencv_inverse_warp():
    image = view(canvas(4), IDENTITY)
    matrix = affine(5.0, 1.04, 0.03, (3.5, -2.25))
    pre = prealign.Prealignment((H, W), {("a", "b"): prealign.PairResult(matrix, 0.9, True)})
    field = pre.field("a", "b")
    assert field.shape == (2, H, W) and field.dtype == torch.float32
    ours = warp(torch.from_numpy(image)[None, None], field[None])[0, 0].numpy()
    reference = cv2.warpAffine(image, matrix, (W, H), flags=INVERSE)
    # compare where the source point lies well inside the image (no border effects)
    y, x = np.mgrid[0:H, 0:W]
    src_x = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    src_y = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    inside = (src_x > 1) & (src_x < W - 2) & (src_y > 1) & (src_y < H - 2)
    assert inside.mean() > 0.7
    diff = np.abs(ours - reference)[inside]
    assert diff.max() < 0.02 and diff.mean() < 0.003
    # and a field of the wrong sign would be far off
    wrong = warp(torch.from_numpy(image)[None, None], -field[None])[0, 0].numpy()
    assert np.abs(wrong - reference)[inside].mean() > 10 * diff.mean()


def test_same_name_is_identity_and_unknown_pair_is_a_clear_error():
    pre = prealign.Prealignment((H, W), {})
    np.testing.assert_array_equal(pre.matrix("a", "a"), IDENTITY)
    assert pre.correlation("a", "a") == 1.0
    assert torch.count_nonzero(pre.field("a", "a")) == 0
    with pytest.raises(KeyError, match="'a' -> fixed 'b'"):
        pre.matrix("a", "b")


# --------------------------------------------------------------------------- cache

TRUTH = {  # image k of each patient = canvas viewed through this inverse-map affine
    1: IDENTITY,
    2: affine(2.0, 1.02, 0.01, (3.0, -2.0)),
    3: affine(-3.0, 0.98, -0.02, (-4.0, 3.0)),
}


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


def make_dataset(root: Path, patients=("P001", "P002"), labels: bool = True) -> Path:
    for p, patient in enumerate(patients):
        big = canvas(10 + p)
        for k, matrix in TRUTH.items():
            write_png(root / "Image" / f"{patient}_{k}.png", view(big, matrix))
            if labels:
                write_png(root / "Label" / f"{patient}_{k}.png", (view(big, matrix) > 0.5).astype(np.float32))
    (root / "Label").mkdir(parents=True, exist_ok=True)
    return root


def groups(patients=("P001", "P002")) -> list[list[str]]:
    return [[f"{p}_{k}" for k in TRUTH] for p in patients]


def all_pairs(group: list[str]) -> set[tuple[str, str]]:
    return {(a, b) for a in group for b in group if a != b}


def test_cache_file_structure_and_accuracy(tmp_path):
    root = make_dataset(tmp_path / "data")
    pre = prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=False)
    assert set(pre.computed) == all_pairs(groups()[0]) | all_pairs(groups()[1])
    assert len(pre.computed) == 12 and pre.reused == []
    data = json.loads((root / "prealign.json").read_text())
    assert data["size"] == [H, W]
    assert data["version"] == prealign.METHOD_VERSION
    names = [n for g in groups() for n in g]
    assert data["images"] == {n: hashlib.sha1((root / "Image" / f"{n}.png").read_bytes()).hexdigest()
                              for n in names}
    assert sorted(data["pairs"]) == sorted(names)
    for moving, row in data["pairs"].items():
        assert sorted(row) == sorted(n for n in names if n != moving and n[:4] == moving[:4])
        for fixed, entry in row.items():
            assert set(entry) == {"matrix", "correlation", "ok"}
            assert np.asarray(entry["matrix"]).shape == (2, 3)
            assert entry["ok"] is True and 0.9 < entry["correlation"] <= 1.0
            np.testing.assert_allclose(pre.matrix(moving, fixed), entry["matrix"])
    # matrix(a, b) = T_a^-1 T_b for images a(x) = canvas(T_a x)
    truth = np.linalg.solve(homogeneous(TRUTH[2]), homogeneous(TRUTH[3]))[:2]
    got = pre.matrix("P001_2", "P001_3")
    assert np.abs(got[:, :2] - truth[:, :2]).max() < 0.01
    assert np.abs(got[:, 2] - truth[:, 2]).max() < 0.5
    assert not list(root.glob("*.tmp")) and not list(root.glob(".prealign*"))


def test_second_call_recomputes_nothing(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data")
    prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=False)
    before = (root / "prealign.json").read_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("estimation must not run on a warm cache")

    monkeypatch.setattr(prealign, "estimate_prepared", forbidden)
    pre = prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=False)
    assert pre.computed == [] and len(pre.reused) == 12
    assert (root / "prealign.json").read_bytes() == before
    loaded = prealign.Prealignment.load(root / "prealign.json")
    np.testing.assert_array_equal(loaded.matrix("P002_3", "P002_1"), pre.matrix("P002_3", "P002_1"))


def test_a_warm_cache_draws_no_progress_bar(tmp_path, capfd):
    root = make_dataset(tmp_path / "data")
    prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=True)
    assert "pair" in capfd.readouterr().err  # a cold cache shows its progress
    prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=True)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_changed_image_recomputes_only_its_pairs(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data")
    first = prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=False)
    calls = []
    original = prealign.estimate_prepared

    def counting(moving, fixed):
        calls.append(1)
        return original(moving, fixed)

    monkeypatch.setattr(prealign, "estimate_prepared", counting)
    path = root / "Image" / "P001_2.png"
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    image[0, 0] = 255 - image[0, 0]  # new bytes, same size
    assert cv2.imwrite(str(path), image)
    pre = prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=False)
    expected = {("P001_2", "P001_1"), ("P001_2", "P001_3"), ("P001_1", "P001_2"), ("P001_3", "P001_2")}
    assert set(pre.computed) == expected and len(calls) == 4
    assert len(pre.reused) == 8
    np.testing.assert_array_equal(pre.matrix("P001_1", "P001_3"), first.matrix("P001_1", "P001_3"))
    data = json.loads((root / "prealign.json").read_text())
    assert data["images"]["P001_2"] == hashlib.sha1(path.read_bytes()).hexdigest()


def test_changed_size_recomputes_everything(tmp_path):
    root = make_dataset(tmp_path / "data")
    prealign.ensure_prealignment(DatasetFolder(root), groups(), workers=1, progress=False)
    pre = prealign.ensure_prealignment(DatasetFolder(root, resize=(120, 60)), groups(), workers=1,
                                       progress=False)
    assert len(pre.computed) == 12 and pre.reused == [] and pre.size == (60, 120)
    assert json.loads((root / "prealign.json").read_text())["size"] == [60, 120]
    assert pre.field("P001_1", "P001_2").shape == (2, 60, 120)


def test_unrequested_pairs_stay_and_missing_pairs_are_added(tmp_path):
    root = make_dataset(tmp_path / "data", patients=("P001", "P002", "P003"))
    prealign.ensure_prealignment(DatasetFolder(root), groups(("P001", "P002")), workers=1, progress=False)
    pre = prealign.ensure_prealignment(DatasetFolder(root), groups(("P002", "P003")), workers=1,
                                       progress=False)
    assert set(pre.computed) == all_pairs(groups(("P003",))[0])
    assert set(pre.reused) == all_pairs(groups(("P002",))[0])
    assert ("P001_1", "P001_2") in pre  # kept from the first call
    data = json.loads((root / "prealign.json").read_text())
    assert sorted(data["pairs"]) == sorted(n for g in groups(("P001", "P002", "P003")) for n in g)


def test_corrupt_cache_is_recomputed_with_a_warning(tmp_path):
    root = make_dataset(tmp_path / "data", patients=("P001",))
    (root / "prealign.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable pre-alignment cache"):
        pre = prealign.ensure_prealignment(DatasetFolder(root), groups(("P001",)), workers=1, progress=False)
    assert len(pre.computed) == 6
    assert json.loads((root / "prealign.json").read_text())["size"] == [H, W]


def test_worker_pool_matches_serial_and_reports_fallbacks(tmp_path):
    root = make_dataset(tmp_path / "data", patients=("P001",))
    write_png(root / "Image" / "Q_flat.png", np.full((H, W), 0.5, np.float32))
    write_png(root / "Image" / "Q_noise.png", np.random.default_rng(5).random((H, W)))
    patients = groups(("P001",)) + [["Q_flat", "Q_noise"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fallbacks are recorded, not warned about pair by pair
        parallel = prealign.ensure_prealignment(DatasetFolder(root), patients, workers=2, progress=False)
    assert len(parallel.computed) == 8
    assert not parallel.ok("Q_noise", "Q_flat") and not parallel.ok("Q_flat", "Q_noise")
    np.testing.assert_array_equal(parallel.matrix("Q_noise", "Q_flat"), IDENTITY)
    fallbacks = parallel.fallbacks()
    assert sorted((m, f) for m, f, _ in fallbacks) == [("Q_flat", "Q_noise"), ("Q_noise", "Q_flat")]
    assert all(reason for _, _, reason in fallbacks)
    summary = parallel.fallback_summary(parallel.computed)
    assert summary.startswith("prealign: 2 of 8 pairs fell back to the identity (") and "\n" not in summary
    stored = json.loads((root / "prealign.json").read_text())["fallbacks"]
    assert sorted((e["moving"], e["fixed"]) for e in stored) == [("Q_flat", "Q_noise"), ("Q_noise", "Q_flat")]
    reloaded = prealign.Prealignment.load(root / "prealign.json")
    assert reloaded.fallbacks() == fallbacks  # reasons survive the cache
    (root / "prealign.json").unlink()
    serial = prealign.ensure_prealignment(DatasetFolder(root), patients, workers=1, progress=False)
    for pair in serial.pairs():
        np.testing.assert_allclose(parallel.matrix(*pair), serial.matrix(*pair), atol=1e-9)


def test_unknown_image_in_a_group_is_an_input_error(tmp_path):
    root = make_dataset(tmp_path / "data", patients=("P001",))
    with pytest.raises(InputError, match="'P009_1' is not in"):
        prealign.ensure_prealignment(DatasetFolder(root), [["P001_1", "P009_1"]], workers=1, progress=False)


# --------------------------------------------------------------------------- folds and CLI

def write_fold(root: Path, k: int, train, val, test) -> None:
    def as_subjects(image_groups):
        return [{"Atlas": g[:1], "OtherImg": g[1:]} for g in image_groups]

    data = {"train": as_subjects(train), "val": as_subjects(val), "test": as_subjects(test)}
    (root / f"train_dict{k}.json").write_text(json.dumps(data))


def test_patient_groups_from_folds(tmp_path):
    root = make_dataset(tmp_path / "data", patients=("P001", "P002", "P003"))
    g1, g2, g3 = groups(("P001", "P002", "P003"))
    folder = DatasetFolder(root)
    with pytest.raises(InputError, match="run python -m utils.make_folds"):
        patient_groups(root, folder)
    write_fold(root, 1, [g1], [g2], [g3])
    write_fold(root, 3, [g3[::-1]], [g1], [g2])  # other order, other fold: same groups
    assert patient_groups(root, folder) == [g1, g2, g3]


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utils.prealign", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_help():
    result = run_module("--help")
    assert result.returncode == 0
    for flag in ("DATA_DIR", "--workers", "--resize", "--quiet"):
        assert flag in result.stdout


def test_cli_without_fold_files_exits_2(tmp_path):
    root = make_dataset(tmp_path / "data", patients=("P001",))
    result = run_module(str(root))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "make_folds" in result.stderr and "error:" in result.stderr
    assert not (root / "prealign.json").exists()


def test_cli_runs_and_reuses(tmp_path):
    root = make_dataset(tmp_path / "data", patients=("P001", "P002"))
    g1, g2 = groups()
    write_fold(root, 1, [g1], [g2], [])
    first = run_module(str(root), "--workers", "1", "--quiet")
    assert first.returncode == 0, first.stderr
    assert "12 pairs of 2 patients" in first.stdout and "12 computed, 0 reused, 0 fallbacks" in first.stdout
    second = run_module(str(root), "--quiet")
    assert second.returncode == 0 and "0 computed, 12 reused" in second.stdout
    bad = run_module(str(root), "--workers", "0")
    assert bad.returncode == 2

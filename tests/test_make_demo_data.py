"""Tests of the synthetic meibography generator (utils/make_demo_data.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloaders.dataset import read_label
from networks.spatial_transformer import compose, field_from_affine, warp
from utils import make_demo_data as demo
from utils.errors import run_cli

SIZE = (128, 64)   # (W, H): deliberately not square, to catch swapped axes
REPO = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def patients() -> list[dict]:
    return [demo.generate_patient(demo.patient_rng(0, p), SIZE, 4) for p in (1, 2, 3)]


# ------------------------------------------------------------------------------- in-memory API

def test_shapes_dtypes_and_ranges(patients):
    width, height = SIZE
    for data in patients:
        assert len(data["images"]) == len(data["masks"]) == len(data["matrices"]) == 4
        for image, mask, lid, matrix, field in zip(data["images"], data["masks"], data["lid_masks"],
                                                   data["matrices"], data["fields"]):
            assert image.shape == mask.shape == lid.shape == (height, width)
            assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
            assert matrix.shape == (2, 3) and matrix.dtype == np.float64
            assert field.shape == (2, height, width) and field.dtype == np.float32
        assert data["canonical_image"].shape == data["canonical_mask"].shape == (height, width)


def test_same_seed_same_arrays_other_seed_differs():
    a = demo.generate_patient(demo.patient_rng(5, 1), SIZE, 3)
    b = demo.generate_patient(demo.patient_rng(5, 1), SIZE, 3)
    c = demo.generate_patient(demo.patient_rng(6, 1), SIZE, 3)
    for key in ("images", "masks", "matrices", "fields"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a["masks"][0], c["masks"][0])
    assert not np.array_equal(a["images"][0], c["images"][0])


def test_gland_fraction_and_component_count(patients):
    for data in patients:
        for mask in data["masks"]:
            assert 0.03 <= mask.mean() <= 0.40
            components = cv2.connectedComponents(mask, connectivity=8)[0] - 1
            assert 8 <= components <= 40
        # every gland pixel of the anatomy lies inside the lid band
        assert np.all(data["canonical_lid"][data["canonical_mask"] > 0] == 1)


def test_glands_brighter_than_lid_brighter_than_background(patients):
    for data in patients:
        for image, mask, lid in zip(data["images"], data["masks"], data["lid_masks"]):
            gland = image[mask > 0].mean()
            lid_only = image[(lid > 0) & (mask == 0)].mean()
            background = image[lid == 0].mean()
            assert gland > lid_only + 0.05
            assert lid_only > background + 0.05


def test_images_of_a_patient_differ_but_align_with_the_known_maps(patients):
    width, height = SIZE
    for data in patients:
        masks = data["masks"]
        for i, j in ((0, 1), (2, 3), (3, 0)):
            assert np.abs(data["images"][i] - data["images"][j]).mean() > 0.01
            map_x, map_y = demo.pair_maps(data, i, j)
            full = cv2.remap(masks[j], map_x, map_y, cv2.INTER_NEAREST)
            affine = cv2.warpAffine(masks[j], demo.relative_affine(data["matrices"], i, j),
                                    (width, height), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
            d_none, d_affine, d_full = dice(masks[i], masks[j]), dice(masks[i], affine), \
                dice(masks[i], full)
            assert d_full > 0.85
            assert d_full > d_none + 0.2
            assert d_full > d_affine + 0.05      # the elastic part matters
            warped = cv2.remap(data["images"][j], map_x, map_y, cv2.INTER_LINEAR)
            inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
            corr_full = np.corrcoef(warped[inside], data["images"][i][inside])[0, 1]
            corr_none = np.corrcoef(data["images"][j][inside], data["images"][i][inside])[0, 1]
            assert corr_full > corr_none


def test_view_to_canonical_matches_hand_formula():
    rng = np.random.default_rng(1)
    matrix = demo.random_affine(rng, SIZE)
    field = demo.random_elastic_field(rng, SIZE)
    map_x, map_y = demo.view_to_canonical(matrix, field)
    for y, x in ((0, 0), (10, 100), (63, 127), (31, 7)):
        qx, qy = x + field[1, y, x], y + field[0, y, x]
        sx = matrix[0, 0] * qx + matrix[0, 1] * qy + matrix[0, 2]
        sy = matrix[1, 0] * qx + matrix[1, 1] * qy + matrix[1, 2]
        assert map_x[y, x] == pytest.approx(sx, abs=1e-4)
        assert map_y[y, x] == pytest.approx(sy, abs=1e-4)


def test_maps_follow_the_project_warp_convention(patients):
    """image_k = warp(canonical, compose(e_k, field_from_affine(A_k))), checked on the masks."""
    width, height = SIZE
    for data in patients:
        canonical = torch.from_numpy(data["canonical_mask"]).float()[None, None]
        for k in range(4):
            total = compose(torch.from_numpy(data["fields"][k])[None],
                            field_from_affine(data["matrices"][k], (height, width))[None])
            warped = warp(canonical, total, mode="nearest")[0, 0].numpy()
            map_x, map_y = demo.view_to_canonical(data["matrices"][k], data["fields"][k])
            inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
            assert dice(warped * inside, data["masks"][k] * inside) > 0.85


def test_canonical_to_view_inverts_view_to_canonical():
    rng = np.random.default_rng(2)
    matrix = demo.random_affine(rng, SIZE)
    field = demo.random_elastic_field(rng, SIZE)
    map_x, map_y = demo.view_to_canonical(matrix, field)
    back_x, back_y = demo.canonical_to_view(matrix, field, map_x, map_y)
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    interior = (slice(4, -4), slice(4, -4))
    assert np.abs(back_x - xs)[interior].max() < 0.05
    assert np.abs(back_y - ys)[interior].max() < 0.05


def test_relative_affine_is_pair_maps_without_elastic_fields(patients):
    data = dict(patients[0])
    data["fields"] = [np.zeros_like(f) for f in data["fields"]]
    map_x, map_y = demo.pair_maps(data, 1, 2)
    m = demo.relative_affine(data["matrices"], 1, 2)
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float64)
    np.testing.assert_allclose(map_x, m[0, 0] * xs + m[0, 1] * ys + m[0, 2], atol=1e-3)
    np.testing.assert_allclose(map_y, m[1, 0] * xs + m[1, 1] * ys + m[1, 2], atol=1e-3)
    np.testing.assert_allclose(demo.relative_affine(data["matrices"], 1, 1),
                               [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_elastic_field_size_and_smoothness():
    width, height = 200, 80
    field = demo.random_elastic_field(np.random.default_rng(3), (width, height))
    assert field.shape == (2, height, width) and field.dtype == np.float32
    expected_rms = 0.008 * np.sqrt(width * height)
    np.testing.assert_allclose(field.reshape(2, -1).std(axis=1), expected_rms, rtol=1e-3)
    # smooth and fold-free: the Jacobian of p -> p + e(p) stays close to the identity
    d_row_dy, d_row_dx = np.gradient(field[0].astype(np.float64))
    d_col_dy, d_col_dx = np.gradient(field[1].astype(np.float64))
    assert max(np.abs(g).max() for g in (d_row_dy, d_row_dx, d_col_dy, d_col_dx)) < 0.5
    assert ((1 + d_col_dx) * (1 + d_row_dy) - d_col_dy * d_row_dx).min() > 0.5


def test_random_affine_is_a_small_motion():
    width, height = SIZE
    for seed in range(20):
        m = demo.random_affine(np.random.default_rng(seed), SIZE)
        assert 0.85 < np.linalg.det(m[:, :2]) < 1.15
        centre = m @ np.array([(width - 1) / 2, (height - 1) / 2, 1.0])
        assert np.all(np.abs(centre - [(width - 1) / 2, (height - 1) / 2]) <= 0.03 * np.array(SIZE) + 1e-9)


# ------------------------------------------------------------------------------- files and CLI

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_dataset_files_names_sizes_and_content(tmp_path):
    width, height = 96, 48
    names = demo.generate_dataset(tmp_path / "d", patients=2, images_per_patient=3,
                                  size=(width, height), seed=4, progress=False)
    expected = [f"P{p:03d}_{k}" for p in (1, 2) for k in (1, 2, 3)]
    assert names == expected
    for sub in ("Image", "Label"):
        assert sorted(p.stem for p in (tmp_path / "d" / sub).iterdir()) == expected
    reference = demo.generate_patient(demo.patient_rng(4, 2), (width, height), 3)
    image = cv2.imread(str(tmp_path / "d" / "Image" / "P002_3.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(tmp_path / "d" / "Label" / "P002_3.png"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (height, width)
    assert label.dtype == np.uint8 and label.shape == (height, width)
    assert set(np.unique(label)) == {0, 255}
    np.testing.assert_array_equal(image, np.round(reference["images"][2] * 255).astype(np.uint8))
    np.testing.assert_array_equal(read_label(tmp_path / "d" / "Label" / "P002_3.png"),
                                  reference["masks"][2])


def test_dataset_files_are_byte_identical_for_a_seed(tmp_path):
    kwargs = dict(images_per_patient=2, size=(64, 32), progress=False)
    demo.generate_dataset(tmp_path / "a", patients=2, seed=7, **kwargs)
    demo.generate_dataset(tmp_path / "b", patients=2, seed=7, **kwargs)
    demo.generate_dataset(tmp_path / "c", patients=2, seed=8, **kwargs)
    demo.generate_dataset(tmp_path / "one", patients=1, seed=7, **kwargs)
    a, b, c, one = (_tree(tmp_path / n) for n in ("a", "b", "c", "one"))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.startswith("Image"))
    # a patient does not depend on how many patients are generated
    assert one == {k: v for k, v in a.items() if "P001" in k}


def test_existing_data_needs_overwrite_which_only_replaces_demo_files(tmp_path):
    from utils.errors import InputError
    kwargs = dict(images_per_patient=2, size=(64, 32), progress=False)
    out = tmp_path / "d"
    demo.generate_dataset(out, patients=3, seed=0, **kwargs)
    with pytest.raises(InputError, match="--overwrite"):
        demo.generate_dataset(out, patients=2, seed=0, **kwargs)
    demo.generate_dataset(out, patients=2, seed=1, overwrite=True, **kwargs)
    assert sorted(p.stem for p in (out / "Image").iterdir()) == ["P001_1", "P001_2", "P002_1", "P002_2"]
    assert sorted(p.stem for p in (out / "Label").iterdir()) == ["P001_1", "P001_2", "P002_1", "P002_2"]
    (out / "Image" / "patient_scan.png").write_bytes(b"x")
    with pytest.raises(InputError, match="patient_scan.png"):
        demo.generate_dataset(out, patients=2, seed=1, overwrite=True, **kwargs)
    assert (out / "Image" / "patient_scan.png").exists() and (out / "Image" / "P001_1.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--patients", "0"], "--patients"),
    (["--images-per-patient", "1"], "--images-per-patient"),
    (["--size", "31", "64"], "--size"),
    (["--size", "64", "20"], "--size"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        run_cli(demo.main, [str(tmp_path / "d"), "--no-progress", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "d").exists()


def test_cli_writes_a_dataset_and_refuses_a_second_time(tmp_path, capsys):
    out = tmp_path / "d"
    argv = [str(out), "--patients", "2", "--images-per-patient", "2", "--size", "64", "32",
            "--seed", "3", "--no-progress"]
    run_cli(demo.main, argv)
    assert len(list((out / "Image").iterdir())) == 4
    assert "make_folds" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        run_cli(demo.main, argv)
    assert exc.value.code == 2
    run_cli(demo.main, argv + ["--overwrite"])


def test_module_help_and_bad_args_via_python_m(tmp_path):
    help_run = subprocess.run([sys.executable, "-m", "utils.make_demo_data", "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0
    for flag in ("--patients", "--images-per-patient", "--size", "--seed", "--overwrite",
                 "--no-progress", "DATA_DIR"):
        assert flag in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "utils.make_demo_data", str(tmp_path / "d"),
                          "--patients", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1

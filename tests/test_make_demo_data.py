"""Tests of the synthetic meibography generator (utils/make_demo_data.py, utils/synthetic/)."""
from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloaders.dataset import read_label
from networks.spatial_transformer import compose, field_from_affine, warp
from utils.synthetic import realistic
from utils.synthetic import geometry
from utils import make_demo_data as demo_command
from utils.synthetic import generate as demo
from utils.clinical.dropout import meiboscore
from utils.errors import InputError, run_cli

SIZE = (128, 64)   # (W, H): deliberately not square, to catch swapped axes
REPO = Path(__file__).resolve().parents[1]
STYLES = ("simple", "realistic")
# pixels of Image/ and Label/ written by the simple style before the realistic style existed
# (2 patients x 2 images, 96 x 48, seed 7)
SIMPLE_PIXELS_SHA256 = "544dde725f0eda800c7cd64b04c16dc96ffbc6965fd05ec630f6577bd252f550"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def estimated_dropout(glands: np.ndarray, eyelid: np.ndarray, fraction: float = 0.06) -> float:
    """``1 - |E & closing(G, horizontal line of L px)| / |E|``, ``L = round(fraction * eyelid
    width)``: the estimate a measurement from the masks makes (written here independently)."""
    eyelid = eyelid.astype(bool)
    length = int(np.floor(fraction * eyelid.any(axis=0).sum() + 0.5))
    padded = np.pad(glands.astype(np.uint8), ((0, 0), (length, length)))
    line = np.ones((1, length), np.uint8)
    closed = cv2.erode(cv2.dilate(padded, line, anchor=(length // 2, 0)), line,
                       anchor=(length - 1 - length // 2, 0))[:, length:-length] > 0
    return 1.0 - float((closed & eyelid).sum()) / float(eyelid.sum())


def estimated_span_dropout(glands: np.ndarray, eyelid: np.ndarray, fraction: float = 0.06,
                           floor: float = 0.5) -> float:
    """The span definition (utils.clinical.dropout, written here independently) with the
    margin on top: per column the eyelid pixels ranked from the top; the span is the upper
    ``h`` of each column, ``h`` the 60th percentile (columns weighted by their eyelid pixel
    count) of the columns' gland reach, at least ``floor``; the closed glands' share of it."""
    eyelid, glands = eyelid.astype(bool), glands.astype(bool)
    length = int(np.floor(fraction * eyelid.any(axis=0).sum() + 0.5))
    padded = np.pad(glands.astype(np.uint8), ((0, 0), (length, length)))
    line = np.ones((1, length), np.uint8)
    closed = cv2.erode(cv2.dilate(padded, line, anchor=(length // 2, 0)), line,
                       anchor=(length - 1 - length // 2, 0))[:, length:-length] > 0
    depth = eyelid.sum(axis=0)
    rank = np.cumsum(eyelid, axis=0) * eyelid
    reach = (rank * glands).max(axis=0)
    cols = reach > 0
    ratio = reach[cols] / depth[cols]
    order = np.argsort(ratio, kind="stable")
    weight = np.cumsum(depth[cols][order])
    extent = max(floor, ratio[order][np.searchsorted(weight, 0.6 * weight[-1])])
    span = eyelid & (rank - 0.5 < extent * depth)
    return 1.0 - float((closed & span).sum()) / float(span.sum())


@pytest.fixture(scope="module")
def patients() -> dict[str, list[dict]]:
    return {style: [demo.generate_patient(demo.patient_rng(0, p), SIZE, 4, style=style)
                    for p in (1, 2, 3)] for style in STYLES}


def test_default_style_is_realistic():
    assert demo.DEFAULT_STYLE == "realistic"
    a = demo.generate_patient(demo.patient_rng(2, 1), SIZE, 2)
    assert "dropout" in a and "region_masks" in a


# ------------------------------------------------------------------------------- in-memory API

@pytest.mark.parametrize("style", STYLES)
def test_shapes_dtypes_and_ranges(patients, style):
    width, height = SIZE
    for data in patients[style]:
        assert len(data["images"]) == len(data["masks"]) == len(data["matrices"]) == 4
        for image, mask, lid, matrix, field in zip(data["images"], data["masks"], data["lid_masks"],
                                                   data["matrices"], data["fields"]):
            assert image.shape == mask.shape == lid.shape == (height, width)
            assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
            assert mask.dtype == lid.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            assert set(np.unique(lid)) == {0, 1}
            assert matrix.shape == (2, 3) and matrix.dtype == np.float64
            assert field.shape == (2, height, width) and field.dtype == np.float32
        assert data["canonical_image"].shape == data["canonical_mask"].shape == (height, width)


@pytest.mark.parametrize("style", STYLES)
def test_same_seed_same_arrays_other_seed_differs(style):
    a = demo.generate_patient(demo.patient_rng(5, 1), SIZE, 3, style=style)
    b = demo.generate_patient(demo.patient_rng(5, 1), SIZE, 3, style=style)
    c = demo.generate_patient(demo.patient_rng(6, 1), SIZE, 3, style=style)
    for key in ("images", "masks", "lid_masks", "matrices", "fields"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a["masks"][0], c["masks"][0])
    assert not np.array_equal(a["images"][0], c["images"][0])


def test_simple_gland_fraction_and_component_count(patients):
    for data in patients["simple"]:
        for mask in data["masks"]:
            assert 0.03 <= mask.mean() <= 0.40
            components = cv2.connectedComponents(mask, connectivity=8)[0] - 1
            assert 8 <= components <= 40
        # every gland pixel of the anatomy lies inside the lid band
        assert np.all(data["canonical_lid"][data["canonical_mask"] > 0] == 1)


def test_simple_glands_brighter_than_lid_brighter_than_background(patients):
    for data in patients["simple"]:
        for image, mask, lid in zip(data["images"], data["masks"], data["lid_masks"]):
            gland = image[mask > 0].mean()
            lid_only = image[(lid > 0) & (mask == 0)].mean()
            background = image[lid == 0].mean()
            assert gland > lid_only + 0.05
            assert lid_only > background + 0.05


def relative_affine(matrices, i: int, j: int) -> np.ndarray:
    """The affine part of ``geometry.pair_maps``: 2x3 ``M`` (inverse-map convention) with
    ``cv2.warpAffine(image_j, M, (W, H), flags=WARP_INVERSE_MAP) ~ image_i`` up to the
    elastic fields, ``M = A_j^-1 A_i``."""
    def square(m):
        return np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])
    return (np.linalg.inv(square(matrices[j])) @ square(matrices[i]))[:2]


@pytest.mark.parametrize("style", STYLES)
def test_images_of_a_patient_differ_but_align_with_the_known_maps(patients, style):
    width, height = SIZE
    gains = []
    for data in patients[style]:
        masks = data["masks"]
        for i, j in ((0, 1), (2, 3), (3, 0)):
            assert np.abs(data["images"][i] - data["images"][j]).mean() > 0.01
            map_x, map_y = geometry.pair_maps(data, i, j)
            full = cv2.remap(masks[j], map_x, map_y, cv2.INTER_NEAREST)
            affine = cv2.warpAffine(masks[j], relative_affine(data["matrices"], i, j),
                                    (width, height), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
            d_none, d_affine, d_full = dice(masks[i], masks[j]), dice(masks[i], affine), \
                dice(masks[i], full)
            assert d_full > 0.8
            assert d_full > d_none + 0.1
            gains.append(d_full - d_none)
            assert d_full > d_affine + 0.05      # the elastic part matters
            warped = cv2.remap(data["images"][j], map_x, map_y, cv2.INTER_LINEAR)
            inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
            corr_full = np.corrcoef(warped[inside], data["images"][i][inside])[0, 1]
            corr_none = np.corrcoef(data["images"][j][inside], data["images"][i][inside])[0, 1]
            assert corr_full > corr_none
    assert np.mean(gains) > 0.25


def test_view_to_canonical_matches_hand_formula():
    rng = np.random.default_rng(1)
    matrix = geometry.random_affine(rng, SIZE)
    field = geometry.random_elastic_field(rng, SIZE)
    map_x, map_y = geometry.view_to_canonical(matrix, field)
    for y, x in ((0, 0), (10, 100), (63, 127), (31, 7)):
        qx, qy = x + field[1, y, x], y + field[0, y, x]
        sx = matrix[0, 0] * qx + matrix[0, 1] * qy + matrix[0, 2]
        sy = matrix[1, 0] * qx + matrix[1, 1] * qy + matrix[1, 2]
        assert map_x[y, x] == pytest.approx(sx, abs=1e-4)
        assert map_y[y, x] == pytest.approx(sy, abs=1e-4)


@pytest.mark.parametrize("style", STYLES)
def test_maps_follow_the_project_warp_convention(patients, style):
    """image_k = warp(canonical, compose(e_k, field_from_affine(A_k))), checked on the masks."""
    width, height = SIZE
    for data in patients[style]:
        canonical = torch.from_numpy(data["canonical_mask"]).float()[None, None]
        for k in range(4):
            total = compose(torch.from_numpy(data["fields"][k])[None],
                            field_from_affine(data["matrices"][k], (height, width))[None])
            warped = warp(canonical, total, mode="nearest")[0, 0].numpy()
            map_x, map_y = geometry.view_to_canonical(data["matrices"][k], data["fields"][k])
            inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
            if style == "realistic":   # an occluder removes part of the masks
                inside &= cv2.remap(data["canonical_lid"], map_x, map_y, cv2.INTER_NEAREST) \
                    <= data["lid_masks"][k]
            assert dice(warped * inside, data["masks"][k] * inside) > 0.85


def test_canonical_to_view_inverts_view_to_canonical():
    rng = np.random.default_rng(2)
    matrix = geometry.random_affine(rng, SIZE)
    field = geometry.random_elastic_field(rng, SIZE)
    map_x, map_y = geometry.view_to_canonical(matrix, field)
    back_x, back_y = geometry.canonical_to_view(matrix, field, map_x, map_y)
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    interior = (slice(4, -4), slice(4, -4))
    assert np.abs(back_x - xs)[interior].max() < 0.05
    assert np.abs(back_y - ys)[interior].max() < 0.05


@pytest.mark.parametrize("style", STYLES)
def test_relative_affine_is_pair_maps_without_elastic_fields(patients, style):
    data = dict(patients[style][0])
    data["fields"] = [np.zeros_like(f) for f in data["fields"]]
    map_x, map_y = geometry.pair_maps(data, 1, 2)
    m = relative_affine(data["matrices"], 1, 2)
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float64)
    np.testing.assert_allclose(map_x, m[0, 0] * xs + m[0, 1] * ys + m[0, 2], atol=1e-3)
    np.testing.assert_allclose(map_y, m[1, 0] * xs + m[1, 1] * ys + m[1, 2], atol=1e-3)
    np.testing.assert_allclose(relative_affine(data["matrices"], 1, 1),
                               [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def _jacobian_det(field: np.ndarray) -> np.ndarray:
    d_row_dy, d_row_dx = np.gradient(field[0].astype(np.float64))
    d_col_dy, d_col_dx = np.gradient(field[1].astype(np.float64))
    return (1 + d_col_dx) * (1 + d_row_dy) - d_col_dy * d_row_dx


def test_elastic_field_size_and_smoothness():
    width, height = 200, 80
    field = geometry.random_elastic_field(np.random.default_rng(3), (width, height))
    assert field.shape == (2, height, width) and field.dtype == np.float32
    expected_rms = 0.008 * np.sqrt(width * height)
    np.testing.assert_allclose(field.reshape(2, -1).std(axis=1), expected_rms, rtol=1e-3)
    # smooth and fold-free: the Jacobian of p -> p + e(p) stays close to the identity
    d_row_dy, d_row_dx = np.gradient(field[0].astype(np.float64))
    d_col_dy, d_col_dx = np.gradient(field[1].astype(np.float64))
    assert max(np.abs(g).max() for g in (d_row_dy, d_row_dx, d_col_dy, d_col_dx)) < 0.5
    assert _jacobian_det(field).min() > 0.5


@pytest.mark.parametrize("size", [(96, 48), (256, 128), (740, 350)])
def test_realistic_fields_are_larger_than_simple_ones_and_fold_free(size):
    simple_rms, real_rms = [], []
    for seed in range(6):
        simple = geometry.random_elastic_field(np.random.default_rng(seed), size)
        field = realistic.realistic_field(np.random.default_rng(seed), size)
        assert field.shape == (2, size[1], size[0]) and field.dtype == np.float32
        assert _jacobian_det(field).min() > 0.5
        simple_rms.append(simple.std())
        real_rms.append(field.std())
    assert np.mean(real_rms) > 1.1 * np.mean(simple_rms)


def test_random_affine_is_a_small_motion():
    width, height = SIZE
    for seed in range(20):
        m = geometry.random_affine(np.random.default_rng(seed), SIZE)
        assert 0.85 < np.linalg.det(m[:, :2]) < 1.15
        centre = m @ np.array([(width - 1) / 2, (height - 1) / 2, 1.0])
        assert np.all(np.abs(centre - [(width - 1) / 2, (height - 1) / 2]) <= 0.03 * np.array(SIZE) + 1e-9)


# ------------------------------------------------------------------------------- realistic style

def test_realistic_glands_lie_inside_the_eyelid_and_fill_its_margin_side():
    """As on real lids, the eyelid (tarsal) mask reaches well beyond the glands of a healthy
    lid: they fill its margin half, cover about a third of it and stop short of its far edge."""
    healthy = demo.generate_patient(demo.patient_rng(1, 1), (256, 128), 3, dropout_range=(0.0, 0.0))
    assert healthy["canonical_dropout"] < 0.05
    for mask, lid, region, span, true in zip(healthy["masks"], healthy["lid_masks"], healthy["region_masks"],
                                             healthy["span_masks"], healthy["dropout"]):
        assert np.all(lid[mask > 0] == 1)
        assert 0.08 < lid.mean() < 0.6
        assert true < 0.05                                   # no dropout: R fills the healthy span
        assert estimated_span_dropout(mask, lid) < 0.05
        assert 0.25 < mask.sum() / lid.sum() < 0.45          # healthy glands cover about a third
        assert 0.35 < estimated_dropout(mask, lid) < 0.6     # the whole-eyelid (area) reading is far off
        assert 0.4 < span.sum() / lid.sum() < 0.7            # the span: the margin half of the plate
        rank = np.cumsum(lid, axis=0) * lid                  # eyelid pixels ranked from the margin (top)
        assert np.quantile(rank[mask > 0] / lid.sum(axis=0)[np.nonzero(mask)[1]], 0.99) < 0.75
        assert true == pytest.approx(1 - (region & span).sum() / span.sum())


def test_high_dropout_leaves_more_of_the_eyelid_gland_free():
    size = (256, 128)
    none = demo.generate_patient(demo.patient_rng(3, 1), size, 2, dropout_range=(0.0, 0.0))
    severe = demo.generate_patient(demo.patient_rng(3, 1), size, 2, dropout_range=(0.8, 0.8))
    assert severe["dropout_level"] == 0.8
    assert severe["canonical_dropout"] == pytest.approx(0.8, abs=0.02)
    for k in range(2):
        free = [1 - (d["masks"][k] & d["span_masks"][k]).sum() / d["span_masks"][k].sum()
                for d in (none, severe)]
        assert free[1] > free[0] + 0.3
        assert severe["dropout"][k] == pytest.approx(0.8, abs=0.06)
        assert none["dropout"][k] < 0.05


@pytest.mark.parametrize("size, patients", [((256, 128), 8), ((740, 350), 4)])
def test_true_dropout_agrees_with_the_mask_estimate(size, patients):
    """The span estimate from gland and eyelid masks (closing over 6 % of the eyelid width,
    the span from the lid's own glands) matches the generator's geometric truth, from no to
    severe dropout."""
    errors = []
    for patient in range(1, patients + 1):
        grade = realistic.GRADE_RANGES[(patient - 1) % 4]
        data = demo.generate_patient(demo.patient_rng(11, patient), size, 2, dropout_range=grade)
        for mask, lid, true in zip(data["masks"], data["lid_masks"], data["dropout"]):
            errors.append(estimated_span_dropout(mask, lid) - true)
    assert np.abs(errors).max() <= 0.05
    assert abs(np.mean(errors)) <= 0.03


@pytest.mark.parametrize("level, grade", [(0.0, 0), (0.049, 0), (0.05, 1), (0.3333, 1),
                                          (1 / 3, 2), (2 / 3, 2), (0.667, 3), (1.0, 3)])
def test_meiboscore_thresholds(level, grade):
    assert meiboscore(level) == grade


def test_text_overlay_changes_pixels_in_its_corner_only(monkeypatch):
    size = (256, 128)
    args = [(demo.patient_rng(0, p), size, 2) for p in range(1, 9)]
    with_text = [demo.generate_patient(*a) for a in args]
    monkeypatch.setattr(realistic, "draw_overlay", lambda image, plan: None)
    without = [demo.generate_patient(demo.patient_rng(0, p), size, 2) for p in range(1, 9)]
    corners = {"top-left": (slice(0, 40), slice(0, 110)), "top-right": (slice(0, 40), slice(146, 256)),
               "bottom-left": (slice(88, 128), slice(0, 110)),
               "bottom-right": (slice(88, 128), slice(146, 256))}
    seen = 0
    for a, b in zip(with_text, without):
        for image, plain, acquisition in zip(a["images"], b["images"], a["acquisition"]):
            changed = image != plain
            if acquisition["text"] is None:
                assert not changed.any()
                continue
            seen += 1
            box = np.zeros_like(changed)
            box[corners[acquisition["text"]]] = True
            assert changed[box].sum() > 40 and not changed[~box].any()
            assert image[changed].mean() > plain[changed].mean() + 0.15    # bright text:
            assert (image[changed] > plain[changed]).mean() > 0.9            # it brightens what it covers
    assert 2 <= seen < 16


def test_some_images_have_a_finger_or_a_swab_and_the_eyelid_mask_leaves_it_out():
    kinds = set()
    for p in range(1, 9):
        data = demo.generate_patient(demo.patient_rng(0, p), (128, 64), 4)
        for k, acquisition in enumerate(data["acquisition"]):
            kinds.add(acquisition["occluder"])
            map_x, map_y = geometry.view_to_canonical(data["matrices"][k], data["fields"][k])
            plain = cv2.remap(data["canonical_lid"], map_x, map_y, cv2.INTER_NEAREST)
            lost = (plain > 0) & (data["lid_masks"][k] == 0)
            if acquisition["occluder"] is None:
                assert lost.mean() < 0.01
    assert {None, "finger", "swab"} <= kinds


def _band_energy(image: np.ndarray) -> np.ndarray:
    """Band-pass magnitude (difference of Gaussians), which eyelashes and skin texture raise."""
    return np.abs(cv2.GaussianBlur(image, (0, 0), 0.8) - cv2.GaussianBlur(image, (0, 0), 2.5))


def test_skin_and_eyelashes_raise_texture_above_the_lid():
    energy = {}
    for style in STYLES:
        values = []
        for p in range(1, 7):
            data = demo.generate_patient(demo.patient_rng(0, p), (256, 128), 2, style=style)
            for image, lid, extra in zip(data["images"], data["lid_masks"],
                                         data.get("acquisition", [{}] * 2)):
                if extra.get("text") or extra.get("occluder"):
                    continue
                columns = np.flatnonzero(lid.any(axis=0))
                top = lid[:, columns].argmax(axis=0)
                above = np.zeros(lid.shape, bool)
                for col, row in zip(columns, top):
                    above[max(0, row - 40):max(0, row - 3), col] = True
                values.append(_band_energy(image)[above].mean())
        energy[style] = np.mean(values)
    assert energy["realistic"] > 2.0 * energy["simple"]


def test_even_grade_mix_cycles_through_the_grades(tmp_path):
    demo.generate_dataset(tmp_path / "d", patients=4, images_per_patient=2, size=(256, 128),
                          seed=0, progress=False, grade_mix="even")
    with open(tmp_path / "d" / demo.DROPOUT_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    grades = [int(r["meiboscore"]) for r in rows]
    assert grades == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_real_grade_mix_has_the_shares_of_clinicians_grades(seed):
    """Over any run of patients the grades come in about MGD-1k's shares (21 / 58 / 17 / 3 %)."""
    assert sum(realistic.GRADE_SHARES) == pytest.approx(1.0)
    for first, count in ((1, 100), (37, 30)):
        grades = [demo.dataset_grade(seed, p) for p in range(first, first + count)]
        shares = np.bincount(grades, minlength=4) / count
        assert np.abs(shares - realistic.GRADE_SHARES).max() <= 1.5 / count + 0.02
    assert [demo.dataset_grade(seed, p, "even") for p in range(1, 6)] == [0, 1, 2, 3, 0]
    assert demo.dataset_grade(seed, 5) == demo.dataset_grade(seed, 5)
    assert [demo.dataset_grade(seed, p) for p in range(1, 30)] != [demo.dataset_grade(seed + 1, p) for p in range(1, 30)]


# ------------------------------------------------------------------------------- files and CLI

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted([*root.rglob("*.png"), *root.glob("*.csv")])}


def _pixel_hash(root: Path, subs: tuple[str, ...] = ("Image", "Label")) -> str:
    digest = hashlib.sha256()
    for sub in subs:
        for path in sorted((root / sub).iterdir()):
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            digest.update(f"{sub}/{path.name}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def test_simple_style_reproduces_the_earlier_demo_data(tmp_path):
    demo.generate_dataset(tmp_path / "d", patients=2, images_per_patient=2, size=(96, 48), seed=7,
                          progress=False, style="simple")
    assert _pixel_hash(tmp_path / "d") == SIMPLE_PIXELS_SHA256
    assert not (tmp_path / "d" / demo.DROPOUT_CSV).exists()
    reference = demo.generate_patient(demo.patient_rng(7, 2), (96, 48), 2, style="simple")
    np.testing.assert_array_equal(read_label(tmp_path / "d" / "Eyelid" / "P002_1.png"),
                                  reference["lid_masks"][0])


@pytest.mark.parametrize("style", STYLES)
def test_dataset_files_names_sizes_and_content(tmp_path, style):
    width, height = 96, 48
    names = demo.generate_dataset(tmp_path / "d", patients=2, images_per_patient=3,
                                  size=(width, height), seed=4, progress=False, style=style)
    expected = [f"P{p:03d}_{k}" for p in (1, 2) for k in (1, 2, 3)]
    assert names == expected
    for sub in ("Image", "Label", "Eyelid"):
        assert sorted(p.stem for p in (tmp_path / "d" / sub).iterdir()) == expected
    grades = realistic.GRADE_RANGES[demo.dataset_grade(4, 2)] if style == "realistic" else None
    reference = demo.generate_patient(demo.patient_rng(4, 2), (width, height), 3, style, grades)
    image = cv2.imread(str(tmp_path / "d" / "Image" / "P002_3.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(tmp_path / "d" / "Label" / "P002_3.png"), cv2.IMREAD_UNCHANGED)
    eyelid = cv2.imread(str(tmp_path / "d" / "Eyelid" / "P002_3.png"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (height, width)
    assert label.dtype == eyelid.dtype == np.uint8 and label.shape == eyelid.shape == (height, width)
    assert set(np.unique(label)) == set(np.unique(eyelid)) == {0, 255}
    np.testing.assert_array_equal(image, np.round(reference["images"][2] * 255).astype(np.uint8))
    np.testing.assert_array_equal(read_label(tmp_path / "d" / "Label" / "P002_3.png"),
                                  reference["masks"][2])
    np.testing.assert_array_equal(eyelid > 0, reference["lid_masks"][2] > 0)
    for name in expected:   # glands lie (almost) inside the eyelid
        glands = cv2.imread(str(tmp_path / "d" / "Label" / f"{name}.png"), cv2.IMREAD_UNCHANGED) > 0
        lid = cv2.imread(str(tmp_path / "d" / "Eyelid" / f"{name}.png"), cv2.IMREAD_UNCHANGED) > 0
        assert (glands & lid).sum() >= 0.98 * glands.sum()


def test_dropout_csv_rows_values_and_grades(tmp_path):
    names = demo.generate_dataset(tmp_path / "d", patients=5, images_per_patient=2, size=(96, 48),
                                  seed=2, progress=False)
    text = (tmp_path / "d" / demo.DROPOUT_CSV).read_text()
    assert text.splitlines()[0] == "name,dropout,meiboscore"
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["name"] for r in rows] == names
    for row in rows:
        value, grade = float(row["dropout"]), int(row["meiboscore"])
        assert 0.0 <= value <= 1.0
        assert grade == (0 if value < 0.05 else 1 if value < 1 / 3 else 2 if value <= 2 / 3 else 3)
    reference = demo.generate_patient(demo.patient_rng(2, 3), (96, 48), 2,
                                      dropout_range=realistic.GRADE_RANGES[demo.dataset_grade(2, 3)])
    assert float(rows[4]["dropout"]) == pytest.approx(reference["dropout"][0], abs=1e-6)


def test_dropout_range_fixes_the_levels(tmp_path):
    demo.generate_dataset(tmp_path / "d", patients=3, images_per_patient=2, size=(128, 64), seed=1,
                          progress=False, dropout_range=(0.5, 0.5))
    rows = list(csv.DictReader((tmp_path / "d" / demo.DROPOUT_CSV).read_text().splitlines()))
    assert all(abs(float(r["dropout"]) - 0.5) < 0.1 for r in rows)


@pytest.mark.parametrize("style", STYLES)
def test_dataset_files_are_byte_identical_for_a_seed(tmp_path, style):
    kwargs = dict(images_per_patient=2, size=(64, 32), progress=False, style=style)
    demo.generate_dataset(tmp_path / "a", patients=2, seed=7, **kwargs)
    demo.generate_dataset(tmp_path / "b", patients=2, seed=7, **kwargs)
    demo.generate_dataset(tmp_path / "c", patients=2, seed=8, **kwargs)
    demo.generate_dataset(tmp_path / "one", patients=1, seed=7, **kwargs)
    a, b, c, one = (_tree(tmp_path / n) for n in ("a", "b", "c", "one"))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.startswith("Image"))
    # a patient does not depend on how many patients are generated
    assert {k: v for k, v in one.items() if k.endswith(".png")} == \
        {k: v for k, v in a.items() if "P001" in k}
    if style == "realistic":
        first = a[demo.DROPOUT_CSV].decode().splitlines()[:3]
        assert one[demo.DROPOUT_CSV].decode().splitlines() == first


def test_existing_data_needs_overwrite_which_only_replaces_demo_files(tmp_path):
    kwargs = dict(images_per_patient=2, size=(64, 32), progress=False)
    out = tmp_path / "d"
    demo.generate_dataset(out, patients=3, seed=0, **kwargs)
    with pytest.raises(InputError, match="--overwrite"):
        demo.generate_dataset(out, patients=2, seed=0, **kwargs)
    demo.generate_dataset(out, patients=2, seed=1, overwrite=True, **kwargs)
    for sub in ("Image", "Label", "Eyelid"):
        assert sorted(p.stem for p in (out / sub).iterdir()) == ["P001_1", "P001_2", "P002_1", "P002_2"]
    demo.generate_dataset(out, patients=2, seed=1, overwrite=True, style="simple", **kwargs)
    assert not (out / demo.DROPOUT_CSV).exists()        # no stale table from the realistic set
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
    (["--style", "fancy"], "--style"),
    (["--dropout", "0.6", "0.2"], "--dropout"),
    (["--dropout", "-0.1", "0.2"], "--dropout"),
    (["--dropout", "0.2", "1.5"], "--dropout"),
    (["--style", "simple", "--dropout", "0.1", "0.2"], "--dropout"),
    (["--grade-mix", "odd"], "--grade-mix"),
    (["--style", "simple", "--grade-mix", "even"], "--grade-mix"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        run_cli(demo_command.main, [str(tmp_path / "d"), "--no-progress", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "d").exists()


def test_cli_writes_a_dataset_and_refuses_a_second_time(tmp_path, capsys):
    out = tmp_path / "d"
    argv = [str(out), "--patients", "2", "--images-per-patient", "2", "--size", "64", "32",
            "--seed", "3", "--no-progress"]
    run_cli(demo_command.main, argv)
    assert len(list((out / "Image").iterdir())) == len(list((out / "Eyelid").iterdir())) == 4
    assert (out / demo.DROPOUT_CSV).is_file()
    assert "make_folds" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        run_cli(demo_command.main, argv)
    assert exc.value.code == 2
    run_cli(demo_command.main, argv + ["--overwrite", "--style", "simple"])
    assert not (out / demo.DROPOUT_CSV).exists()


def test_module_help_and_bad_args_via_python_m(tmp_path):
    help_run = subprocess.run([sys.executable, "-m", "utils.make_demo_data", "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0
    for flag in ("--patients", "--images-per-patient", "--size", "--seed", "--style", "--dropout", "--grade-mix",
                 "--overwrite", "--no-progress", "DATA_DIR"):
        assert flag in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "utils.make_demo_data", str(tmp_path / "d"),
                          "--patients", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1

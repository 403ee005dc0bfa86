"""Tests of dataloaders/registration_data.py and dataloaders/segmentation_data.py.

The test dataset is built by hand: every patient has a random smooth pattern,
and image k of a patient is that pattern translated by a known integer shift
``s_k = (dy, dx)``, i.e. ``image_k(p) = pattern(p - s_k)``. The stand-in
pre-alignment :class:`ShiftPrealign` knows these shifts, so ``matrix(a, b)``
is the translation by ``s_a - s_b`` and ``warp(a, field(a, b))`` must equal
``a`` shifted by hand (and ``b`` wherever the shift stays inside the image).
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dataloaders.dataset as dataset_module
from dataloaders.dataset import DatasetFolder
from dataloaders.folds import load_fold
from dataloaders.registration_data import RegistrationPairSet, RegistrationTrainSet
from dataloaders.sampling import ImageCache
from dataloaders.segmentation_data import SegmentationEvalSet, SegmentationTrainSet
from networks.spatial_transformer import field_from_affine
from utils.errors import InputError

H, W = 64, 128
PAD = 10
SHIFTS = [(0, 0), (3, -5), (-4, 7), (6, 2)]  # (dy, dx) of image k; all pairwise differences non-zero
# patient -> (number of images, Atlas indices); P001..P005 train, P006 val, P007 test
TRAIN = {"P001": (4, [0]), "P002": (2, [0]), "P003": (3, [0, 1]), "P004": (3, []), "P005": (1, [0])}
VAL = {"P006": (3, None)}
TEST = {"P007": (4, None)}
ALL = {**TRAIN, **VAL, **TEST}


def names_of(patient: str) -> list[str]:
    return [f"{patient}_{k}" for k in range(ALL[patient][0])]


def atlas_of(patient: str) -> list[str]:
    count, atlas = ALL[patient]
    return names_of(patient) if atlas is None else [f"{patient}_{k}" for k in atlas]


def patient_of(name: str) -> str:
    return name.rsplit("_", 1)[0]


def shift_of(name: str) -> tuple[int, int]:
    return SHIFTS[int(name.rsplit("_", 1)[1])]


def build_dataset(root: Path) -> None:
    """Write Image/, Label/ (every image labelled) and train_dict1.json."""
    (root / "Image").mkdir(parents=True)
    (root / "Label").mkdir()
    rng = np.random.default_rng(0)
    for p_index, (patient, (count, _)) in enumerate(ALL.items()):
        noise = rng.random((H + 2 * PAD, W + 2 * PAD)).astype(np.float32)
        pattern = cv2.GaussianBlur(noise, (0, 0), 3)
        pattern = (pattern - pattern.min()) / (pattern.max() - pattern.min())
        pattern = np.round(20 + 215 * pattern).astype(np.uint8)
        for k in range(count):
            dy, dx = SHIFTS[k]
            image = pattern[PAD - dy:PAD - dy + H, PAD - dx:PAD - dx + W]
            cv2.imwrite(str(root / "Image" / f"{patient}_{k}.png"), image)
            cv2.imwrite(str(root / "Label" / f"{patient}_{k}.png"), np.where(image > 128, 255, 0).astype(np.uint8))

    def subjects(group: dict) -> list[dict]:
        out = []
        for patient in group:
            atlas = atlas_of(patient)
            out.append({"patient": patient, "Atlas": atlas,
                        "OtherImg": [n for n in names_of(patient) if n not in atlas]})
        return out

    fold = {"train": subjects(TRAIN), "val": subjects(VAL), "test": subjects(TEST)}
    (root / "train_dict1.json").write_text(json.dumps(fold))


class ShiftPrealign:
    """Stand-in ``Prealignment``: the known translations of the test images."""

    def __init__(self, size=(H, W), known: set[str] | None = None):
        self.size = size
        self.known = known

    def matrix(self, moving: str, fixed: str) -> np.ndarray:
        if self.known is not None and (moving not in self.known or fixed not in self.known):
            raise KeyError((moving, fixed))
        (my, mx), (fy, fx) = shift_of(moving), shift_of(fixed)
        return np.array([[1.0, 0.0, mx - fx], [0.0, 1.0, my - fy]])

    def field(self, moving: str, fixed: str) -> torch.Tensor:
        return field_from_affine(self.matrix(moving, fixed), self.size)


def shifted(array: np.ndarray, ty: int, tx: int) -> np.ndarray:
    """``out[y, x] = array[y + ty, x + tx]``, 0 outside: the naive translation."""
    h, w = array.shape
    padded = np.pad(array, ((h, h), (w, w)))
    return padded[h + ty:2 * h + ty, w + tx:2 * w + tx].copy()


def expected_on(folder: DatasetFolder, moving: str, fixed: str) -> np.ndarray:
    (my, mx), (fy, fx) = shift_of(moving), shift_of(fixed)
    return shifted(folder.load_image(moving), my - fy, mx - fx)


def valid_region(moving: str, fixed: str) -> np.ndarray:
    (my, mx), (fy, fx) = shift_of(moving), shift_of(fixed)
    return shifted(np.ones((H, W), np.uint8), my - fy, mx - fx).astype(bool)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    build_dataset(root)
    return root


@pytest.fixture(scope="module")
def folder(data_dir) -> DatasetFolder:
    return DatasetFolder(data_dir)


@pytest.fixture(scope="module")
def fold(data_dir, folder):
    return load_fold(data_dir, 1, folder)


# ---------------------------------------------------------------- helpers of the module


def test_image_cache_is_exact_and_reads_each_file_once(data_dir, folder, monkeypatch):
    calls = Counter()
    original = dataset_module.read_image

    def counting(path, size=None):
        calls[Path(path).stem] += 1
        return original(path, size)

    monkeypatch.setattr(dataset_module, "read_image", counting)
    cache = ImageCache(folder)
    for _ in range(3):
        for name in ("P001_0", "P001_1"):
            tensor = cache.tensor(name)
            assert tensor.shape == (1, H, W) and tensor.dtype == torch.float32
            assert torch.equal(tensor[0], torch.from_numpy(original(folder.image_paths[name])))
            tensor += 1.0  # callers may modify what they get; the cache must not change
    assert calls == {"P001_0": 1, "P001_1": 1}
    assert cache._images["P001_0"].dtype == np.uint8  # 8-bit file at its own size: stored compactly

    resized = DatasetFolder(data_dir, resize=(100, 50))  # bilinear resize: not on the 1/255 grid
    cache = ImageCache(resized)
    for _ in range(2):
        tensor = cache.tensor("P001_1")
        assert torch.equal(tensor[0], torch.from_numpy(resized.load_image("P001_1")))
        tensor += 1.0
    assert cache._images["P001_1"].dtype == np.float32


# ---------------------------------------------------------------- RegistrationTrainSet


def test_registration_train_items(folder, fold):
    ds = RegistrationTrainSet(folder, fold.train, ShiftPrealign(), iterations=12, seed=1)
    assert len(ds) == 12
    for epoch in range(3):
        ds.set_epoch(epoch)
        for item in ds:
            assert set(item) >= {"a", "b", "a_on_b", "b_on_a", "a_name", "b_name"}
            for key in ("a", "b", "a_on_b", "b_on_a"):
                assert item[key].shape == (1, H, W) and item[key].dtype == torch.float32
                assert 0.0 <= item[key].min() and item[key].max() <= 1.0
            a, b = item["a_name"], item["b_name"]
            assert patient_of(a) == patient_of(b) == item["patient"]
            assert torch.equal(item["a"][0], torch.from_numpy(folder.load_image(a)))
            assert torch.equal(item["b"][0], torch.from_numpy(folder.load_image(b)))
            # pre-aligned = the moving image translated by the known shift
            np.testing.assert_allclose(item["a_on_b"][0].numpy(), expected_on(folder, a, b), atol=1e-4)
            np.testing.assert_allclose(item["b_on_a"][0].numpy(), expected_on(folder, b, a), atol=1e-4)
            # ... which is the fixed image wherever it stays inside the frame
            inside = valid_region(a, b)
            np.testing.assert_allclose(item["a_on_b"][0].numpy()[inside], item["b"][0].numpy()[inside], atol=1e-4)
    with pytest.raises(IndexError):
        ds[12]
    assert len(list(ds)) == 12  # iteration by index stops at len


def test_registration_train_draw_structure(folder, fold):
    ds = RegistrationTrainSet(folder, fold.train, ShiftPrealign(), iterations=200, seed=5)
    draws = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        draws.extend(ds.draw(i) for i in range(len(ds)))
    assert {d["patient"] for d in draws} == {"P001", "P002", "P003", "P004"}  # P005 has one image
    assert {d["pairing"] for d in draws} == {0, 1, 2}
    seen_pairs = Counter()
    for d in draws:
        patient = d["patient"]
        images = names_of(patient)
        assert {d["L"], d["U1"], d["U2"], d["a"], d["b"]} <= set(images)
        assert d["L"] in (atlas_of(patient) or images)
        assert d["L"] not in (d["U1"], d["U2"])
        assert (d["U1"] == d["U2"]) == (len(images) == 2)
        assert (d["a"], d["b"]) == [(d["L"], d["U1"]), (d["L"], d["U2"]), (d["U2"], d["U1"])][d["pairing"]]
        seen_pairs[(d["a"], d["b"])] += 1
    # two images: U1 = U2 = the non-Atlas image
    assert {(d["U1"], d["U2"]) for d in draws if d["patient"] == "P002"} == {("P002_1", "P002_1")}
    # the patient without Atlas uses each of its images as L
    assert {d["L"] for d in draws if d["patient"] == "P004"} == set(names_of("P004"))
    # P003 has two Atlas images; both serve as L
    assert {d["L"] for d in draws if d["patient"] == "P003"} == {"P003_0", "P003_1"}
    # four images, one Atlas: L = P001_0 and every ordered pair of the form L->U or U->U' occurs
    p001 = {k for k in seen_pairs if k[0].startswith("P001")}
    others = ["P001_1", "P001_2", "P001_3"]
    assert p001 == {("P001_0", u) for u in others} | {(u, v) for u in others for v in others if u != v}


def test_registration_train_determinism_and_epochs(folder, fold):
    make = lambda seed: RegistrationTrainSet(folder, fold.train, ShiftPrealign(), iterations=30, seed=seed)
    names = lambda ds: [(d["a"], d["b"]) for d in map(ds.draw, range(len(ds)))]
    first, second, other = make(7), make(7), make(8)
    assert names(first) == names(second)
    assert names(first) != names(other)
    for a, b in zip(first, second):
        assert all(torch.equal(a[k], b[k]) for k in ("a", "b", "a_on_b", "b_on_a"))
    epoch0 = names(first)
    first.set_epoch(1)
    assert first.epoch == 1 and names(first) != epoch0
    first.set_epoch(0)
    assert names(first) == epoch0


def _batches(ds, workers: int, epochs: int, batch_size: int = 2) -> list:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=workers > 0)
    out = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        out.append(list(loader))
    return out


def _same_batches(x: list, y: list) -> None:
    assert len(x) == len(y)
    for bx, by in zip(x, y):
        assert bx.keys() == by.keys()
        for key in bx:
            if torch.is_tensor(bx[key]):
                assert torch.equal(bx[key], by[key]), key
            else:
                assert bx[key] == by[key], key


def test_same_items_with_and_without_workers(folder, fold):
    """num_workers 0 vs 2 (persistent): same items, and set_epoch reaches the workers."""
    for make in (lambda: RegistrationTrainSet(folder, fold.train, ShiftPrealign(), iterations=6, seed=3),
                 lambda: SegmentationTrainSet(folder, fold.train, ShiftPrealign(), iterations=6, seed=3)):
        serial, parallel = _batches(make(), 0, 2), _batches(make(), 2, 2)
        for epoch in range(2):
            _same_batches(serial[epoch], parallel[epoch])
        name_key = "a_name" if "a_name" in serial[0][0] else "atlas_name"
        names = lambda batches: [n for b in batches for n in b[name_key]]
        assert names(parallel[0]) != names(parallel[1])  # epoch 1 really drew anew in the workers


# ---------------------------------------------------------------- RegistrationPairSet


def test_registration_pairs(folder, fold):
    subjects = fold.val + fold.test
    pairs = RegistrationPairSet(folder, subjects, ShiftPrealign())
    per_patient = Counter()
    seen = set()
    for item in pairs:
        m, f = item["moving_name"], item["fixed_name"]
        assert m != f and patient_of(m) == patient_of(f) == item["patient"]
        assert (m, f) not in seen
        seen.add((m, f))
        per_patient[item["patient"]] += 1
        for key in ("moving", "fixed", "moving_aligned"):
            assert item[key].shape == (1, H, W) and item[key].dtype == torch.float32
            assert 0.0 <= item[key].min() and item[key].max() <= 1.0
        for key in ("moving_label_aligned", "fixed_label"):
            assert item[key].shape == (2, H, W) and item[key].dtype == torch.float32
            assert set(item[key].unique().tolist()) <= {0.0, 1.0}
            assert torch.all(item[key].sum(0) == 1)  # a valid one-hot everywhere, also outside the frame
        assert item["affine_field"].shape == (2, H, W) and item["affine_field"].dtype == torch.float32
        (my, mx), (fy, fx) = shift_of(m), shift_of(f)
        assert torch.allclose(item["affine_field"][0], torch.full((H, W), float(my - fy)))
        assert torch.allclose(item["affine_field"][1], torch.full((H, W), float(mx - fx)))
        np.testing.assert_allclose(item["moving_aligned"][0].numpy(), expected_on(folder, m, f), atol=1e-4)
        gland = shifted(folder.load_label(m), my - fy, mx - fx)  # outside -> background
        assert torch.equal(item["moving_label_aligned"][1], torch.from_numpy(gland).float())
        assert torch.equal(item["fixed_label"][1], torch.from_numpy(folder.load_label(f)).float())
    assert per_patient == {"P006": 3 * 2, "P007": 4 * 3}
    assert len(pairs) == len(seen) == 18


class FractionalShift(ShiftPrealign):
    """Translation by (ty, tx) = (-0.3, 0.6) between any two images."""

    def matrix(self, moving: str, fixed: str) -> np.ndarray:
        return np.array([[1.0, 0.0, 0.6], [0.0, 1.0, -0.3]])


def test_registration_pairs_label_warp_is_nearest(folder, fold):
    """Sub-pixel shift: nearest sampling of p + (-0.3, 0.6) reads pixel p + (0, 1)."""
    pairs = RegistrationPairSet(folder, fold.val, FractionalShift())
    item = pairs[0]
    expected = shifted(folder.load_label(item["moving_name"]), 0, 1)
    assert torch.equal(item["moving_label_aligned"][1], torch.from_numpy(expected).float())
    assert torch.all(item["moving_label_aligned"].sum(0) == 1)
    # the image is bilinear: not a copy of any integer shift
    image = folder.load_image(item["moving_name"])
    assert not np.allclose(item["moving_aligned"][0].numpy(), shifted(image, 0, 1), atol=1e-3)


def test_registration_pairs_only_labelled_images(data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / "Label" / "P001_2.png").unlink()
    (root / "Label" / "P001_3.png").unlink()
    folder = DatasetFolder(root)
    fold = load_fold(root, 1, folder)
    pairs = RegistrationPairSet(folder, [s for s in fold.train if s.patient == "P001"], ShiftPrealign())
    assert sorted((i["moving_name"], i["fixed_name"]) for i in pairs) == [("P001_0", "P001_1"),
                                                                            ("P001_1", "P001_0")]


# ---------------------------------------------------------------- SegmentationTrainSet


@pytest.mark.parametrize("registration_inputs", [False, True])
def test_segmentation_train_items(folder, fold, registration_inputs):
    ds = SegmentationTrainSet(folder, fold.train, ShiftPrealign(), iterations=10, seed=2,
                              registration_inputs=registration_inputs)
    image_keys = ("x_l", "u1", "u2", "u_neg") + (("u1_on_l", "x_l_on_u2") if registration_inputs else ())
    for epoch in range(3):
        ds.set_epoch(epoch)
        for item in ds:
            assert ("field_l_u2" in item) == ("u1_on_l" in item) == ("x_l_on_u2" in item) == registration_inputs
            for key in image_keys:
                assert item[key].shape == (1, H, W) and item[key].dtype == torch.float32, key
                assert 0.0 <= item[key].min() and item[key].max() <= 1.0
            assert item["y_l"].shape == (2, H, W) and item["y_l"].dtype == torch.float32
            assert torch.all(item["y_l"].sum(0) == 1)
            x, u1, u2, neg = item["atlas_name"], item["u1_name"], item["u2_name"], item["neg_name"]
            assert x in atlas_of(item["patient"]) and patient_of(x) == item["patient"]
            assert patient_of(u1) == patient_of(u2) == item["patient"] and x not in (u1, u2)
            assert patient_of(neg) != item["patient"]
            for key, name in (("x_l", x), ("u1", u1), ("u2", u2), ("u_neg", neg)):
                assert torch.equal(item[key][0], torch.from_numpy(folder.load_image(name))), key
            assert torch.equal(item["y_l"][1], torch.from_numpy(folder.load_label(x)).float())
            if not registration_inputs:
                continue
            assert item["field_l_u2"].shape == (2, H, W) and item["field_l_u2"].dtype == torch.float32
            np.testing.assert_allclose(item["u1_on_l"][0].numpy(), expected_on(folder, u1, x), atol=1e-4)
            np.testing.assert_allclose(item["x_l_on_u2"][0].numpy(), expected_on(folder, x, u2), atol=1e-4)
            (xy, xx), (uy, ux) = shift_of(x), shift_of(u2)
            assert torch.allclose(item["field_l_u2"][0], torch.full((H, W), float(xy - uy)))
            assert torch.allclose(item["field_l_u2"][1], torch.full((H, W), float(xx - ux)))


def test_segmentation_train_draw_structure(folder, fold):
    ds = SegmentationTrainSet(folder, fold.train, ShiftPrealign(), iterations=300, seed=4)
    draws = [ds.draw(i) for i in range(len(ds))]
    # positives: patients with an Atlas image and another image; P004 (no Atlas), P005 (one image) never
    assert {d["patient"] for d in draws} == {"P001", "P002", "P003"}
    # negatives: any other training patient, any of its images
    assert {patient_of(d["neg_name"]) for d in draws} == set(TRAIN)
    assert {d["neg_name"] for d in draws} == {n for p in TRAIN for n in names_of(p)}
    for d in draws:
        others = [n for n in names_of(d["patient"]) if n != d["atlas_name"]]
        assert (d["u1_name"] == d["u2_name"]) == (len(others) == 1)
    assert {(d["u1_name"], d["u2_name"]) for d in draws if d["patient"] == "P002"} == {("P002_1", "P002_1")}
    # P003 has two Atlas images: each serves as x_l, and the other one as u1/u2
    p003 = [d for d in draws if d["patient"] == "P003"]
    assert {d["atlas_name"] for d in p003} == {"P003_0", "P003_1"}
    assert any("P003_1" in (d["u1_name"], d["u2_name"]) for d in p003 if d["atlas_name"] == "P003_0")
    # determinism and epochs
    again = SegmentationTrainSet(folder, fold.train, ShiftPrealign(), iterations=300, seed=4)
    assert [again.draw(i) for i in range(len(again))] == draws
    again.set_epoch(1)
    assert [again.draw(i) for i in range(len(again))] != draws


def test_segmentation_train_pool_views(folder, fold):
    """The baselines' extra views: two unlabelled-pool images and an Atlas image of another patient,
    drawn after the SS-MGS fields, which stay what they are without them."""
    plain = SegmentationTrainSet(folder, fold.train, ShiftPrealign(), iterations=200, seed=5)
    pooled = SegmentationTrainSet(folder, fold.train, ShiftPrealign(), iterations=200, seed=5, pool_views=True)
    atlas = {n for s in fold.train for n in s.atlas}
    pool = {n for s in fold.train for n in s.others}
    draws = [pooled.draw(i) for i in range(len(pooled))]
    for i, d in enumerate(draws):
        assert {k: d[k] for k in plain.draw(i)} == plain.draw(i)
        assert d["u_a_name"] in pool and d["u_b_name"] in pool
        assert d["atlas2_name"] in atlas and patient_of(d["atlas2_name"]) != d["patient"]
    assert {d["u_a_name"] for d in draws} == pool  # every unlabelled image, unlabelled patients included
    item = pooled[0]
    assert item["u_a"].shape == item["x_l2"].shape == (1, H, W) and item["y_l2"].shape == (2, H, W)
    assert torch.equal(item["y_l2"][1], torch.from_numpy(folder.load_label(item["atlas2_name"])).float())
    assert "u_a" not in plain[0]


def test_segmentation_train_errors(folder, fold):
    no_atlas = [s for s in fold.train if not s.atlas]
    with pytest.raises(InputError, match="Atlas"):
        SegmentationTrainSet(folder, no_atlas + [s for s in fold.train if s.patient == "P005"],
                             ShiftPrealign(), 5, 0)
    with pytest.raises(InputError, match="different patient"):
        SegmentationTrainSet(folder, [s for s in fold.train if s.patient == "P001"], ShiftPrealign(), 5, 0)
    with pytest.raises(InputError, match="iterations"):
        SegmentationTrainSet(folder, fold.train, ShiftPrealign(), 0, 0)
    with pytest.raises(InputError, match="prealign.json"):
        SegmentationTrainSet(folder, fold.train, ShiftPrealign(size=(H, W + 2)), 5, 0)
    known = set(names_of("P001")) | set(names_of("P002"))  # P003's pairs missing
    with pytest.raises(InputError, match="P003"):
        SegmentationTrainSet(folder, fold.train, ShiftPrealign(known=known), 5, 0)


def test_registration_train_errors(folder, fold):
    with pytest.raises(InputError, match="two or more images"):
        RegistrationTrainSet(folder, [s for s in fold.train if s.patient == "P005"], ShiftPrealign(), 5, 0)
    with pytest.raises(InputError, match="iterations"):
        RegistrationTrainSet(folder, fold.train, ShiftPrealign(), 0, 0)
    with pytest.raises(InputError, match="prealign.json"):
        RegistrationTrainSet(folder, fold.train, ShiftPrealign(size=(H + 1, W)), 5, 0)
    with pytest.raises(InputError, match="prealign.json"):
        RegistrationPairSet(folder, fold.val, ShiftPrealign(known=set(names_of("P007"))))


# ---------------------------------------------------------------- label isolation


def test_training_sets_read_only_atlas_labels(data_dir, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    folder = DatasetFolder(root)
    fold = load_fold(root, 1, folder)
    atlas = {n for s in fold.train for n in s.atlas}
    for path in (root / "Label").iterdir():
        if path.stem not in atlas:
            path.unlink()  # any attempt to open one now fails loudly
    opened = []
    original_raw, original_label = dataset_module._read_raw, dataset_module.read_label

    def recording_raw(path):
        opened.append(Path(path))
        return original_raw(path)

    def recording_label(path, size=None):
        opened.append(Path(path))
        return original_label(path, size)

    monkeypatch.setattr(dataset_module, "_read_raw", recording_raw)
    monkeypatch.setattr(dataset_module, "read_label", recording_label)

    registration = RegistrationTrainSet(folder, fold.train, ShiftPrealign(), iterations=40, seed=0).preload()
    for epoch in range(3):
        registration.set_epoch(epoch)
        for _ in registration:
            pass
    assert opened and not [p for p in opened if p.parent.name == "Label"]  # no label at all

    segmentation = SegmentationTrainSet(folder, fold.train, ShiftPrealign(), iterations=40, seed=0).preload()
    seen = set()
    for epoch in range(3):
        segmentation.set_epoch(epoch)
        for item in segmentation:
            seen.update((item["u1_name"], item["u2_name"], item["neg_name"]))
    labels = {p.stem for p in opened if p.parent.name == "Label"}
    assert labels and labels <= atlas
    assert seen - atlas  # unlabelled images were used, yet their labels never opened


# ---------------------------------------------------------------- SegmentationEvalSet


def test_segmentation_eval_set(folder, fold):
    ds = SegmentationEvalSet(folder, fold.val + fold.test).preload()
    names = []
    for item in ds:
        assert item["image"].shape == (1, H, W) and item["image"].dtype == torch.float32
        assert item["label"].shape == (2, H, W) and item["label"].dtype == torch.float32
        assert torch.all(item["label"].sum(0) == 1)
        assert patient_of(item["name"]) == item["patient"]
        assert torch.equal(item["image"][0], torch.from_numpy(folder.load_image(item["name"])))
        assert torch.equal(item["label"][1], torch.from_numpy(folder.load_label(item["name"])).float())
        names.append(item["name"])
    assert sorted(names) == sorted(names_of("P006") + names_of("P007"))
    assert len(ds) == 7


# ---------------------------------------------------------------- with the real pre-alignment


def test_with_real_prealignment(data_dir, tmp_path):
    """utils.prealign recovers the known translations, and the loaders use its fields."""
    from dataloaders.prealignment.cache import ensure_prealignment

    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    folder = DatasetFolder(root)
    fold = load_fold(root, 1, folder)
    subjects = [s for s in fold.train if s.patient in ("P001", "P002")]
    prealign = ensure_prealignment(folder, [s.images for s in subjects], workers=1, progress=False)
    ds = RegistrationTrainSet(folder, subjects, prealign, iterations=8, seed=0)
    for item in ds:
        a, b = item["a_name"], item["b_name"]
        inside = valid_region(a, b)
        inside[:2] = inside[-2:] = False  # skip a thin border: sub-pixel estimates blur it
        inside[:, :2] = inside[:, -2:] = False
        error = np.abs(item["a_on_b"][0].numpy() - item["b"][0].numpy())[inside]
        assert error.mean() < 0.01, (a, b)
    pairs = RegistrationPairSet(folder, subjects, prealign)
    assert len(pairs) == 4 * 3 + 2 * 1
    item = pairs[5]
    assert torch.equal(item["affine_field"], prealign.field(item["moving_name"], item["fixed_name"]))

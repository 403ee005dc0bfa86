"""Bad dataset folders and fold files: one-line InputErrors from the library and exit 2 from the CLI.

Each bad input is checked twice: the dataloaders.dataset call raises an InputError
whose message names the file or entry, and ``python -m utils.make_folds``
(making folds, or ``--check`` for fold-file problems) exits 2 with that one line.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataloaders.dataset import DatasetFolder, binarise_label, read_image, read_label

from dataloaders.folds import load_fold
from utils.errors import InputError, run_cli
from dataloaders.splits import make_folds
from utils.make_folds import main

H, W = 32, 48
REPO = Path(__file__).resolve().parents[1]


def write_dataset(root: Path, patients: int = 5, images: int = 2, seed: int = 0) -> Path:
    """Valid tiny dataset: ``P<i>_<k>.png`` images and 0/255 masks, all ``W x H``."""
    rng = np.random.default_rng(seed)
    (root / "Image").mkdir(parents=True, exist_ok=True)
    (root / "Label").mkdir(parents=True, exist_ok=True)
    for p in range(patients):
        for k in range(images):
            cv2.imwrite(str(root / "Image" / f"P{p}_{k}.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
            cv2.imwrite(str(root / "Label" / f"P{p}_{k}.png"), (rng.random((H, W)) > 0.5).astype(np.uint8) * 255)
    return root


def cli_error(capfd, *args: str) -> str:
    """Run the make_folds CLI in-process; assert exit 2 and one error line (fd level) and return it."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in args])
    assert exc.value.code == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "Traceback" not in captured.err
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def folded(data) -> Path:
    make_folds(data)
    return data


def edit_fold(root: Path, k: int, change) -> None:
    path = root / f"train_dict{k}.json"
    fold = json.loads(path.read_text())
    change(fold)
    path.write_text(json.dumps(fold))


# ----------------------------------------------------------------------------- folder layout

@pytest.mark.parametrize("sub", ["Image", "Label"])
def test_missing_image_or_label_folder(data, capfd, sub):
    for f in (data / sub).iterdir():
        f.unlink()
    (data / sub).rmdir()
    with pytest.raises(InputError, match=rf"{sub} is missing"):
        DatasetFolder(data)
    assert f"{sub} is missing" in cli_error(capfd, data)


def test_missing_dataset_folder_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "utils.make_folds", str(tmp_path / "nowhere")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: dataset folder {tmp_path / 'nowhere'} does not exist"]


def test_duplicate_names(data, capfd):
    cv2.imwrite(str(data / "Image" / "P0_0.jpg"), np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match=r"duplicate name 'P0_0'.*P0_0\.jpg and P0_0\.png"):
        DatasetFolder(data)
    assert "duplicate name 'P0_0'" in cli_error(capfd, data)


# ----------------------------------------------------------------------------- image files

@pytest.mark.parametrize("content, expected", [
    (b"", "file is empty"),
    (b"garbage bytes, not an image" * 3, "cannot be decoded as an image"),
    (b"\x89PNG\r\n\x1a\n" + b"x" * 50, "cannot be decoded as an image"),  # PNG signature, then junk
    (b"BM" + b"x" * 60, "cannot be decoded as an image"),                  # BMP magic, then junk
], ids=["empty", "garbage", "png-junk", "bmp-junk"])
def test_unreadable_or_empty_image(data, capfd, content, expected):
    bad = data / "Image" / "P2_1.png"
    bad.write_bytes(content)
    with pytest.raises(InputError, match=rf"P2_1\.png: {expected}"):
        read_image(bad)
    with pytest.raises(InputError, match=rf"P2_1\.png: {expected}"):
        DatasetFolder(data)
    line = cli_error(capfd, data)  # also: no OpenCV decoder chatter on stderr
    assert "P2_1.png" in line and expected in line


def test_rgb_image_becomes_gray_in_unit_range(tmp_path):
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[:, : W // 2] = (255, 0, 0)     # pure blue:  0.114 * 255 = 29.07 -> 29
    bgr[:, W // 2:] = (0, 0, 255)      # pure red:   0.299 * 255 = 76.2  -> 76
    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), bgr)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (H, W)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert np.allclose(image[:, 0], 29 / 255) and np.allclose(image[:, -1], 76 / 255)
    assert read_image(path, size=(24, 16)).shape == (16, 24)


def test_images_of_different_sizes(data, capfd):
    odd = [("P1_0", (40, 30)), ("P3_1", (20, 10))]  # (W, H)
    for name, (w, h) in odd:
        cv2.imwrite(str(data / "Image" / f"{name}.png"), np.full((h, w), 100, np.uint8))
        cv2.imwrite(str(data / "Label" / f"{name}.png"), np.zeros((h, w), np.uint8))
    with pytest.raises(InputError) as exc:
        DatasetFolder(data)
    message = str(exc.value)
    assert "48x32" in message and "P1_0.png (40x30)" in message and "P3_1.png (20x10)" in message
    assert "P0_0" not in message and "--resize" in message
    assert "P1_0.png (40x30)" in cli_error(capfd, data)
    # with a processing size, everything is read at that size
    folder = DatasetFolder(data, resize=(48, 32))
    assert folder.size == (32, 48)
    assert folder.load_image("P1_0").shape == (32, 48) and folder.load_label("P3_1").shape == (32, 48)
    main([str(data), "--resize", "48", "32"])
    assert load_fold(data, 1, folder).train


# ----------------------------------------------------------------------------- label files

def test_label_size_differs_from_image(data, capfd):
    bad = data / "Label" / "P4_0.png"
    cv2.imwrite(str(bad), np.zeros((30, 40), np.uint8))
    with pytest.raises(InputError, match=r"P4_0\.png: mask is 40x30 but its image P4_0\.png is 48x32"):
        DatasetFolder(data).load_label("P4_0")
    assert "P4_0.png: mask is 40x30" in cli_error(capfd, data)


def test_multiclass_label_is_rejected(data, capfd):
    bad = data / "Label" / "P0_1.png"
    cv2.imwrite(str(bad), (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8))  # values 0, 1, 2, 3
    with pytest.raises(InputError, match=r"P0_1\.png: label values \(0, 1, 2, 3\) are neither"):
        read_label(bad)
    with pytest.raises(InputError, match=r"label values \(0, 1, 2, 3\)"):
        binarise_label(np.array([[0, 1], [2, 3]], np.uint8))
    line = cli_error(capfd, data)
    assert "P0_1.png" in line and "0, 1, 2, 3" in line


def test_mostly_grey_label_is_rejected():
    grey = np.full((8, 8), 128, np.uint8)  # intermediate values dominate: no clear meaning
    grey[0, 0], grey[0, 1] = 0, 255
    with pytest.raises(InputError, match="neither 0/1 nor"):
        binarise_label(grey, "grey.png")


@pytest.mark.parametrize("values, expected", [
    ([0, 1, 1, 0], [0, 1, 1, 0]),                        # 0/1: foreground > 0
    ([0, 255, 255, 0], [0, 1, 1, 0]),                    # 0/255
    ([0, 100, 127, 128, 200] + [255] * 6, [0, 0, 0, 1, 1] + [1] * 6),  # anti-aliased: > 127
])
def test_masks_binarise(tmp_path, values, expected):
    array = np.array([values], np.uint8)
    assert binarise_label(array).tolist() == [expected]
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), np.repeat(array, 3, axis=0))
    mask = read_label(path)
    assert mask.dtype == np.uint8 and mask.tolist() == [expected] * 3


# ----------------------------------------------------------------------------- fold files

def test_fold_entry_with_missing_image(folded, capfd):
    edit_fold(folded, 2, lambda f: f["test"][0]["OtherImg"].append("ghost_7"))
    with pytest.raises(InputError, match=r"train_dict2\.json: test subject 0 lists image 'ghost_7'"):
        load_fold(folded, 2)
    assert "image 'ghost_7'" in cli_error(capfd, folded, "--check")


def test_fold_file_not_json(folded, capfd):
    (folded / "train_dict3.json").write_text('{"train": [')
    with pytest.raises(InputError, match=r"train_dict3\.json is not valid JSON"):
        load_fold(folded, 3)
    assert "train_dict3.json is not valid JSON" in cli_error(capfd, folded, "--check")


def test_fold_file_without_splits(folded, capfd):
    edit_fold(folded, 4, lambda f: f.pop("val"))
    with pytest.raises(InputError, match=r"train_dict4\.json must be an object with 'train', 'val' and 'test'"):
        load_fold(folded, 4)
    assert "train_dict4.json must be an object" in cli_error(capfd, folded, "--check")


def test_missing_fold_file(folded, capfd):
    (folded / "train_dict5.json").unlink()
    with pytest.raises(InputError, match=r"train_dict5\.json is missing.*make_folds"):
        load_fold(folded, 5)
    assert "train_dict5.json is missing" in cli_error(capfd, folded, "--check")


def test_patient_in_two_sets(folded, capfd):
    def leak(fold):  # train subject 0 claims to be the test patient (its images differ)
        leak.patient = fold["test"][0]["patient"]
        fold["train"][0]["patient"] = leak.patient
    edit_fold(folded, 1, leak)
    with pytest.raises(InputError, match=rf"test subject 0: patient '{leak.patient}' appears twice "
                                         rf"\(train subject 0 and test\)"):
        load_fold(folded, 1)
    assert f"patient '{leak.patient}' appears twice" in cli_error(capfd, folded, "--check")


def test_image_in_two_sets(folded, capfd):
    def dup(fold):
        dup.name = fold["test"][0]["OtherImg"][0]
        fold["val"][0]["OtherImg"].append(dup.name)
    edit_fold(folded, 1, dup)
    with pytest.raises(InputError, match=rf"image '{dup.name}' appears in two sets"):
        load_fold(folded, 1)
    assert f"image '{dup.name}' appears in two sets" in cli_error(capfd, folded, "--check")


def test_check_by_patient_id_catches_split_patient_without_patient_keys(folded, capfd):
    def split_patient(fold):
        for s in fold["train"] + fold["val"] + fold["test"]:
            s.pop("patient")
        moved = fold["test"][0]["OtherImg"].pop()
        fold["val"].append({"Atlas": [], "OtherImg": [moved]})
    edit_fold(folded, 1, split_patient)
    load_fold(folded, 1)  # structurally fine
    line = cli_error(capfd, folded, "--check", "--patient-regex", r"^(.+)_[^_]+$")
    assert "train_dict1.json: patient" in line and "in two sets" in line

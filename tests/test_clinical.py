"""Eyelid segmenter, clinical measures in predict and in the test report, grades agreement."""
from __future__ import annotations

import csv
import importlib
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloaders.dataset import DatasetFolder

from dataloaders.folds import load_fold
from dataloaders.grades import read_grades
from utils import gland_measures
from utils.clinical.report import grade_agreement, report_lines
from utils.errors import InputError
from utils.synthetic.generate import generate_dataset
from dataloaders.splits import make_folds
from utils.stages.segmentation_methods import build_parser, build_stage, check_args
from utils.training.checkpoints import load_checkpoint
from utils.training.fold_runner import train_folds

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_eyelids(data: Path) -> None:
    """Eyelid masks for every image: the rows that hold glands, a little widened (a stand-in
    for a drawn tarsal plate), all columns but a margin."""
    (data / "Eyelid").mkdir(exist_ok=True)
    for label in sorted((data / "Label").glob("*.png")):
        mask = cv2.imread(str(label), cv2.IMREAD_GRAYSCALE) > 0
        rows = np.flatnonzero(mask.any(axis=1))
        eyelid = np.zeros_like(mask, dtype=np.uint8)
        if rows.size:
            eyelid[max(rows[0] - 2, 0):rows[-1] + 3, 2:-2] = 255
        cv2.imwrite(str(data / "Eyelid" / label.name), eyelid)


def train(data: Path, runs: Path, exp: str, *extra: str) -> None:
    args = build_parser().parse_args(["--data-dir", str(data), "--runs-dir", str(runs), "--exp", exp,
                                      "--epochs", "1", "--iters", "2", "--workers", "0", "--no-progress",
                                      "--device", "cpu", *extra])
    check_args(args)
    train_folds(args, CPU, build_stage)


def script(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "5fold_Test_Reg_or_Seg.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == expect, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("clinical")
    data, runs = base / "data", base / "runs"
    generate_dataset(data, patients=6, images_per_patient=3, size=(96, 48), seed=3, progress=False)
    write_eyelids(data)
    make_folds(data)
    train(data, runs, "SUP", "--method", "supervised")
    train(data, runs, "EYE", "--target", "eyelid")
    return data, runs


def test_eyelid_stage_trains_on_every_training_eyelid_and_records_its_target(trained, monkeypatch):
    data, runs = trained
    state = load_checkpoint(runs / "EYE" / "fold1" / "last.pth")
    assert state["args"]["target"] == "eyelid" and state["args"]["method"] == "supervised"
    folder = DatasetFolder(data)
    fold = load_fold(data, 1, folder)
    args = build_parser().parse_args(["--data-dir", str(data), "--target", "eyelid"])
    check_args(args)
    from dataloaders.fold_data import open_fold
    stage = build_stage(args, 1, open_fold(data, 1, progress=False), CPU)
    training = {n for s in fold.train for n in s.images}
    assert {name for _, name in stage.train_set.items} == training  # unlabelled images' eyelids too
    item = stage.train_set[0]
    assert torch.equal(item["y_l"][1], torch.from_numpy(folder.load_eyelid(item["atlas_name"])).float())
    with pytest.raises(InputError, match="--target eyelid trains the supervised segmenter only"):
        check_args(build_parser().parse_args(["--data-dir", str(data), "--target", "eyelid", "--method", "cps"]))


def test_test_script_scores_the_eyelid_model_on_eyelid_masks(trained):
    data, runs = trained
    script("--mode", "seg", "--data-dir", str(data), "--fold", "1", "--runs-dir", str(runs), "--exp", "EYE",
           "--device", "cpu", "--no-progress")
    rows = read_csv(runs / "EYE" / "test" / "per_image.csv")
    assert rows and all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert not (runs / "EYE" / "test" / "measures.csv").exists()  # gland measures belong to gland models


def test_seg_report_compares_measures_and_grades(trained, tmp_path):
    data, runs = trained
    fold = load_fold(data, 1, DatasetFolder(data))
    names = sorted(n for s in fold.test for n in s.images)
    grades = tmp_path / "grades.csv"
    grades.write_text("\ufeffname,grade\n" + "".join(f"{n}.png,{i % 4}\n" for i, n in enumerate(names)))
    result = script("--mode", "seg", "--data-dir", str(data), "--fold", "1", "--runs-dir", str(runs), "--exp", "SUP",
                    "--device", "cpu", "--no-progress", "--grades", str(grades))
    measures = read_csv(runs / "SUP" / "test" / "measures.csv")
    assert sorted(r["name"] for r in measures) == names
    assert all(math.isfinite(float(r["dropout_error"])) for r in measures)
    summary = read_csv(runs / "SUP" / "test" / "clinical_summary.csv")[0]
    assert int(summary["n_images"]) == len(names) and int(summary["grades_n"]) == len(names)
    assert int(summary["grades_true_n"]) == len(names) and summary["grades_score"] == "meiboscore"
    assert "quadratic kappa" in result.stdout and "clinicians' grades" in result.stdout
    assert "from true masks vs clinicians' grades" in result.stdout
    for picture in ("bland_altman.png", "meiboscore_confusion.png", "meiboscore_vs_grades.png"):
        image = cv2.imread(str(runs / "SUP" / "test" / picture))
        assert image is not None and image.shape[0] > 100 and image.std() > 5, picture


def without_eyelids(data: Path, copy: Path) -> Path:
    """The data folder without Eyelid/: Image/, Label/ and the fold files linked."""
    copy.mkdir()
    for entry in data.iterdir():
        if entry.name != "Eyelid":
            (copy / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return copy


def test_seg_report_without_eyelid_masks_reports_the_gland_count_and_says_why(trained, tmp_path):
    data, runs = trained
    plain = without_eyelids(data, tmp_path / "plain")
    result = script("--mode", "seg", "--data-dir", str(plain), "--fold", "1", "--runs-dir", str(runs),
                    "--exp", "SUP", "--device", "cpu", "--no-progress")
    line = next(l for l in result.stdout.splitlines() if "measures on predicted vs true masks" in l)
    assert "gland count MAE" in line and "need eyelid masks" in line and "--eyelid-exp" in line
    assert "nan" not in line and "kappa" not in line
    summary = read_csv(runs / "SUP" / "test" / "clinical_summary.csv")[0]
    assert int(summary["n_meiboscore"]) == 0
    assert (runs / "SUP" / "test" / "bland_altman.png").is_file()
    assert not (runs / "SUP" / "test" / "meiboscore_confusion.png").exists()     # no stale picture of a rerun
    # the eyelid model of the same fold supplies the eyelid the data folder lacks
    result = script("--mode", "seg", "--data-dir", str(plain), "--fold", "1", "--runs-dir", str(runs),
                    "--exp", "SUP", "--eyelid-exp", "EYE", "--device", "cpu", "--no-progress")
    summary = read_csv(runs / "SUP" / "test" / "clinical_summary.csv")[0]
    assert int(summary["n_meiboscore"]) == int(summary["n_images"]) > 0
    assert "need eyelid masks" not in result.stdout


def test_predict_writes_measures_and_needs_an_eyelid_model_for_dropout(trained, tmp_path):
    data, runs = trained
    common = ["--mode", "predict", "--exp", "SUP", "--fold", "1", "--runs-dir", str(runs), "--device", "cpu",
              "--input", str(data / "Image"), "--no-progress"]
    script(*common, "--output", str(tmp_path / "with"), "--eyelid-exp", "EYE", "--pixel-size", "0.02")
    script(*common, "--output", str(tmp_path / "without"))
    names = sorted(p.stem for p in (data / "Image").glob("*.png"))
    with_eyelid, without = read_csv(tmp_path / "with" / "images.csv"), read_csv(tmp_path / "without" / "images.csv")
    assert [r["name"] for r in with_eyelid] == [r["name"] for r in without] == names
    assert all(r["dropout"] != "" and r["meiboscore"] in "0123" for r in with_eyelid)
    assert all(r["dropout"] == "" and r["meiboscore"] == "" for r in without)
    glands = read_csv(tmp_path / "with" / "glands.csv")
    by_image = {n: sum(1 for g in glands if g["name"] == n) for n in names}
    assert by_image == {r["name"]: int(r["gland_count"]) for r in with_eyelid}
    assert len(list((tmp_path / "with" / "eyelid_masks").glob("*.png"))) == len(names)
    assert len(list((tmp_path / "with" / "overlays").glob("*.png"))) == len(names)
    wrong = script(*common, "--output", str(tmp_path / "wrong"), "--eyelid-exp", "SUP", expect=2)
    assert "--target eyelid" in wrong.stderr and "Traceback" not in wrong.stderr


def test_grades_file_reading_and_agreement(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("a.png,0\nb,3\n\nc.jpg,2.0\n")
    assert read_grades(path) == {"a": 0, "b": 3, "c": 2}
    path.write_text("a,5\n")
    with pytest.raises(InputError, match="not one of 0, 1, 2, 3"):
        read_grades(path)
    rows = [{"name": "a", "meiboscore": 0}, {"name": "b", "meiboscore": 2}, {"name": "c", "meiboscore": 2},
            {"name": "d", "meiboscore": None}]
    agreement = grade_agreement(rows, {"a": 0, "b": 3, "c": 2, "d": 1})
    assert agreement["n"] == 3 and agreement["accuracy"] == pytest.approx(2 / 3)
    assert agreement["confusion"][3][2] == 1 and agreement["confusion"][0][0] == 1


def test_report_says_when_kappa_is_undefined():
    summary = {"n_images": 2, "count_mae": 1.0, "gland_area_ratio_mae": 0.1, "dropout_mae": 0.2,
               "meiboscore_accuracy": 1.0, "meiboscore_kappa": math.nan, "n_meiboscore": 2}
    agreement = grade_agreement([{"name": "a", "meiboscore": 1}, {"name": "b", "meiboscore": 1}], {"a": 1, "b": 1})
    assert math.isnan(agreement["kappa"])  # every image in one grade: no chance disagreement
    lines = report_lines("EXP", summary, agreement)
    assert len(lines) == 2 and all("quadratic kappa undefined (all in one grade)" in line for line in lines)
    assert "nan" not in " ".join(lines)
    summary["meiboscore_kappa"] = 0.4
    assert report_lines("EXP", summary, None)[0].endswith("quadratic kappa 0.400")
    summary["n_meiboscore"] = 1
    assert report_lines("EXP", summary, None)[0].endswith("quadratic kappa 0.400 (1 of 2 images with an eyelid)")


def test_report_without_any_eyelid_says_what_is_missing_in_words():
    summary = {"n_images": 3, "count_mae": 1.5, "gland_area_ratio_mae": math.nan, "dropout_mae": math.nan,
               "meiboscore_accuracy": math.nan, "meiboscore_kappa": math.nan, "n_meiboscore": 0}
    lines = report_lines("EXP", summary, grade_agreement([], {"a": 1}))
    text = " ".join(lines)
    assert "gland count MAE 1.50" in lines[0] and "nan" not in text and "undefined" not in text
    assert "need eyelid masks" in lines[0] and "--eyelid-exp" in lines[0] and "none of the 3 test images" in lines[0]
    assert "clinicians' grades cannot be compared" in lines[1]


def test_calibration_applies_in_seg_and_predict(trained, tmp_path):
    data, runs = trained
    names = sorted(p.stem for p in (data / "Label").glob("*.png"))
    grades = tmp_path / "grades.csv"
    grades.write_text("".join(f"{n},{i % 4}\n" for i, n in enumerate(names)))
    gland_measures.main([str(data / "Label"), "--eyelid-dir", str(data / "Eyelid"), "--calibrate", str(grades),
                         "--output", str(tmp_path / "cal"), "--no-progress"])
    calibration = tmp_path / "cal" / "meiboscore_calibration.json"
    result = script("--mode", "seg", "--data-dir", str(data), "--fold", "1", "--runs-dir", str(runs), "--exp", "SUP",
                    "--device", "cpu", "--no-progress", "--grades", str(grades), "--calibration", str(calibration))
    summary = read_csv(runs / "SUP" / "test" / "clinical_summary.csv")[0]
    assert summary["grades_score"] == "calibrated_meiboscore" and int(summary["grades_n"]) > 0
    assert "calibrated meiboscore from predicted masks vs clinicians' grades" in result.stdout
    common = ["--mode", "predict", "--exp", "SUP", "--fold", "1", "--runs-dir", str(runs), "--device", "cpu",
              "--input", str(data / "Image"), "--no-progress", "--calibration", str(calibration)]
    script(*common, "--output", str(tmp_path / "pred"), "--eyelid-exp", "EYE")
    rows = read_csv(tmp_path / "pred" / "images.csv")
    assert len(rows) == len(names) and all(r["calibrated_meiboscore"] in ("0", "1", "2", "3") for r in rows)
    test_script = importlib.import_module("5fold_Test_Reg_or_Seg")        # the one-line errors, in process
    with pytest.raises(InputError, match="--calibration needs --eyelid-exp"):
        test_script.main([*common, "--output", str(tmp_path / "no_eyelid")])
    with pytest.raises(InputError, match="pass both"):
        test_script.main(["--mode", "seg", "--data-dir", str(data), "--fold", "1", "--runs-dir", str(runs),
                          "--exp", "SUP", "--device", "cpu", "--calibration", str(calibration)])

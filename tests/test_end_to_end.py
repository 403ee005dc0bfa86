"""Tiny end-to-end run of every script, as a user would type them (subprocesses)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.evaluation.summaries import SEG_COLUMNS, SEG_METRICS

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, f"{args}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"
    return result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    data, runs = base / "data", base / "runs"
    run("-m", "utils.make_demo_data", str(data), "--patients", "7", "--images-per-patient", "3",
        "--size", "96", "48", "--seed", "1")
    run("-m", "utils.make_folds", str(data))
    run("-m", "utils.prealign", str(data))
    common = ["--data-dir", str(data), "--fold", "1", "--runs-dir", str(runs), "--device", "cpu",
              "--workers", "0", "--no-progress", "--panel-every", "1"]
    run("5fold_Train_Reg.py", *common, "--exp", "REG", "--epochs", "1", "--iters", "2")
    resumed = run("5fold_Train_Reg.py", *common, "--exp", "REG", "--epochs", "2", "--iters", "2", "--resume")
    seg_args = ["5fold_Train_SS_MGS.py", *common, "--exp", "SEG", "--reg-exp", "REG", "--iters", "2",
                "--negatives", "20"]
    run(*seg_args, "--epochs", "1")
    seg_resumed = run(*seg_args, "--epochs", "2", "--resume")
    run("5fold_Train_SS_MGS.py", *common, "--exp", "SUP", "--no-rsgm", "--no-rnsf", "--epochs", "2",
        "--iters", "2")
    run("5fold_Train_SS_MGS.py", *common, "--exp", "CPS", "--method", "cps", "--epochs", "1", "--iters", "2")
    test_common = ["--data-dir", str(data), "--fold", "1", "--runs-dir", str(runs), "--device", "cpu",
                   "--no-progress"]
    seg = run("5fold_Test_Reg_or_Seg.py", "--mode", "seg", *test_common, "--exp", "SUP", "SEG", "CPS",
              "--save-images")
    reg = run("5fold_Test_Reg_or_Seg.py", "--mode", "reg", *test_common, "--exp", "REG", "--save-images")
    predicted = base / "pred"
    run("5fold_Test_Reg_or_Seg.py", "--mode", "predict", "--exp", "SEG", "--fold", "1", "--runs-dir", str(runs),
        "--device", "cpu", "--input", str(data / "Image"), "--output", str(predicted), "--no-progress")
    return {"data": data, "runs": runs, "pred": predicted, "seg_out": seg.stdout, "reg_out": reg.stdout,
            "resumed": resumed.stdout, "seg_resumed": seg_resumed.stdout}


def test_training_outputs(pipeline):
    for exp in ("REG", "SEG", "SUP"):
        fold = pipeline["runs"] / exp / "fold1"
        manifest = json.loads((fold / "best.json").read_text())
        assert (fold / manifest["best"]).is_file()
        assert (fold / "last.pth").is_file()
        assert list(fold.glob("events.out.tfevents.*")), f"no TensorBoard events for {exp}"
    for key in ("resumed", "seg_resumed"):
        assert "resumed from" in pipeline[key] and "after epoch 1" in pipeline[key]
        assert "epoch 2:" in pipeline[key] and "epoch 1:" not in pipeline[key]


def test_seg_csvs_and_summary(pipeline):
    folds = [json.loads((pipeline["data"] / "train_dict1.json").read_text())]
    test_names = sorted(n for s in folds[0]["test"] for n in s["Atlas"] + s["OtherImg"])
    for exp in ("SEG", "SUP"):
        out = pipeline["runs"] / exp / "test"
        rows = read_csv(out / "per_image.csv")
        assert set(SEG_COLUMNS) == set(rows[0])
        assert sorted(r["name"] for r in rows) == test_names
        summary = {r["fold"]: r for r in read_csv(out / "summary.csv")}
        assert set(summary) == {"1", "all"}
        for metric in SEG_METRICS:
            values = np.array([float(r[metric]) for r in rows])
            assert float(summary["all"][f"{metric}_mean"]) == pytest.approx(values.mean(), abs=1e-5)
            assert float(summary["all"][f"{metric}_std"]) == pytest.approx(values.std(), abs=1e-5)
            assert all(0 <= v <= 1 for v in values) or metric in ("hd95", "glands_merged", "glands_split")
        assert all(int(r["true_glands"]) > 0 for r in rows)  # the synthetic test images all have glands
        assert len(list((out / "images").glob("*.png"))) == len(rows)
    assert "SEG" in pipeline["seg_out"] and "SUP" in pipeline["seg_out"]
    comparison = read_csv(pipeline["runs"] / "SUP" / "test" / "comparison.csv")
    for level in ("image", "run"):
        assert {(r["experiment"], r["reference"]) for r in comparison if r["level"] == level} == {
            ("SEG", "SUP"), ("CPS", "SUP")}
    # one run per experiment: the run level cannot tell, and says so
    assert all(r["verdict"].startswith("cannot tell") for r in comparison if r["level"] == "run")
    assert "Within runs, per image (experiment - SUP" in pipeline["seg_out"]
    assert "Thin structures and glands" in pipeline["seg_out"] and "gland_f1" in pipeline["seg_out"]
    assert {r["metric"] for r in comparison} == set(SEG_METRICS)


def test_reg_csvs(pipeline):
    out = pipeline["runs"] / "REG" / "test"
    rows = read_csv(out / "per_pair.csv")
    assert {"moving", "fixed", "patient", "fold", "iou", "dice", "affine_iou", "affine_dice"} <= set(rows[0])
    fold = json.loads((pipeline["data"] / "train_dict1.json").read_text())
    sizes = [len(s["Atlas"] + s["OtherImg"]) for s in fold["test"]]
    assert len(rows) == sum(n * (n - 1) for n in sizes)
    summary = {r["fold"]: r for r in read_csv(out / "summary.csv")}
    assert float(summary["all"]["dice_mean"]) == pytest.approx(np.mean([float(r["dice"]) for r in rows]),
                                                               abs=1e-5)
    assert len(list((out / "images").glob("*.png"))) == len(rows)


def test_predict_outputs(pipeline):
    images = sorted(p.stem for p in (pipeline["data"] / "Image").glob("*.png"))
    masks = sorted(p.stem for p in (pipeline["pred"] / "masks").glob("*.png"))
    assert masks == images
    assert len(list((pipeline["pred"] / "overlays").glob("*.png"))) == len(images)
    rows = read_csv(pipeline["pred"] / "gland_area.csv")
    assert [r["name"] for r in rows] == images
    assert all(0.0 <= float(r["gland_fraction"]) <= 1.0 for r in rows)


def test_errors_are_one_line(pipeline, tmp_path):
    missing = run("5fold_Train_SS_MGS.py", "--data-dir", str(pipeline["data"]), "--fold", "2", "--runs-dir",
                  str(pipeline["runs"]), "--exp", "X", "--reg-exp", "NOPE", "--device", "cpu", "--workers", "0",
                  "--epochs", "1", "--iters", "1", "--no-progress", expect=2)
    assert "5fold_Train_Reg.py" in missing.stderr and "Traceback" not in missing.stderr
    again = run("5fold_Train_Reg.py", "--data-dir", str(pipeline["data"]), "--fold", "1", "--runs-dir",
                str(pipeline["runs"]), "--exp", "REG", "--device", "cpu", "--epochs", "1", "--iters", "1",
                "--no-progress", expect=2)
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    no_ckpt = run("5fold_Test_Reg_or_Seg.py", "--mode", "seg", "--data-dir", str(pipeline["data"]), "--fold",
                  "3", "--runs-dir", str(pipeline["runs"]), "--exp", "SEG", "--device", "cpu", expect=2)
    assert "fold3" in no_ckpt.stderr and len(no_ckpt.stderr.strip().splitlines()) == 1
    wrong = run("5fold_Test_Reg_or_Seg.py", "--mode", "seg", "--data-dir", str(pipeline["data"]), "--fold", "1",
                "--runs-dir", str(pipeline["runs"]), "--exp", "REG", "--device", "cpu", expect=2)
    assert "does not match" in wrong.stderr and "Traceback" not in wrong.stderr

"""Seeds as replicates, end to end on tiny data: 2 methods x 2 seeds x 2 folds, trained by the
scripts as a user types them and gathered by one test-script call (run-level comparison)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataloaders.splits import make_folds
from utils.evaluation.run_comparison import LARGER, WITHIN
from utils.evaluation.summaries import SEG_METRICS
from utils.synthetic.generate import generate_dataset

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"
    return result.stdout


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    base = tmp_path_factory.mktemp("seeds")
    data, runs = base / "data", base / "runs"
    generate_dataset(data, patients=7, images_per_patient=3, size=(64, 32), seed=2, progress=False)
    make_folds(data)
    common = ["--data-dir", str(data), "--fold", "1,2", "--runs-dir", str(runs), "--device", "cpu", "--workers", "0",
              "--no-progress", "--panel-every", "0", "--iters", "1"]
    run("5fold_Train_Reg.py", *common, "--exp", "REG", "--epochs", "1")  # one registration per fold
    run("5fold_Train_SS_MGS.py", *common, "--exp", "SUP", "--method", "supervised", "--seeds", "1", "2",
        "--epochs", "1")
    resumed = run("5fold_Train_SS_MGS.py", *common, "--exp", "SUP", "--method", "supervised", "--seeds", "1", "2",
                  "--epochs", "2", "--resume")
    seg = run("5fold_Train_SS_MGS.py", *common, "--exp", "SEG", "--reg-exp", "REG", "--seeds", "1", "2",
              "--epochs", "1", "--negatives", "10")
    test = run("5fold_Test_Reg_or_Seg.py", "--mode", "seg", "--data-dir", str(data), "--fold", "1,2", "--runs-dir",
               str(runs), "--device", "cpu", "--no-progress", "--exp", "SUP", "SEG")
    return {"runs": runs, "resumed": resumed, "seg": seg, "test": test}


def test_each_seed_and_fold_has_its_run_folder_and_resumes(grid):
    runs = grid["runs"]
    for exp in ("SUP", "SEG"):
        assert sorted(p.relative_to(runs / exp).as_posix() for p in (runs / exp).glob("seed*/fold*")) == \
            ["seed1/fold1", "seed1/fold2", "seed2/fold1", "seed2/fold2"]
        assert not (runs / exp / "fold1").exists()
    for seed in (1, 2):
        for k in (1, 2):
            assert f"seed {seed} fold {k}: resumed from {runs / 'SUP' / f'seed{seed}' / f'fold{k}' / 'last.pth'} " \
                   f"after epoch 1" in grid["resumed"]
    # no REG/seed<S>/ exists: every seed of a fold uses that fold's one registration model
    for seed in (1, 2):
        for k in (1, 2):
            assert f"seed {seed} fold {k}: registration network from {runs / 'REG' / f'fold{k}'}" in grid["seg"]


def test_one_test_call_gathers_every_run_at_run_level(grid):
    runs = grid["runs"]
    per_run = {}
    for exp in ("SUP", "SEG"):
        images = read_csv(runs / exp / "test" / "per_image.csv")
        assert {r["seed"] for r in images} == {"1", "2"} and {r["fold"] for r in images} == {"1", "2"}
        table = read_csv(runs / exp / "test" / "runs.csv")
        assert sorted((r["fold"], r["seed"]) for r in table) == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
        for row in table:
            mine = [r for r in images if (r["fold"], r["seed"]) == (row["fold"], row["seed"])]
            assert int(row["n"]) == len(mine)
            for metric in SEG_METRICS:
                assert float(row[metric]) == pytest.approx(np.mean([float(r[metric]) for r in mine]), abs=1e-6)
        per_run[exp] = {(r["fold"], r["seed"]): r for r in table}
    comparison = read_csv(runs / "SUP" / "test" / "comparison.csv")
    assert {r["level"] for r in comparison} == {"experiment", "run", "image"}
    spreads = [r for r in comparison if r["level"] == "experiment"]
    assert sorted((r["experiment"], r["metric"]) for r in spreads) == sorted(
        (exp, m) for exp in ("SUP", "SEG") for m in SEG_METRICS)
    assert all((r["n_runs"], r["n_folds"], r["n_seeds"]) == ("4", "2", "2") for r in spreads)
    differences = {r["metric"]: r for r in comparison if r["level"] == "run"}
    assert set(differences) == set(SEG_METRICS)
    for metric, row in differences.items():
        want = np.mean([float(per_run["SEG"][key][metric]) - float(per_run["SUP"][key][metric])
                        for key in per_run["SUP"]])
        assert (row["experiment"], row["reference"], row["n"]) == ("SEG", "SUP", "4")
        assert float(row["mean_difference"]) == pytest.approx(want, abs=1e-6)
        assert row["verdict"] in (WITHIN, LARGER) and row["noise_floor_source"] == "seeds"
        assert int(row["n_patients"]) == len({(r["fold"], r["patient"]) for r in images})  # every test patient
    assert "Over runs (experiment - SUP, paired by fold and seed" in grid["test"]
    assert "Within runs, per image" in grid["test"]
    assert "over 4 runs (2 fold(s) x 2 seed(s))" in grid["test"]

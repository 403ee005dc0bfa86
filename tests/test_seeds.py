"""The run-folder layout of seeds: --seed / --seeds, which runs the test script finds, and which
registration run serves a segmentation seed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from utils.errors import InputError
from utils.stages.segmentation_methods import build_parser, check_args
from utils.training import fold_runner
from utils.training.checkpoints import MANIFEST_NAME, Run, find_runs, run_dir_for, run_dir_serving_seed


def trained(run_dir: Path) -> Path:
    """A run folder whose manifest names a best checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "best_epoch001_score0.5000.pth").write_bytes(b"x")
    (run_dir / MANIFEST_NAME).write_text(json.dumps({"best": "best_epoch001_score0.5000.pth", "checkpoints": []}))
    return run_dir


def test_run_dir_layouts(tmp_path):
    assert run_dir_for(tmp_path, "SEG", 2) == tmp_path / "SEG" / "fold2"
    assert run_dir_for(tmp_path, "SEG", 2, seed=17) == tmp_path / "SEG" / "seed17" / "fold2"


def test_find_runs_prefers_seed_folders_and_says_so(tmp_path, capsys):
    single = trained(tmp_path / "SEG" / "fold1")
    assert find_runs(tmp_path, "SEG", 1) == [Run(1, None, single)]
    trained(tmp_path / "SEG" / "seed17" / "fold1")
    trained(tmp_path / "SEG" / "seed3" / "fold1")
    (tmp_path / "SEG" / "seed5" / "fold1").mkdir(parents=True)  # never trained: not a run
    trained(tmp_path / "SEG" / "seed9" / "fold2")  # another fold
    assert find_runs(tmp_path, "SEG", 1) == [Run(1, 3, tmp_path / "SEG" / "seed3" / "fold1"),
                                             Run(1, 17, tmp_path / "SEG" / "seed17" / "fold1")]
    assert f"{single} is not used beside the seed folders" in capsys.readouterr().out
    with pytest.raises(InputError, match=r"fold3: no best checkpoint.*seed<S>/fold3.*train it"):
        find_runs(tmp_path, "SEG", 3, hint="train it")


def test_a_segmentation_seed_uses_its_registration_seed_else_the_folds_one(tmp_path):
    trained(tmp_path / "REG" / "fold1")
    trained(tmp_path / "REG" / "seed7" / "fold1")
    assert run_dir_serving_seed(tmp_path, "REG", 1, 7) == tmp_path / "REG" / "seed7" / "fold1"
    assert run_dir_serving_seed(tmp_path, "REG", 1, 8) == tmp_path / "REG" / "fold1"
    assert run_dir_serving_seed(tmp_path, "REG", 2, 7) == tmp_path / "REG" / "fold2"  # missing: named in the error


def parse(*flags: str):
    args = build_parser().parse_args(["--data-dir", "D", *flags])
    check_args(args)
    return args


def test_seed_flags():
    assert parse().seeds is None and parse().seed == 3407
    assert parse("--seeds", "4", "9").seeds == [4, 9]
    with pytest.raises(InputError, match="not allowed with argument"):
        parse("--seed", "1", "--seeds", "2")
    with pytest.raises(InputError, match="repeated"):
        parse("--seeds", "2", "2")


def test_train_folds_runs_every_seed_and_fold_in_its_folder(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(fold_runner, "DatasetFolder", lambda *a, **k: None)
    monkeypatch.setattr(fold_runner, "train_fold", lambda args, k, *rest: ran.append(
        (args.seed, k, fold_runner.run_dir_of(args, k), fold_runner.run_label(args, k))))
    args = parse("--fold", "1,3", "--seeds", "5", "11", "--runs-dir", str(tmp_path), "--exp", "E")
    fold_runner.train_folds(args, torch.device("cpu"), None)
    assert ran == [(s, k, tmp_path / "E" / f"seed{s}" / f"fold{k}", f"seed {s} fold {k}")
                   for s in (5, 11) for k in (1, 3)]
    assert args.seed == 3407  # the caller's namespace is left alone
    ran.clear()
    fold_runner.train_folds(parse("--fold", "2", "--seed", "8", "--runs-dir", str(tmp_path), "--exp", "E"),
                            torch.device("cpu"), None)
    assert ran == [(8, 2, tmp_path / "E" / "fold2", "fold 2")]  # the single-seed layout as before

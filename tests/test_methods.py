"""Every segmentation method end to end on a tiny data set: train, interrupt mid-epoch and resume
(the result equals an uninterrupted run), label isolation, and the test script's comparison."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dataloaders.dataset as dataset_module
from dataloaders.dataset import DatasetFolder
from dataloaders.folds import load_fold
from utils.synthetic.generate import generate_dataset
from dataloaders.splits import make_folds
from utils.stages.registration import RegistrationStage
from utils.stages.registration import build_parser as registration_parser
from utils.errors import InputError
from utils.stages.segmentation_methods import METHODS, build_parser, build_stage, check_args, method_options
from utils.training.checkpoints import load_checkpoint
from utils.training.fold_runner import train_folds

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("methods")
    data, runs = base / "data", base / "runs"
    generate_dataset(data, patients=7, images_per_patient=3, size=(64, 32), seed=2, progress=False)
    make_folds(data)
    train_folds(registration_parser().parse_args(
        ["--data-dir", str(data), "--runs-dir", str(runs), "--exp", "REG", "--epochs", "1", "--iters", "1",
         "--workers", "0", "--no-progress", "--device", "cpu"]), CPU, RegistrationStage)
    return data, runs


def method_args(data: Path, runs: Path, method: str, exp: str, *extra: str):
    own = ["--reg-exp", "REG", "--negatives", "20"] if METHODS[method].uses_registration else []
    args = build_parser().parse_args(["--data-dir", str(data), "--runs-dir", str(runs), "--exp", exp,
                                      "--method", method, "--epochs", "2", "--iters", "2", "--workers", "0",
                                      "--no-progress", "--device", "cpu", *own, *extra])
    check_args(args)
    return args


def interrupted_at(call: int):
    """A stage builder whose stage stops with KeyboardInterrupt at its ``call``-th training step."""
    def build(args, k, data, device):
        stage = build_stage(args, k, data, device)
        step, calls = stage.train_step, [0]

        def stopping(batch, check):
            calls[0] += 1
            if calls[0] == call:
                raise KeyboardInterrupt
            return step(batch, check)
        stage.train_step = stopping
        return stage
    return build


def test_every_method_is_registered():
    assert set(METHODS) == {"ss-mgs", "supervised", "mean-teacher", "ua-mt", "cps", "bcp", "unimatch"}
    args = build_parser().parse_args(["--data-dir", "x"])
    check_args(args)
    assert args.method == "ss-mgs"


def test_every_method_flag_has_an_owner_and_every_owned_flag_exists():
    parser = build_parser()
    dests = set(vars(parser.parse_args(["--data-dir", "x"])))
    assert method_options() <= dests
    shared = {action.dest for action in parser._actions if action.container is parser} | {"help"}
    grouped = {action.dest for group in parser._action_groups if group.title not in ("positional arguments",
               "options", "optional arguments") for action in group._group_actions}
    assert grouped - shared <= method_options(), "a method's flag group holds a flag no method owns"


@pytest.mark.parametrize("method, flag", [("cps", "--negatives 20"), ("ss-mgs", "--cps-weight 0.2"),
                                          ("unimatch", "--ema-decay 0.9"), ("mean-teacher", "--uncertainty-passes 4"),
                                          ("supervised", "--bcp-box 0.5"), ("bcp", "--no-rsgm")])
def test_a_flag_of_another_method_is_a_one_line_error(method, flag):
    args = build_parser().parse_args(["--data-dir", "x", "--method", method, *flag.split()])
    with pytest.raises(InputError, match=rf"^{flag.split()[0]} belongs to --method .*not to --method {method}"):
        check_args(args)


@pytest.mark.parametrize("method, flag", [("bcp", "--ema-decay 0.9"), ("ua-mt", "--uncertainty-passes 4"),
                                          ("ss-mgs", "--negatives 20"), ("mean-teacher", "--consistency-start 0.1")])
def test_a_methods_own_flags_are_accepted(method, flag):
    check_args(build_parser().parse_args(["--data-dir", "x", "--method", method, *flag.split()]))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_after_an_interruption_continues_exactly(tiny, method, monkeypatch):
    data, runs = tiny
    folder = DatasetFolder(data)
    fold = load_fold(data, 1, folder)
    allowed = {n for s in fold.train for n in s.atlas} | {n for s in fold.val for n in s.images}
    opened = []
    original = dataset_module.read_label
    monkeypatch.setattr(dataset_module, "read_label",
                        lambda path, size=None: opened.append(Path(path).stem) or original(path, size))

    train_folds(method_args(data, runs, method, f"{method}_straight"), CPU, build_stage)
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2 (after steps 1, 2 and 3)
        train_folds(method_args(data, runs, method, f"{method}_resumed"), CPU, interrupted_at(4))
    assert load_checkpoint(runs / f"{method}_resumed" / "fold1" / "last.pth")["epoch"] == 0
    train_folds(method_args(data, runs, method, f"{method}_resumed", "--resume"), CPU, build_stage)

    straight = load_checkpoint(runs / f"{method}_straight" / "fold1" / "last.pth")
    resumed = load_checkpoint(runs / f"{method}_resumed" / "fold1" / "last.pth")
    assert straight["epoch"] == resumed["epoch"] == 1
    stateful = [key for key, value in straight.items() if isinstance(value, dict) and key not in ("args", "rng")]
    assert "model" in stateful and "optimizer" in stateful
    for key in stateful:
        if key in ("model", "teacher", "net2"):
            for name, tensor in straight[key].items():
                assert torch.equal(tensor, resumed[key][name]), f"{method}: {key}.{name} differs after resume"
    assert straight["score"] == resumed["score"]
    assert set(opened) <= allowed, f"{method} opened labels of {sorted(set(opened) - allowed)}"


def test_method_specific_state_is_checkpointed(tiny):
    _, runs = tiny
    expected = {"mean-teacher": {"teacher", "method_rng"}, "ua-mt": {"teacher", "method_rng"},
                "cps": {"net2", "optimizer2", "scheduler2", "method_rng"}, "bcp": {"teacher", "pretrained", "method_rng"},
                "unimatch": {"method_rng"}, "ss-mgs": {"coefficient_rng"}, "supervised": set()}
    for method, keys in expected.items():
        state = load_checkpoint(runs / f"{method}_straight" / "fold1" / "last.pth")
        assert keys <= set(state), f"{method} does not checkpoint {sorted(keys - set(state))}"


def test_test_script_compares_every_method_with_the_first(tiny):
    data, runs = tiny
    exps = [f"{m}_straight" for m in ("supervised", "ss-mgs", "mean-teacher", "ua-mt", "cps", "bcp", "unimatch")]
    result = subprocess.run([sys.executable, "5fold_Test_Reg_or_Seg.py", "--mode", "seg", "--data-dir", str(data),
                             "--fold", "1", "--runs-dir", str(runs), "--device", "cpu", "--no-progress",
                             "--exp", *exps], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(runs / exps[0] / "test" / "comparison.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["level"] == "image"]  # per image, one run each
    assert {r["experiment"] for r in rows} == set(exps[1:]) and {r["reference"] for r in rows} == {exps[0]}
    assert {r["metric"] for r in rows} == {"iou", "dice", "hd95", "recall", "accuracy"}
    for row in rows:
        assert float(row["ci_low"]) <= float(row["mean_difference"]) <= float(row["ci_high"])
        assert 0.0 <= float(row["wilcoxon_p"]) <= 1.0
    assert "Within runs, per image (experiment - supervised_straight" in result.stdout

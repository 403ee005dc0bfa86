"""Every segmentation method end to end on a tiny data set: train, interrupt mid-epoch and resume
(the result equals an uninterrupted run), label isolation, and the test script's comparison."""
from __future__ import annotations

import copy
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dataloaders.dataset as dataset_module
from dataloaders.dataset import DatasetFolder
from dataloaders.fold_data import open_fold
from dataloaders.folds import load_fold
from utils.synthetic.generate import generate_dataset
from dataloaders.splits import make_folds
from utils.stages.registration import RegistrationStage
from utils.stages.registration import build_parser as registration_parser
from utils.errors import InputError
from utils.evaluation.summaries import SEG_METRICS
from utils.stages.segmentation_methods import (METHODS, build_parser, build_stage, check_args, method_of,
                                                method_options)
from utils.training.checkpoints import load_checkpoint
from utils.training.engine import make_loader
from utils.training.fold_runner import train_folds

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
#: flags that make the tiny runs reach every branch (ABD: a pre-training epoch, then self-training
#: with the labelled displacement)
METHOD_FLAGS = {"abd": ("--abd-pretrain", "0.5", "--abd-labelled-weight", "2")}


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
    own += METHOD_FLAGS.get(method, ())
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
    assert set(METHODS) == {"ss-mgs", "supervised", "mean-teacher", "ua-mt", "cps", "bcp", "unimatch", "abd", "ad-mt"}
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
                                          ("supervised", "--bcp-box 0.5"), ("bcp", "--no-rsgm"),
                                          ("bcp", "--abd-grid 3"), ("abd", "--ad-mt-weight 1"),
                                          ("ad-mt", "--unimatch-threshold 0.9")])
def test_a_flag_of_another_method_is_a_one_line_error(method, flag):
    args = build_parser().parse_args(["--data-dir", "x", "--method", method, *flag.split()])
    with pytest.raises(InputError, match=rf"^{flag.split()[0]} belongs to --method .*not to --method {method}"):
        check_args(args)


@pytest.mark.parametrize("method, flag", [("bcp", "--ema-decay 0.9"), ("ua-mt", "--uncertainty-passes 4"),
                                          ("ss-mgs", "--negatives 20"), ("mean-teacher", "--consistency-start 0.1"),
                                          ("ss-mgs", "--ramp-fraction 0.5 --ramp-length 20"),
                                          ("abd", "--bcp-box 0.5"), ("abd", "--abd-top-k 2"),
                                          ("ad-mt", "--ema-decay 0.9"), ("ad-mt", "--ad-mt-rampup 0.5")])
def test_a_methods_own_flags_are_accepted(method, flag):
    check_args(build_parser().parse_args(["--data-dir", "x", "--method", method, *flag.split()]))


@pytest.mark.parametrize("flag", ["--ramp-fraction -0.5", "--ramp-length -1"])
def test_a_negative_ramp_is_a_one_line_error(flag):
    with pytest.raises(InputError, match=rf"^{flag.split()[0]} must be >= 0"):
        check_args(build_parser().parse_args(["--data-dir", "x", *flag.split()]))


AUGMENTED = ("--augment", "flip-rotate", "--dropout", "0.3")


@pytest.mark.parametrize("method, extra", [(m, ()) for m in sorted(METHODS)]
                         + [("mean-teacher", ("--batch-size", "2")), ("ss-mgs", AUGMENTED), ("ua-mt", AUGMENTED)])
def test_resume_after_an_interruption_continues_exactly(tiny, method, extra, monkeypatch):
    data, runs = tiny
    folder = DatasetFolder(data)
    fold = load_fold(data, 1, folder)
    allowed = {n for s in fold.train for n in s.atlas} | {n for s in fold.val for n in s.images}
    opened = []
    original = dataset_module.read_label
    monkeypatch.setattr(dataset_module, "read_label",
                        lambda path, size=None: opened.append(Path(path).stem) or original(path, size))

    name = "_".join([method, *(word.lstrip("-") for word in extra)])
    train_folds(method_args(data, runs, method, f"{name}_straight", *extra), CPU, build_stage)
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2 (after steps 1, 2 and 3)
        train_folds(method_args(data, runs, method, f"{name}_resumed", *extra), CPU, interrupted_at(4))
    assert load_checkpoint(runs / f"{name}_resumed" / "fold1" / "last.pth")["epoch"] == 0
    train_folds(method_args(data, runs, method, f"{name}_resumed", "--resume", *extra), CPU, build_stage)

    straight = load_checkpoint(runs / f"{name}_straight" / "fold1" / "last.pth")
    resumed = load_checkpoint(runs / f"{name}_resumed" / "fold1" / "last.pth")
    assert straight["epoch"] == resumed["epoch"] == 1
    stateful = [key for key, value in straight.items() if isinstance(value, dict) and key not in ("args", "rng")]
    assert "model" in stateful and "optimizer" in stateful
    for key in stateful:
        if key in ("model", "teacher", "teacher2", "net2"):
            for name, tensor in straight[key].items():
                assert torch.equal(tensor, resumed[key][name]), f"{method}: {key}.{name} differs after resume"
    if "alternation" in straight:
        assert straight["alternation"] == resumed["alternation"], f"{method}: the teacher alternation differs"
    assert straight["score"] == resumed["score"]
    assert set(opened) <= allowed, f"{method} opened labels of {sorted(set(opened) - allowed)}"


def test_method_specific_state_is_checkpointed(tiny):
    _, runs = tiny
    expected = {"mean-teacher": {"teacher", "method_rng"}, "ua-mt": {"teacher", "method_rng"},
                "cps": {"net2", "optimizer2", "scheduler2", "method_rng"}, "bcp": {"teacher", "pretrained", "method_rng"},
                "unimatch": {"method_rng"}, "ss-mgs": {"coefficient_rng"}, "supervised": set(),
                "abd": {"teacher", "pretrained", "net2", "optimizer2", "scheduler2", "method_rng"},
                "ad-mt": {"teacher", "teacher2", "alternation", "method_rng"}}
    assert set(expected) == set(METHODS)
    for method, keys in expected.items():
        state = load_checkpoint(runs / f"{method}_straight" / "fold1" / "last.pth")
        assert keys <= set(state), f"{method} does not checkpoint {sorted(keys - set(state))}"
        assert "augment_rng" not in state and state["args"]["augment"] == "none" and state["args"]["dropout"] == 0
    for method in ("ss-mgs", "ua-mt"):
        state = load_checkpoint(runs / "_".join([method, *(w.lstrip("-") for w in AUGMENTED), "straight"])
                                / "fold1" / "last.pth")
        assert "augment_rng" in state and (state["args"]["augment"], state["args"]["dropout"]) == ("flip-rotate", 0.3)


def test_method_of_names_the_setting_a_comparison_must_share():
    assert method_of({"method": "ss-mgs", "no_rnsf": True, "augment": "flip-rotate", "dropout": 0.5}) == \
        "ss-mgs --no-rnsf (augment flip-rotate, dropout 0.5)"
    assert method_of({"method": "supervised", "target": "eyelid"}) == \
        "supervised, target eyelid (augment none, dropout 0)"  # a checkpoint from before the two flags


def test_bcp_pretrains_half_the_run_and_selects_among_self_training_epochs_only(tiny):
    _, runs = tiny  # bcp_straight: 2 epochs, so epoch 1 pre-trains and epoch 2 self-trains
    assert build_parser().get_default("bcp_pretrain") == 0.5
    run_dir = runs / "bcp_straight" / "fold1"
    manifest = json.loads((run_dir / "best.json").read_text())
    assert [entry["epoch"] for entry in manifest["checkpoints"]] == [2]
    assert sorted(p.name for p in run_dir.glob("best_*.pth")) == [manifest["best"]]
    last = load_checkpoint(run_dir / "last.pth")
    assert math.isfinite(last["pretrained"]["score"]) and last["pretrained"]["weights"]  # the teacher's start
    assert set(scalars(run_dir, "val/best_iou")) == {2}
    assert scalars(run_dir, "val/best_pretraining_iou") == pytest.approx({1: last["pretrained"]["score"]})


def test_bcp_needs_a_self_training_epoch():
    args = build_parser().parse_args(["--data-dir", "x", "--method", "bcp", "--epochs", "2", "--bcp-pretrain", "0.9"])
    with pytest.raises(InputError, match=r"^--bcp-pretrain 0.9 of --epochs 2 leaves no self-training epoch"):
        check_args(args)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """``step -> value`` of a TensorBoard scalar in ``run_dir``."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def test_rnsf_ramp_spans_the_run_and_its_last_epoch_has_the_full_weight(tiny):
    _, runs = tiny
    weights = scalars(runs / "ss-mgs_straight" / "fold1", "train/rnsf_ramp_weight")  # 2 epochs, default 0.1
    assert weights == pytest.approx({1: 0.1 * math.exp(-5 * 0.5 ** 2), 2: 0.1})


def test_abd_needs_a_self_training_epoch():
    args = build_parser().parse_args(["--data-dir", "x", "--method", "abd", "--epochs", "2", "--abd-pretrain", "0.8"])
    with pytest.raises(InputError, match=r"^--abd-pretrain 0.8 of --epochs 2 leaves no self-training epoch"):
        check_args(args)


def first_batch(stage) -> dict:
    return next(iter(make_loader(stage.train_set, 1, 0)))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_abd_pretraining_is_never_selected_and_starts_both_networks_and_the_teacher(tiny):
    data, runs = tiny
    args = method_args(data, runs, "abd", "abd_unit", "--abd-pretrain", "0.5", "--iters", "1")
    stage = build_stage(args, 1, open_fold(data, 1, progress=False), CPU)
    stage.start(0, None)
    stage.start_epoch(0)
    assert stage.pretraining
    before = copy.deepcopy(stage.net2.state_dict())
    stage.train_step(first_batch(stage), lambda terms: None)
    assert all(torch.equal(v, before[k]) for k, v in stage.net2.state_dict().items())  # network 2 waits
    stage.end_epoch(0)
    validation = stage.validate(0)
    assert not validation.selectable and stage.pretrained.score > 0  # scored, kept, not selectable
    stage.start_epoch(1)
    assert not stage.pretraining
    assert same_weights(stage.net, stage.net2) and same_weights(stage.net, stage.teacher)
    assert all(torch.equal(v, stage.pretrained.weights[k]) for k, v in stage.net2.state_dict().items())
    state1, state2 = stage.optimizer.state_dict()["state"], stage.optimizer2.state_dict()["state"]
    assert state1.keys() == state2.keys() and all(
        torch.equal(state1[i]["exp_avg"], state2[i]["exp_avg"]) and state1[i]["exp_avg"] is not state2[i]["exp_avg"]
        for i in state1)
    terms, _ = stage.train_step(first_batch(stage), lambda terms: None)
    assert {"mix1", "mix2", "cross_mix", "cross_displaced", "labelled_displaced", "total"} <= set(terms)
    assert validation.scalars["iou"] == pytest.approx(stage.pretrained.score)


def test_ad_mt_updates_only_the_active_teacher_and_alternates(tiny):
    data, runs = tiny
    args = method_args(data, runs, "ad-mt", "ad_mt_unit")  # 4 steps: every period lasts one step
    stage = build_stage(args, 1, open_fold(data, 1, progress=False), CPU)
    stage.start(0, None)
    stage.start_epoch(0)
    assert stage.alternation.longest == 1 and stage.alternation.first_active
    teacher2_before = copy.deepcopy(stage.teacher2.state_dict())
    terms, _ = stage.train_step(first_batch(stage), lambda terms: None)
    assert terms["teacher1_active"] == 1.0
    assert same_weights(stage.teacher, stage.net)  # the first updates are copies (decay 0)
    assert all(torch.equal(v, teacher2_before[k]) for k, v in stage.teacher2.state_dict().items())
    assert not stage.alternation.first_active
    teacher1_before = copy.deepcopy(stage.teacher.state_dict())
    terms, _ = stage.train_step(first_batch(stage), lambda terms: None)
    assert terms["teacher1_active"] == 0.0
    assert same_weights(stage.teacher2, stage.net)
    assert all(torch.equal(v, teacher1_before[k]) for k, v in stage.teacher.state_dict().items())


def test_test_script_compares_every_method_with_the_first(tiny):
    data, runs = tiny
    exps = [f"{m}_straight" for m in ["supervised"] + [m for m in METHODS if m != "supervised"]]
    result = subprocess.run([sys.executable, "5fold_Test_Reg_or_Seg.py", "--mode", "seg", "--data-dir", str(data),
                             "--fold", "1", "--runs-dir", str(runs), "--device", "cpu", "--no-progress",
                             "--exp", *exps], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(runs / exps[0] / "test" / "comparison.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["level"] == "image"]  # per image, one run each
    assert {r["experiment"] for r in rows} == set(exps[1:]) and {r["reference"] for r in rows} == {exps[0]}
    assert {r["metric"] for r in rows} == set(SEG_METRICS)
    for row in rows:
        assert float(row["ci_low"]) <= float(row["mean_difference"]) <= float(row["ci_high"])
        assert 0.0 <= float(row["wilcoxon_p"]) <= 1.0
    assert "Within runs, per image (experiment - supervised_straight" in result.stdout
    assert "ua-mt_straight fold 1 seed 3407: ua-mt (augment none, dropout 0)" in result.stdout
    assert "trained with different settings" not in result.stdout


def test_test_script_warns_when_the_compared_models_differ_in_augmentation_or_dropout(tiny):
    data, runs = tiny
    augmented = "_".join(["ua-mt", *(w.lstrip("-") for w in AUGMENTED), "straight"])
    result = subprocess.run([sys.executable, "5fold_Test_Reg_or_Seg.py", "--mode", "seg", "--data-dir", str(data),
                             "--fold", "1", "--runs-dir", str(runs), "--device", "cpu", "--no-progress",
                             "--exp", "ua-mt_straight", augmented], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{augmented} fold 1 seed 3407: ua-mt (augment flip-rotate, dropout 0.3)" in result.stdout
    assert ("trained with different settings (ua-mt_straight: augment none, dropout 0; "
            f"{augmented}: augment flip-rotate, dropout 0.3)") in result.stdout

"""utils.training (set-up, checkpoints, resume, NaN guard, memory), utils.files and utils.evaluation.visualise."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.errors import InputError
from utils.files import atomic_save
from utils.training.checkpoints import CheckpointManager, find_best_checkpoint, run_dir_for
from utils.training.engine import TrainingDiverged, check_finite, make_writer
from utils.training.rng_state import restore_rng_state, rng_state
from utils.training.runtime import make_generator, seed_everything, seed_worker, select_device, use_amp
from utils.training.schedules import epoch_ramp, ramp_length, ramp_up
from utils.evaluation.visualise import (deformation_grid, grid_lines, image_grid_panel, overlay_mask, save_png,
                             tp_fp_fn_overlay)


# ----------------------------------------------------------------------------- set-up

def test_select_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA device is available; use --device cpu or auto"):
        select_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        select_device("tpu")


def test_use_amp():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_amp("auto", cpu) is False
    assert use_amp("auto", cuda) is True
    assert use_amp("on", cuda) is True
    assert use_amp("off", cuda) is False
    with pytest.raises(InputError, match="only supported on CUDA"):
        use_amp("on", cpu)
    with pytest.raises(InputError):
        use_amp("maybe", cpu)


def test_ramp_up_values():
    assert ramp_up(0) == pytest.approx(math.exp(-5))
    assert ramp_up(25) == pytest.approx(math.exp(-5 * 0.25))
    assert ramp_up(50) == pytest.approx(1.0)
    assert ramp_up(80) == pytest.approx(1.0)
    assert ramp_up(5, length=0) == 1.0
    assert ramp_up(10, length=20) == pytest.approx(math.exp(-1.25))


def test_epoch_ramp_counts_from_one_and_a_fraction_of_the_run():
    ten = [epoch_ramp(e, ramp_length(10)) for e in range(10)]
    assert ten == pytest.approx([math.exp(-5 * (1 - (e + 1) / 10) ** 2) for e in range(10)])
    assert ten[-1] == 1.0 and ten[0] == pytest.approx(math.exp(-5 * 0.81))
    # the paper's run: a ramp of 50 epochs over 50, shifted by one epoch only
    assert ramp_length(50) == 50
    assert [epoch_ramp(e, 50) for e in range(50)] == [ramp_up(e + 1, 50) for e in range(50)]
    assert ramp_length(10, fraction=0.5) == 5 and epoch_ramp(4, 5) == 1.0
    assert ramp_length(10, fraction=0.5, length=50) == 50  # an explicit length wins
    assert ramp_length(10, length=0) == 0 and epoch_ramp(0, 0) == 1.0


def _draws():
    return random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_seed_everything_and_generators():
    seed_everything(7)
    first = _draws()
    seed_everything(7)
    assert _draws() == first
    g1, g2 = make_generator(5), make_generator(5)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_seed_worker_derives_from_torch_initial_seed():
    torch.manual_seed(1234)
    seed_worker(0)
    assert np.random.rand() == np.random.RandomState(1234).rand()
    assert random.random() == random.Random(1234).random()


def test_rng_state_roundtrip_through_checkpoint(tmp_path):
    seed_everything(3)
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    atomic_save({"rng": rng_state()}, tmp_path / "s.pth")
    expected = _draws()
    seed_everything(999)
    _draws()
    state = torch.load(tmp_path / "s.pth", weights_only=True)
    restore_rng_state(state["rng"])
    assert _draws() == expected


# ----------------------------------------------------------------------------- atomic save

def test_atomic_save_writes_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ck.pth"
    atomic_save({"x": torch.arange(3)}, path)
    atomic_save({"x": torch.arange(4)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(4))


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    atomic_save({"v": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


# ----------------------------------------------------------------------------- checkpoints

SCORES = [0.1, 0.5, 0.3, 0.2, 0.7, 0.4, 0.35]  # epochs 1..7


def _fill(run_dir, keep=3):
    manager = CheckpointManager(run_dir, keep=keep)
    saved = [manager.maybe_save_best({"epoch": e}, s, e) for e, s in enumerate(SCORES, start=1)]
    return manager, saved


def test_checkpoint_manager_keeps_best_n(tmp_path):
    manager, saved = _fill(tmp_path)
    assert saved == [True, True, True, True, True, True, False]
    expected = ["best_epoch005_score0.7000.pth", "best_epoch002_score0.5000.pth",
                "best_epoch006_score0.4000.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected + ["best.json"])
    manifest = json.loads((tmp_path / "best.json").read_text())
    assert manifest["best"] == expected[0]
    assert manifest["checkpoints"] == [{"file": expected[0], "epoch": 5, "score": 0.7},
                                       {"file": expected[1], "epoch": 2, "score": 0.5},
                                       {"file": expected[2], "epoch": 6, "score": 0.4}]
    assert manager.best_path == tmp_path / expected[0]
    assert find_best_checkpoint(tmp_path) == tmp_path / expected[0]
    assert torch.load(manager.best_path, weights_only=True) == {"epoch": 5}
    assert manager.maybe_save_best({"epoch": 8}, float("nan"), 8) is False


def test_checkpoint_manager_same_epoch_replaces(tmp_path):
    manager, _ = _fill(tmp_path)
    assert manager.maybe_save_best({"epoch": 2}, 0.6, 2)
    assert [(e["epoch"], e["score"]) for e in manager.best] == [(5, 0.7), (2, 0.6), (6, 0.4)]
    assert not (tmp_path / "best_epoch002_score0.5000.pth").exists()


def test_checkpoint_manager_restore_from_manifest(tmp_path):
    manager, _ = _fill(tmp_path)
    other = CheckpointManager(tmp_path, keep=3)
    assert other.restore_best() == manager.best
    # resuming from a last.pth of epoch 4 drops (and deletes) the best entries of epochs 5, 6
    other.restore_best(max_epoch=4)
    assert [e["epoch"] for e in other.best] == [2]
    assert not (tmp_path / "best_epoch005_score0.7000.pth").exists()
    assert find_best_checkpoint(tmp_path).name == "best_epoch002_score0.5000.pth"


def test_save_and_load_last_resume(tmp_path):
    manager, _ = _fill(tmp_path)
    assert CheckpointManager(tmp_path / "fresh").load_last() is None
    model = torch.nn.Linear(2, 1)
    state = {"model": model.state_dict(), "epoch": 6, "rng": rng_state()}
    manager.save_last(state)
    resumed = CheckpointManager(tmp_path, keep=3)
    loaded = resumed.load_last()
    assert loaded["epoch"] == 6
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert resumed.best == manager.best  # every best entry survives, whatever "epoch" means
    # the epoch after last.pth is rerun with a different score: its entry is replaced
    assert resumed.maybe_save_best({"epoch": 6}, 0.45, 6)
    assert [(e["epoch"], e["score"]) for e in resumed.best] == [(5, 0.7), (2, 0.5), (6, 0.45)]
    assert not (tmp_path / "best_epoch006_score0.4000.pth").exists()


def test_find_best_checkpoint_missing(tmp_path):
    with pytest.raises(InputError) as info:
        find_best_checkpoint(tmp_path / "runs" / "REG" / "fold1",
                             hint="train it with: python 5fold_Train_Reg.py --exp REG --fold 1")
    message = str(info.value)
    assert "fold1" in message and "5fold_Train_Reg.py" in message and "\n" not in message


def test_load_corrupt_checkpoint_is_input_error(tmp_path):
    (tmp_path / "last.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot load checkpoint"):
        CheckpointManager(tmp_path).load_last()


# ----------------------------------------------------------------------------- guard, logging

def test_check_finite():
    check_finite({"seg": torch.tensor(0.5), "rs": 1.0}, 1, 2, "kept")
    with pytest.raises(TrainingDiverged) as info:
        check_finite({"seg": torch.tensor(0.5), "rnsf": torch.tensor(float("nan"))}, 3, 17,
                     "runs/SEG/fold1/last.pth; rerun with --resume")
    message = str(info.value)
    assert isinstance(info.value, InputError)
    assert "'rnsf'" in message and "epoch 3" in message and "iteration 17" in message
    assert "last good checkpoint is kept" in message and "runs/SEG/fold1/last.pth" in message
    assert "\n" not in message
    with pytest.raises(TrainingDiverged, match="'ncc' is inf"):
        check_finite({"ncc": float("inf")}, 0, 0)


def test_writer_and_run_dir(tmp_path):
    run_dir = run_dir_for(tmp_path, "EXP", 2)
    assert run_dir == tmp_path / "EXP" / "fold2"
    writer = make_writer(run_dir)
    writer.add_scalar("loss", 1.0, 0)
    writer.close()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())


# ----------------------------------------------------------------------------- visualise

def test_overlay_mask_colours():
    image = np.full((3, 4), 0.2, dtype=np.float32)
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True
    out = overlay_mask(image, mask, color=(1.0, 0.0, 0.0), alpha=0.5)
    assert out.shape == (3, 4, 3)
    np.testing.assert_allclose(out[1, 2], [0.6, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(out[0, 0], [0.2, 0.2, 0.2], atol=1e-6)


def test_tp_fp_fn_overlay_colours():
    pred = np.array([[1, 1, 0, 0]], bool)
    gt = np.array([[1, 0, 1, 0]], bool)
    exact = tp_fp_fn_overlay(np.zeros((1, 4)), pred, gt, alpha=1.0)
    assert exact.dtype == np.uint8
    assert exact[0].tolist() == [[0, 255, 0], [255, 0, 0], [0, 0, 255], [0, 0, 0]]
    blended = tp_fp_fn_overlay(np.full((1, 4), 51, np.uint8), pred, gt)  # 51 / 255 = 0.2
    assert blended[0].tolist() == [[26, 153, 26], [153, 26, 26], [26, 26, 153], [51, 51, 51]]


def test_image_grid_panel_layout():
    gray = np.full((4, 5), 0.5, dtype=np.float32)
    rgb = np.zeros((3, 2, 3), dtype=np.float32)
    rgb[..., 1] = 1.0
    panel = image_grid_panel([gray, torch.from_numpy(rgb)], pad=2, pad_value=1.0)
    assert panel.shape == (3, 4, 9) and panel.dtype == torch.float32
    assert torch.all(panel[:, :, :5] == 0.5)
    assert torch.all(panel[:, :, 5:7] == 1.0)
    assert panel[:, :3, 7:].permute(1, 2, 0).reshape(-1, 3).tolist() == [[0.0, 1.0, 0.0]] * 6
    assert torch.all(panel[:, 3, 7:] == 1.0)  # shorter image padded below


def test_deformation_grid():
    lines = grid_lines(16, 24, spacing=8)
    assert lines[0].all() and lines[8].all() and lines[:, 16].all() and not lines[3, 3]
    zero = deformation_grid(torch.zeros(2, 16, 24), spacing=8)
    np.testing.assert_allclose(zero, lines, atol=1e-5)
    shift = np.zeros((1, 2, 16, 24), np.float32)
    shift[:, 0] = 1.0  # sample one row below: horizontal lines move up by one row
    moved = deformation_grid(shift, spacing=8)
    np.testing.assert_allclose(moved[7], 1.0, atol=1e-5)
    np.testing.assert_allclose(moved[15], 0.0, atol=1e-5)  # samples row 16: outside, zero
    assert moved[8, 3] == pytest.approx(0.0, abs=1e-5)


def test_save_png_is_rgb(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    path = save_png(tmp_path / "sub" / "x.png", rgb)
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR
    assert back[0, 0].tolist() == [0, 0, 255]
    assert back[1, 1].tolist() == [0, 0, 0]


def test_save_epoch_and_resume_restore_every_stateful_object(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(7)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(tmp_path, keep=2)
    stateful = {"model": net, "optimizer": optimizer, "sampler": generator}
    assert manager.save_epoch(stateful, 0, 0.5, fold=1) == 0.5
    assert manager.save_epoch(stateful, 1, 0.3, fold=1) == 0.5  # best so far stays
    expected_weight = net.weight.detach().clone()
    expected_draw = torch.rand(3, generator=generator)
    expected_global = torch.rand(3)

    torch.manual_seed(123)
    fresh_net = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.Adam(fresh_net.parameters(), lr=0.1)
    fresh_generator = torch.Generator().manual_seed(99)
    done, best = CheckpointManager(tmp_path, keep=2).resume(
        {"model": fresh_net, "optimizer": fresh_optimizer, "sampler": fresh_generator}, "cpu", "test")
    assert (done, best) == (2, 0.5)
    assert torch.equal(fresh_net.weight, expected_weight)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(3, generator=fresh_generator), expected_draw)
    assert torch.equal(torch.rand(3), expected_global)


def test_an_epoch_that_is_not_selectable_writes_last_but_never_a_best_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    net = torch.nn.Linear(2, 1)
    assert manager.save_epoch({"model": net}, 0, 0.9, selectable=False) == -math.inf
    assert (tmp_path / "last.pth").is_file() and manager.best == [] and not (tmp_path / "best.json").exists()
    assert manager.save_epoch({"model": net}, 1, 0.4) == 0.4  # lower, but the first selectable one
    assert manager.save_epoch({"model": net}, 2, 0.95, selectable=False) == 0.4
    assert [e["epoch"] for e in manager.best] == [2]
    assert find_best_checkpoint(tmp_path).name == "best_epoch002_score0.4000.pth"
    assert sorted(p.name for p in tmp_path.glob("best_*.pth")) == ["best_epoch002_score0.4000.pth"]


def test_resume_without_last_starts_from_scratch(tmp_path, capsys):
    assert CheckpointManager(tmp_path).resume({}, "cpu", "fold 1") == (0, float("-inf"))
    assert "starting from scratch" in capsys.readouterr().out


def test_save_epoch_refuses_reserved_names(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        CheckpointManager(tmp_path).save_epoch({"rng": torch.Generator()}, 0, 1.0)


KEEP_FREED_MEMORY_PROBE = (
    "import ctypes, sys, numpy as np\n"
    "from utils.training.memory import keep_freed_memory\n"
    "class Info(ctypes.Structure):\n"
    "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',\n"
    "               'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
    "libc = ctypes.CDLL(None)\n"
    "ok = keep_freed_memory() if sys.argv[1] == 'on' else True\n"
    "if not hasattr(libc, 'mallinfo2'):\n"
    "    print(ok, 'no-mallinfo2'); sys.exit()\n"
    "libc.mallinfo2.restype = Info\n"
    "before = libc.mallinfo2().hblkhd\n"
    "a = np.ones(25_000_000, np.float32)\n"
    "print(ok, libc.mallinfo2().hblkhd - before)\n")


def _probe_keep_freed_memory(mode: str) -> tuple[bool, str]:
    """Run the probe in a fresh process (the setting is process-wide): (returned ok, mapped bytes)."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY_PROBE, mode], cwd=root, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", out[1]


def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    """Without the call glibc mmaps a 100 MB block (and unmaps it on free, so every
    reuse faults its pages in again); after it, the block comes from the heap.
    On glibc the call must succeed: a False there is a failure, not a skip."""
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: keep_freed_memory does nothing here by design")
    ok, mapped_on = _probe_keep_freed_memory("on")
    assert ok, "keep_freed_memory() returned False on glibc"
    if mapped_on == "no-mallinfo2":
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe the heap with (the call itself succeeded)")
    _, mapped_off = _probe_keep_freed_memory("off")
    assert int(mapped_off) >= 100_000_000  # default: the block is its own mmap
    assert int(mapped_on) == 0  # kept on the heap, reused after free


def test_keep_freed_memory_is_not_called_by_device_selection():
    """Selecting a device leaves the allocator alone: a 100 MB block is still mmapped."""
    import subprocess
    import sys
    code = KEEP_FREED_MEMORY_PROBE.replace("ok = keep_freed_memory() if sys.argv[1] == 'on' else True",
                                           "from utils.training.runtime import select_device\n"
                                           "select_device('cpu'); ok = True")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, "on"], cwd=root, capture_output=True, text=True,
                         check=True).stdout.split()
    if out[1] == "no-mallinfo2":
        pytest.skip("no mallinfo2 to observe the heap with")
    assert int(out[1]) >= 100_000_000


# ----------------------------------------------------------------------------- run folders, files

def test_overwrite_removes_the_earlier_run_and_nothing_else(tmp_path):
    from utils.training.checkpoints import prepare_run_dir
    run_dir = tmp_path / "EXP" / "fold1"
    run_dir.mkdir(parents=True)
    earlier = ["last.pth", "best_epoch003_score0.5000.pth", "best.json", "events.out.tfevents.1.host"]
    kept = ["notes.txt", "predictions.csv"]
    for name in earlier + kept:
        (run_dir / name).write_text(name)
    (run_dir / "test").mkdir()
    (run_dir / "test" / "per_image.csv").write_text("x")
    sibling = tmp_path / "EXP" / "fold2" / "last.pth"
    sibling.parent.mkdir()
    sibling.write_text("other fold")
    with pytest.raises(InputError, match="--resume.*--overwrite"):
        prepare_run_dir(run_dir, resume=False, overwrite=False)
    assert all((run_dir / name).exists() for name in earlier)  # refusing deletes nothing
    prepare_run_dir(run_dir, resume=False, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(kept + ["test"])
    assert (run_dir / "test" / "per_image.csv").read_text() == "x"
    assert sibling.read_text() == "other fold"
    assert prepare_run_dir(run_dir, resume=True, overwrite=False) == run_dir  # resume keeps everything


def test_atomic_write_json_round_trip_and_failure_keeps_old(tmp_path):
    from utils.files import atomic_write, atomic_write_json
    path = tmp_path / "sub" / "a.json"
    atomic_write_json({"a": [1, 2]}, path, indent=1)
    assert json.loads(path.read_text()) == {"a": [1, 2]} and path.read_text().endswith("\n")

    def failing(handle):
        handle.write("{broken")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing, "w")
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]

"""run_demo.py: the seeds it trains, one thread per run, side by side, and the comparison last
(the commands are recorded, not run)."""
from __future__ import annotations

import pytest

import run_demo
from utils.errors import InputError


def test_seeds_are_a_count_or_a_list():
    assert run_demo.chosen_seeds([3]) == [3407, 3417, 3427]
    assert run_demo.chosen_seeds([1]) == [3407]
    assert run_demo.chosen_seeds([5, 9]) == [5, 9]
    with pytest.raises(InputError, match="repeated"):
        run_demo.chosen_seeds([5, 5])
    with pytest.raises(InputError, match=">= 1"):
        run_demo.chosen_seeds([0])


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_every_method_trains_once_per_seed_on_one_thread_then_the_comparison(tmp_path, monkeypatch, jobs):
    (tmp_path / "data" / "Image").mkdir(parents=True)  # an existing data set: not generated again
    serial, parallel = [], []
    monkeypatch.setattr(run_demo, "run_in_order", lambda commands: serial.extend(commands))
    monkeypatch.setattr(run_demo, "run_parallel", lambda tasks, after, j, logs: parallel.append((tasks, j)))
    run_demo.main(["--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), "--seeds", "2",
                   "--jobs", jobs])
    trained = [c for _, c in parallel[0][0]] if parallel else serial[1:-2]
    assert (parallel[0][1] == 2) if jobs == "2" else not parallel
    runs = sorted((c[c.index("--exp") + 1], c[c.index("--seeds") + 1]) for c in trained if "--seeds" in c)
    assert runs == [("demo_SS-MGS", "3407"), ("demo_SS-MGS", "3417"),
                    ("demo_supervised", "3407"), ("demo_supervised", "3417")]
    training = [c for c in trained if "--epochs" in c]
    assert len(training) == 5 and all(c[c.index("--threads") + 1] == "1" for c in training)  # with registration
    assert serial[0][:3] == ["python", "-m", "utils.make_folds"]
    assert serial[-1][:4] == ["python", "5fold_Test_Reg_or_Seg.py", "--mode", "seg"]
    assert serial[-1][serial[-1].index("--exp") + 1:][:2] == ["demo_supervised", "demo_SS-MGS"]

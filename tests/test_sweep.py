"""python -m utils.sweep: the grid's commands printed, as a SLURM script (run against a stand-in
sbatch) and run here in order; the methods come from the registry."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import utils.sweep as sweep
from utils.training import commands
from utils.training.sweep import AFTER
from utils.errors import InputError
from utils.stages.segmentation_methods import METHODS

# one method that needs the registration network and one that does not, whatever the registry holds
WITH_REG = next(name for name, m in METHODS.items() if m.uses_registration)
WITHOUT = next(name for name, m in METHODS.items() if not m.uses_registration)
GRID = ["--data-dir", "D", "--methods", WITHOUT, WITH_REG, "--folds", "1,3", "--seeds", "7", "17",
        "--device", "cpu", "--seg-args", "--epochs 2"]
WHERE = "--data-dir D --runs-dir runs --device cpu"


def expected_lines() -> list[str]:
    seg = "python 5fold_Train_SS_MGS.py " + WHERE
    return (["python -m utils.prealign D",
             f"python 5fold_Train_Reg.py {WHERE} --fold 1 --exp REG",
             f"python 5fold_Train_Reg.py {WHERE} --fold 3 --exp REG"]
            + [f"{seg} --fold {k} --seeds {s} --exp {WITH_REG} --method {WITH_REG} --reg-exp REG --epochs 2"
               for k in (1, 3) for s in (7, 17)]
            + [f"{seg} --fold {k} --seeds {s} --exp {WITHOUT} --method {WITHOUT} --epochs 2" for k in (1, 3) for s in (7, 17)]
            + [f"python 5fold_Test_Reg_or_Seg.py --mode seg {WHERE} --fold 1,3 --exp {WITHOUT} {WITH_REG}"])


def test_print_writes_one_command_per_line_in_a_working_order(capsys):
    sweep.main([*GRID, "--print"])
    assert capsys.readouterr().out.splitlines() == expected_lines()


def test_registration_per_seed_and_a_grid_without_registration(capsys):
    sweep.main(["--data-dir", "D", "--methods", WITH_REG, "--folds", "2", "--seeds", "7", "17", "--print",
                "--reg-per-seed", "--exp-prefix", "X_", "--resume"])
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "Train_Reg" in line] == [
        f"python 5fold_Train_Reg.py --data-dir D --runs-dir runs --device auto --fold 2 --exp REG --seeds {s} --resume"
        for s in (7, 17)]
    assert lines[-1].endswith(f"--fold 2 --exp X_{WITH_REG}") and all("--resume" in line for line in lines[1:-1])
    sweep.main(["--data-dir", "D", "--methods", WITHOUT, "--folds", "all", "--print"])
    lines = capsys.readouterr().out.splitlines()
    assert not any("Train_Reg" in line for line in lines) and len(lines) == 1 + 5 + 1
    assert lines[-1].endswith(f"--fold all --exp {WITHOUT}")


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_slurm_script_submits_arrays_with_dependencies_and_runs_one_task(tmp_path, monkeypatch):
    """A stand-in sbatch records each submission and answers job ids 101, 102, ...; a task then
    runs its one command (a stand-in python echoes it) in the repository root."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "sweep.sh"
    sweep.main([*GRID, "--slurm", str(script), "--sbatch-args", "--gres=gpu:1 --time=2:00:00",
                "--setup", "echo set-up-ran"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "sbatch", 'n=$(( $(wc -l < "$LOG" 2>/dev/null || echo 0) + 101 ))\necho "$n $*" >> "$LOG"\n'
                            'echo "$n;cluster"\n')
    fake(bin_dir, "python", 'echo "ran in $PWD: python $*"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(tmp_path / "sbatch.log")}
    env.pop("SWEEP_PART", None)
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True)
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    parts = [call.split("SWEEP_PART=")[1].split()[0] for call in calls]
    assert parts == ["prepare", "registration", "segmentation", "independent", "gather"]
    assert all("--gres=gpu:1 --time=2:00:00" in call and call.endswith(str(script)) for call in calls)
    assert "--array=0-1 --dependency=afterok:101" in calls[1]  # 2 folds after prepare
    assert "--array=0-3 --dependency=afterok:102" in calls[2]  # 2 folds x 2 seeds after registration
    assert "--array=0-3 --dependency=afterok:101" in calls[3]  # the other method needs prepare only
    assert "--dependency=afterok:103:104" in calls[4] and "--array" not in calls[4]
    assert "gather 105" in done.stdout
    lines = expected_lines()
    for part, index, want in [("segmentation", 2, lines[5]), ("independent", 3, lines[10]), ("gather", 0, lines[-1])]:
        task = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True, cwd="/",
                              env={**env, "SWEEP_PART": part, "SLURM_ARRAY_TASK_ID": str(index)})
        assert task.stdout.splitlines() == ["set-up-ran", f"ran in {tmp_path}: {want}"]


def test_run_here_runs_every_command_in_order_and_stops_at_a_failure(monkeypatch, capsys):
    ran = []

    def record(command, fail_on=None):
        ran.append(command)
        return subprocess.CompletedProcess(command, 1 if fail_on and fail_on in command else 0)

    monkeypatch.setattr(commands.subprocess, "run", record)
    sweep.main(GRID)
    assert [" ".join(["python", *c[1:]]) for c in ran] == expected_lines()
    assert all(c[0] == sys.executable for c in ran)
    ran.clear()
    monkeypatch.setattr(commands.subprocess, "run", lambda c: record(c, fail_on="5fold_Train_Reg.py"))
    with pytest.raises(InputError, match="step failed.*--fold 1 --exp REG.*--resume"):
        sweep.main(GRID)
    assert len(ran) == 2  # prepare, then the failing registration; nothing after it


def test_parallel_commands_wait_for_the_parts_they_need(tmp_path):
    """Two at once: the registration-free run overlaps registration, the registration
    methods' runs start only after it ended, the gather after all; logs per command."""
    events = tmp_path / "events"

    def step(name: str, seconds: float = 0.0, code: int = 0) -> list[str]:
        body = (f"import time; open({str(events)!r}, 'a').write('start {name}\\n'); time.sleep({seconds}); "
                f"open({str(events)!r}, 'a').write('end {name}\\n'); print('last words of {name}'); exit({code})")
        return ["python", "-c", body, "--exp", name]

    tasks = [("prepare", step("P")), ("registration", step("R", 1.0)), ("segmentation", step("S1")),
             ("segmentation", step("S2")), ("independent", step("I", 0.2)), ("gather", step("G"))]
    said = []
    commands.run_parallel(tasks, AFTER, jobs=2, log_dir=tmp_path / "logs", echo=said.append)
    order = events.read_text().split("\n")[:-1]
    at = {event: i for i, event in enumerate(order)}
    assert at["end P"] < at["start R"] and at["end P"] < at["start I"]
    assert at["start I"] < at["end R"]  # independent of registration: ran beside it
    assert at["end R"] < at["start S1"] and at["end R"] < at["start S2"]
    assert max(at["end S1"], at["end S2"], at["end I"]) < at["start G"]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert len(logs) == 6 and "004_-c_I.log" in logs
    assert (tmp_path / "logs" / "004_-c_I.log").read_text() == "last words of I\n"
    assert any(line.startswith("done in") and line.endswith("last words of G") for line in said)
    failing = [("prepare", step("P2")), ("registration", step("R2", code=3)), ("segmentation", step("S3"))]
    with pytest.raises(InputError, match=r"step failed \(exit 3\).*its output: .*001_-c_R2.log"):
        commands.run_parallel(failing, AFTER, jobs=2, log_dir=tmp_path / "logs2", echo=said.append)
    assert "start S3" not in events.read_text()


@pytest.mark.parametrize("extra, message", [
    (["--methods", "no-such-method"], "unknown method"),
    (["--seeds", "1", "1"], "repeated"),
    (["--sbatch-args=--gres=gpu:1"], "belong to --slurm"),
    (["--folds", "6"], "--fold must be"),
])
def test_bad_input_is_one_line_error(extra, message):
    with pytest.raises(InputError, match=message):
        sweep.main([*GRID, "--print", *extra])

"""Running a plan's commands on this machine: one after the other (their output on the
terminal), or several at once, each into its own log file, a command starting only once
every command of the parts it needs has finished.

A task is ``(part, command)``; ``command`` is an argument list whose ``"python"`` means this
interpreter. A failed command stops the plan with a one-line :class:`InputError` (in
parallel: no new command starts, the running ones finish, the failed one's log is named).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from utils.errors import InputError

Task = tuple[str, list[str]]
POLL_SECONDS = 0.5


def _argv(command: Sequence[str]) -> list[str]:
    return [sys.executable if word == "python" else word for word in command]


def _failed(command: Sequence[str], code: int, log: Path | None = None) -> InputError:
    where = f"; its output: {log}" if log else ""
    return InputError(f"step failed (exit {code}): {shlex.join(command)}{where}; the runs before it are kept "
                      f"(rerun with --resume to continue them)")


def run_in_order(commands: Sequence[Sequence[str]], echo: Callable[[str], None] = print) -> None:
    """Run each command in turn, its output on the terminal; stop at the first failure."""
    for command in commands:
        echo(f"\n$ {shlex.join(command)}")
        sys.stdout.flush()
        code = subprocess.run(_argv(command)).returncode
        if code != 0:
            raise _failed(command, code)


def log_name(index: int, command: Sequence[str]) -> str:
    """``<index>_<script or module>[_<exp>][_fold<K>][_seed<S>].log`` from a command's words."""
    words = list(command) + [""]
    script = words[2] if words[1] == "-m" else Path(words[1]).stem
    parts = [f"{index:03d}", script]
    for flag, prefix in (("--exp", ""), ("--fold", "fold"), ("--seeds", "seed")):
        if flag in words[:-1]:
            parts.append(prefix + words[words.index(flag) + 1])
    return re.sub(r"[^A-Za-z0-9_.,-]+", "-", "_".join(parts)) + ".log"


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").replace("\r", "\n").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def run_parallel(tasks: Sequence[Task], after: Mapping[str, Sequence[str]], jobs: int, log_dir: Path,
                 echo: Callable[[str], None] = print) -> None:
    """Run ``tasks`` with up to ``jobs`` at once; a task of part P starts once no task of a part in
    ``after[P]`` is waiting or running. Each command's output goes to ``log_dir/<log_name>``;
    its start and its end (with the log's last line) are echoed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = [(i, part, list(command)) for i, (part, command) in enumerate(tasks)]
    running: list[tuple[int, str, list[str], subprocess.Popen, Path, float]] = []
    failure: InputError | None = None
    while waiting or running:
        busy = {part for _, part, _ in waiting} | {part for _, part, _, _, _, _ in running}
        while failure is None and len(running) < jobs:
            ready = next((t for t in waiting if not busy & set(after.get(t[1], ()))), None)
            if ready is None:
                break
            waiting.remove(ready)
            index, part, command = ready
            log = log_dir / log_name(index, command)
            with open(log, "w") as handle:
                process = subprocess.Popen(_argv(command), stdout=handle, stderr=subprocess.STDOUT)
            echo(f"$ {shlex.join(command)}  > {log}")
            running.append((index, part, command, process, log, time.time()))
        time.sleep(POLL_SECONDS)
        for entry in list(running):
            index, part, command, process, log, started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            minutes = (time.time() - started) / 60
            if process.returncode != 0:
                echo(f"FAILED after {minutes:.1f} min: {shlex.join(command)}; last line: {_last_line(log)}")
                failure = failure or _failed(command, process.returncode, log)
            else:
                echo(f"done in {minutes:.1f} min: {log.name}: {_last_line(log)}")
        if failure is not None:
            waiting.clear()
    if failure is not None:
        raise failure

"""A comparison grid, methods x folds x seeds, as the commands a user would type.

The command is ``python -m utils.sweep``; this module builds its plan from a method
table (name -> whether the method needs a trained registration network, read from
the method registry by the command) and writes it out:

1. ``prepare``: ``python -m utils.prealign DATA_DIR``, the affine cache every trainer reads;
2. ``registration``: ``5fold_Train_Reg.py`` per fold (``RUNS/REG_EXP/fold<K>``, one model
   serving every seed), or per fold and seed with ``reg_per_seed``
   (``RUNS/REG_EXP/seed<S>/fold<K>``); only when a method needs it;
3. ``segmentation``: ``5fold_Train_SS_MGS.py --method M --fold K --seeds S`` per method,
   fold and seed, into ``RUNS/<prefix><M>/seed<S>/fold<K>``;
4. ``gather``: one ``5fold_Test_Reg_or_Seg.py --mode seg`` over every experiment, the
   first method named as the reference.

A SLURM script (:func:`slurm_script`) submits 1 as a job, 2 and the registration
methods' part of 3 as job arrays (3 after 2), the other methods' part of 3 after 1,
and 4 after all of 3.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

PREPARE, REGISTRATION, SEGMENTATION, INDEPENDENT, GATHER = (
    "prepare", "registration", "segmentation", "independent", "gather")
#: The parts each part waits for (here and in the SLURM script).
AFTER = {REGISTRATION: (PREPARE,), SEGMENTATION: (REGISTRATION,), INDEPENDENT: (PREPARE,),
         GATHER: (SEGMENTATION, INDEPENDENT)}


@dataclass
class SweepPlan:
    """The commands of a sweep (each an argument list starting with ``python``), by part:
    ``segmentation`` holds the runs of methods that need registration, ``independent``
    those of the others."""

    prepare: list[list[str]] = field(default_factory=list)
    registration: list[list[str]] = field(default_factory=list)
    segmentation: list[list[str]] = field(default_factory=list)
    independent: list[list[str]] = field(default_factory=list)
    gather: list[list[str]] = field(default_factory=list)

    def parts(self) -> list[tuple[str, list[list[str]]]]:
        """``(name, commands)`` in the order they may run one after the other."""
        return [(PREPARE, self.prepare), (REGISTRATION, self.registration), (SEGMENTATION, self.segmentation),
                (INDEPENDENT, self.independent), (GATHER, self.gather)]

    def commands(self) -> list[list[str]]:
        return [command for _, commands in self.parts() for command in commands]

    def tasks(self, parts: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
        """``(part, command)`` of ``parts`` (default: all), in order."""
        return [(name, command) for name, commands in self.parts() if parts is None or name in parts
                for command in commands]


def experiment_name(method: str, prefix: str = "") -> str:
    """The experiment (folder under RUNS) of a method's runs: ``<prefix><method>``."""
    return f"{prefix}{method}"


def fold_text(folds: Sequence[int]) -> str:
    """``--fold`` of the gather command: ``all`` for the five folds, else ``1,3``."""
    return "all" if sorted(folds) == [1, 2, 3, 4, 5] else ",".join(str(k) for k in folds)


def build_plan(methods: Sequence[str], needs_registration: Mapping[str, bool], folds: Sequence[int],
               seeds: Sequence[int], data_dir: str, runs_dir: str = "runs", device: str = "auto",
               reg_exp: str = "REG", prefix: str = "", reg_per_seed: bool = False,
               resize: Sequence[int] | None = None, reg_args: Sequence[str] = (), seg_args: Sequence[str] = (),
               resume: bool = False, names: Mapping[str, str] | None = None) -> SweepPlan:
    """The commands of ``methods`` x ``folds`` x ``seeds`` (module docstring). ``reg_args`` /
    ``seg_args``: extra flags of every registration / segmentation command (common
    trainer flags such as ``--epochs``; a method's own flag would fail the other methods).
    ``names``: experiment names of (some) methods instead of ``<prefix><method>``."""
    names = {m: (names or {}).get(m) or experiment_name(m, prefix) for m in methods}
    size = ["--resize", *map(str, resize)] if resize else []
    where = ["--data-dir", str(data_dir), "--runs-dir", str(runs_dir), "--device", device, *size]
    again = ["--resume"] if resume else []
    plan = SweepPlan(prepare=[["python", "-m", "utils.prealign", str(data_dir), *size]])
    if any(needs_registration[m] for m in methods):
        plan.registration = [["python", "5fold_Train_Reg.py", *where, "--fold", str(k), "--exp", reg_exp,
                              *(["--seeds", str(s)] if reg_per_seed else []), *reg_args, *again]
                             for s in (seeds if reg_per_seed else seeds[:1]) for k in folds]
    for method in methods:
        uses = needs_registration[method]
        runs = [["python", "5fold_Train_SS_MGS.py", *where, "--fold", str(k), "--seeds", str(s),
                 "--exp", names[method], "--method", method,
                 *(["--reg-exp", reg_exp] if uses else []), *seg_args, *again] for k in folds for s in seeds]
        (plan.segmentation if uses else plan.independent).extend(runs)
    plan.gather = [["python", "5fold_Test_Reg_or_Seg.py", "--mode", "seg", *where, "--fold", fold_text(folds),
                    "--exp", *(names[m] for m in methods)]]
    return plan


def command_lines(plan: SweepPlan) -> list[str]:
    """One shell command per line, in an order that works run one after the other."""
    return [shlex.join(command) for command in plan.commands()]


def _bash_array(name: str, commands: list[list[str]]) -> str:
    if not commands:
        return f"{name}=()"
    return f"{name}=(\n" + "\n".join(f"  {shlex.quote(shlex.join(c))}" for c in commands) + "\n)"


def _submissions(plan: SweepPlan) -> list[str]:
    """The bash lines that submit each part after the parts it needs and echo the job ids."""
    lines, submitted = [f"{PREPARE}=$(submit {PREPARE} %x-%j.out)"], [PREPARE]
    for name, commands in plan.parts()[1:]:
        if commands:
            waits = ":".join(f"${part}" for part in AFTER[name] if part in submitted)
            array = f" --array=0-{len(commands) - 1}" if name != GATHER else ""
            log = "%x-%A_%a.out" if array else "%x-%j.out"
            lines.append(f"{name}=$(submit {name} {log}{array} --dependency=afterok:{waits})")
            submitted.append(name)
    return lines + ['echo "submitted: ' + ", ".join(f"{job} ${job}" for job in submitted) + '"']


def slurm_script(plan: SweepPlan, root: str | Path, sbatch_args: Sequence[str] = (), setup: str = "",
                 title: str = "SS-MGS sweep") -> str:
    """A bash script that, run as ``bash SCRIPT``, submits the plan with ``sbatch``: prepare; the
    registration array after it; the registration methods' segmentation array after the
    registration array; the other methods' array after prepare; the gather job after both
    arrays. Each array task runs one command (``SLURM_ARRAY_TASK_ID`` indexes its part's
    list) in ``root``, after ``setup`` (e.g. activating the environment); every job gets
    ``sbatch_args``; logs go to ``root/slurm_logs/``."""
    runs = len(plan.segmentation) + len(plan.independent)
    lines = ["#!/bin/bash", f"# {title}: {len(plan.registration)} registration and {runs} segmentation runs.",
             "# Submit everything with: bash THIS_FILE (jobs wait for the ones they need).",
             "set -euo pipefail", f"ROOT={shlex.quote(str(root))}",
             "SBATCH_ARGS=(" + " ".join(shlex.quote(a) for a in sbatch_args) + ")"]
    lines += [_bash_array(name.upper(), commands) for name, commands in plan.parts()]
    lines += ["", 'if [[ -n "${SWEEP_PART:-}" ]]; then  # inside a job: run this task\'s command',
              '  cd "$ROOT"', *([f"  {setup}"] if setup else []), '  case "$SWEEP_PART" in']
    lines += [f'    {name}) eval "${{{name.upper()}[${{SLURM_ARRAY_TASK_ID:-0}}]}}" ;;' for name, _ in plan.parts()]
    lines += ["  esac", "  exit", "fi", "",
              'SCRIPT=$(readlink -f "$0")',
              'mkdir -p "$ROOT/slurm_logs"',
              "submit() {  # PART LOG [sbatch flags]: submit this script for PART, print the job id",
              "  local part=$1 log=$2 id; shift 2",
              '  id=$(sbatch --parsable ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"} --job-name="sweep-$part" '
              '--output="$ROOT/slurm_logs/$log" --export="ALL,SWEEP_PART=$part" "$@" "$SCRIPT")',
              '  echo "${id%%;*}"',
              "}"]
    return "\n".join(lines + _submissions(plan)) + "\n"

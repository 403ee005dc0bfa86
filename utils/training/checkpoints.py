"""Run folders and checkpoints: last, best-N with a manifest, resume with RNG state,
and loading a trained network from a checkpoint file.

Run folder layout (``run_dir = RUNS/EXP/fold<K>`` for the one run of ``--seed``,
``RUNS/EXP/seed<S>/fold<K>`` for each seed of ``--seeds``)::

    last.pth                              latest state, for --resume
    best_epoch{E:03d}_score{S:.4f}.pth    the best ``keep`` checkpoints by score
    best.json                             manifest: {"best": file, "checkpoints": [...]}
    events.out.tfevents.*                 TensorBoard

Checkpoint states are plain containers (dict / list / tuple / str / numbers /
None) and tensors, so they load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from utils.errors import InputError
from utils.files import atomic_save, atomic_write_json
from utils.training.rng_state import restore_rng_state, rng_state

LAST_NAME = "last.pth"
MANIFEST_NAME = "best.json"
SEED_FOLDER = re.compile(r"seed(-?\d+)")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by this module (``weights_only=True``); InputError if unreadable."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found")
    except Exception as exc:  # truncated / foreign / corrupt file
        raise InputError(f"{path}: cannot load checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it or retrain")


def load_network(path: str | Path, net: torch.nn.Module, device: torch.device,
                 state: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Load ``path`` (a trainer checkpoint dict with ``"model"``, or a bare state dict)
    into ``net``; returns ``(net on device in eval mode, checkpoint dict)``. A checkpoint
    of another network is a one-line InputError. ``state``: the file's content when the
    caller has already read it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    state = load_checkpoint(path, map_location=device) if state is None else state
    weights = state["model"] if isinstance(state, dict) and "model" in state else state
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} does not match the {type(net).__name__} network ({first}); "
                         f"did you pass a checkpoint of the other stage?") from None
    net.to(device).eval()
    return net, state if isinstance(state, dict) else {}


def _state_of(obj: Any) -> Any:
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


def _best_name(epoch: int, score: float) -> str:
    return f"best_epoch{int(epoch):03d}_score{score:.4f}.pth"


class CheckpointManager:
    """``last.pth`` plus the best ``keep`` checkpoints of a run folder (higher score is better).

    The best list is ``[{"file", "epoch", "score"}, ...]`` sorted by score, highest
    first (ties: earlier epoch first); it is mirrored in ``best.json``, written
    atomically after each change. On resume call :meth:`restore_best` (or
    :meth:`load_last`, which does so) to read the list back from the manifest.
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int = 10) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.keep = int(keep)
        self.best: list[dict[str, Any]] = []

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_NAME

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @property
    def best_path(self) -> Path | None:
        """Path of the top checkpoint, or None before any was saved."""
        return self.run_dir / self.best[0]["file"] if self.best else None

    def save_last(self, state: Mapping[str, Any]) -> Path:
        """Write ``state`` (model, optimizer, scheduler, epoch, :func:`rng_state`, ...) to last.pth."""
        return atomic_save(dict(state), self.last_path)

    def load_last(self, map_location: Any = "cpu") -> dict | None:
        """The last.pth state, or None if there is none; also restores the best list from
        the manifest (:meth:`restore_best`). A best entry written after last.pth (crash
        between the two) is kept; when its epoch is rerun, :meth:`maybe_save_best`
        replaces it, because entries are keyed by epoch."""
        if not self.last_path.is_file():
            return None
        state = load_checkpoint(self.last_path, map_location)
        self.restore_best()
        return state

    def restore_best(self, max_epoch: int | None = None) -> list[dict[str, Any]]:
        """Read the best list from ``best.json`` (empty if absent). Entries whose file is
        gone are dropped; with ``max_epoch`` (in the numbering passed to
        :meth:`maybe_save_best`), entries of later epochs are dropped and their files deleted."""
        self.best = []
        if self.manifest_path.is_file():
            try:
                entries = json.loads(self.manifest_path.read_text())["checkpoints"]
                entries = [{"file": str(e["file"]), "epoch": int(e["epoch"]),
                            "score": float(e["score"])} for e in entries]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{self.manifest_path}: malformed checkpoint manifest ({exc}); "
                                 "delete it to start the best list afresh") from None
            for entry in entries:
                path = self.run_dir / entry["file"]
                if max_epoch is not None and entry["epoch"] > max_epoch:
                    path.unlink(missing_ok=True)
                elif path.is_file():
                    self.best.append(entry)
        self._sort()
        self._write_manifest()
        return list(self.best)

    def maybe_save_best(self, state: Mapping[str, Any], score: float, epoch: int) -> bool:
        """Save ``state`` as a best checkpoint if ``score`` ranks among the best ``keep``.

        A non-finite score is never saved. An entry of the same epoch (a repeated epoch
        after resume) is replaced. Checkpoints that fall out of the list are deleted
        after the manifest is updated. Returns whether ``state`` was saved.
        """
        score = float(score)
        if not math.isfinite(score):
            return False
        stale = [e for e in self.best if e["epoch"] == int(epoch)]
        others = [e for e in self.best if e["epoch"] != int(epoch)]
        if len(others) >= self.keep and score <= min(e["score"] for e in others):
            return False
        entry = {"file": _best_name(epoch, score), "epoch": int(epoch), "score": score}
        atomic_save(dict(state), self.run_dir / entry["file"])
        self.best = others + [entry]
        self._sort()
        dropped = self.best[self.keep:] + [e for e in stale if e["file"] != entry["file"]]
        self.best = self.best[:self.keep]
        self._write_manifest()
        for old in dropped:
            (self.run_dir / old["file"]).unlink(missing_ok=True)
        return True

    def save_epoch(self, stateful: Mapping[str, Any], epoch: int, score: float, selectable: bool = True,
                   **extra: Any) -> float:
        """End of (0-based) ``epoch``: a best checkpoint if ``score`` ranks (and the epoch is
        ``selectable``: one that is not never enters the best list), then last.pth.

        ``stateful``: name -> model / optimizer / scheduler / GradScaler (``state_dict``)
        or ``torch.Generator`` (``get_state``); ``extra`` (args, fold, ...) is stored
        as is. Returns the best score so far (-inf before a selectable epoch had a finite score).
        """
        reserved = {"rng", "best_score", "epoch", "score"} & (set(stateful) | set(extra))
        if reserved:
            raise ValueError(f"save_epoch: names {sorted(reserved)} are reserved")
        state = {name: _state_of(obj) for name, obj in stateful.items()}
        state.update(extra, epoch=int(epoch), score=float(score))
        if selectable:
            self.maybe_save_best(state, score, epoch + 1)
        best = self.best[0]["score"] if self.best else -math.inf
        state.update(rng=rng_state(), best_score=best)
        self.save_last(state)
        return best

    def resume(self, stateful: Mapping[str, Any], map_location: Any, label: str = "") -> tuple[int, float]:
        """Load last.pth into ``stateful`` (as for :meth:`save_epoch`) and the global RNGs.

        Returns ``(epochs done, best score)``; ``(0, -inf)`` with a message when there
        is no last.pth.
        """
        state = self.load_last(map_location)
        if state is None:
            print(f"{label}: no {self.last_path} to resume from; starting from scratch")
            return 0, -math.inf
        for name, obj in stateful.items():
            if isinstance(obj, torch.Generator):
                obj.set_state(state[name])
            else:
                obj.load_state_dict(state[name])
        restore_rng_state(state["rng"])
        done = int(state["epoch"]) + 1
        print(f"{label}: resumed from {self.last_path} after epoch {done}")
        return done, float(state.get("best_score", -math.inf))

    def _sort(self) -> None:
        self.best.sort(key=lambda e: (-e["score"], e["epoch"]))

    def _write_manifest(self) -> None:
        if not self.best and not self.manifest_path.exists():
            return
        atomic_write_json({"best": self.best[0]["file"] if self.best else None,
                           "checkpoints": self.best}, self.manifest_path)


def find_best_checkpoint(run_dir: str | os.PathLike, hint: str | None = None) -> Path:
    """Path of the top checkpoint listed in ``run_dir/best.json``.

    Raises InputError naming ``run_dir`` when there is none; ``hint`` says which
    command creates it (e.g. ``"train it with: python 5fold_Train_Reg.py ..."``).
    """
    run_dir = Path(run_dir)
    manifest = run_dir / MANIFEST_NAME
    tail = f"; {hint}" if hint else ""
    if not manifest.is_file():
        raise InputError(f"{run_dir}: no best checkpoint ({MANIFEST_NAME} missing){tail}")
    try:
        name = json.loads(manifest.read_text())["best"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest}: malformed checkpoint manifest ({exc}){tail}") from None
    if not name:
        raise InputError(f"{run_dir}: no best checkpoint saved yet{tail}")
    path = run_dir / str(name)
    if not path.is_file():
        raise InputError(f"{path}: listed in {manifest} but missing{tail}")
    return path


def run_dir_for(runs_dir: str | os.PathLike, exp: str, fold: int | str, seed: int | None = None) -> Path:
    """``RUNS/EXP/fold<K>`` (``seed`` None: the single-seed layout) or ``RUNS/EXP/seed<S>/fold<K>``."""
    base = Path(runs_dir) / exp
    return (base if seed is None else base / f"seed{int(seed)}") / f"fold{fold}"


@dataclass(frozen=True)
class Run:
    """One trained run of an experiment: its fold, the seed of its ``seed<S>`` folder (None
    for the single-seed folder ``RUNS/EXP/fold<K>``, whose seed is in its checkpoint) and
    its folder."""

    fold: int
    seed: int | None
    run_dir: Path


def find_runs(runs_dir: str | os.PathLike, exp: str, fold: int, hint: str | None = None) -> list[Run]:
    """The runs of ``exp`` for ``fold`` that hold a best checkpoint: every
    ``RUNS/EXP/seed<S>/fold<K>`` (by seed), or, when there is none, ``RUNS/EXP/fold<K>``.
    The single-seed folder beside seed folders is left out with a printed note (it would
    count a seed twice or mix layouts; move it to ``seed<S>/`` to include it). InputError
    (with ``hint``) when there is no run at all."""
    base = Path(runs_dir) / exp
    seeds = []
    if base.is_dir():
        for child in base.iterdir():
            match = SEED_FOLDER.fullmatch(child.name)
            if match and (child / f"fold{fold}" / MANIFEST_NAME).is_file():
                seeds.append(int(match.group(1)))
    single = run_dir_for(runs_dir, exp, fold)
    if not seeds:
        if not (single / MANIFEST_NAME).is_file():
            raise InputError(f"{single}: no best checkpoint ({MANIFEST_NAME} missing), and no "
                             f"{base}/seed<S>/fold{fold} either" + (f"; {hint}" if hint else ""))
        return [Run(int(fold), None, single)]
    if (single / MANIFEST_NAME).is_file():
        print(f"note: {single} is not used beside the seed folders of {base} (move it to "
              f"{base}/seed<S>/fold{fold} to count it as the run of seed S)")
    return [Run(int(fold), seed, run_dir_for(runs_dir, exp, fold, seed)) for seed in sorted(seeds)]


def run_dir_serving_seed(runs_dir: str | os.PathLike, exp: str, fold: int, seed: int) -> Path:
    """The run of ``exp`` that serves a run of seed ``seed`` (the registration model of a
    segmentation run): ``RUNS/EXP/seed<S>/fold<K>`` when it holds a best checkpoint, else
    ``RUNS/EXP/fold<K>`` (one model of the fold for every seed)."""
    seeded = run_dir_for(runs_dir, exp, fold, seed)
    return seeded if (seeded / MANIFEST_NAME).is_file() else run_dir_for(runs_dir, exp, fold)


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Create ``run_dir`` for a run; never mix a fresh run with an earlier one's files.

    Without ``resume``, earlier checkpoints (``*.pth``, ``best.json``) and TensorBoard
    events are an InputError unless ``overwrite``, which deletes them first.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        return run_dir
    earlier = [p for p in run_dir.iterdir()
               if p.suffix == ".pth" or p.name == MANIFEST_NAME or p.name.startswith("events.out.tfevents")]
    if earlier and not overwrite:
        raise InputError(f"{run_dir} already holds an earlier run ({len(earlier)} files); pass --resume to "
                         f"continue it, --overwrite to replace it, or choose another --exp")
    for path in earlier:
        path.unlink()
    return run_dir

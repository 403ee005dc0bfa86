"""Loop pieces shared by the two trainers: device / seed / AMP set-up, ramp-up,
atomic checkpoints (last, best-N with a manifest, resume with RNG state), the
NaN guard and the TensorBoard writer.

Run folder layout (``run_dir = RUNS/EXP/fold<K>``)::

    last.pth                              latest state, for --resume
    best_epoch{E:03d}_score{S:.4f}.pth    the best ``keep`` checkpoints by score
    best.json                             manifest: {"best": file, "checkpoints": [...]}
    events.out.tfevents.*                 TensorBoard

Checkpoint states are plain containers (dict / list / tuple / str / numbers /
None) and tensors, so they load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from utils.errors import InputError

LAST_NAME = "last.pth"
MANIFEST_NAME = "best.json"


class TrainingDiverged(InputError):
    """A loss became NaN or infinite; the message says which, where, and what was kept."""


# ----------------------------------------------------------------------------- set-up

def select_device(name: str) -> torch.device:
    """``--device`` value -> device. ``"auto"`` = CUDA when present, else CPU;
    ``"cpu"``; ``"cuda"`` or ``"cuda:N"`` (InputError when no CUDA device exists)."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} requested but no CUDA device is available; "
                             "use --device cpu or auto")
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise InputError(f"--device {name}: not a valid device ({exc}); use cuda, cuda:N, cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) "
                             "present; use a smaller index or --device auto")
        return device
    raise InputError(f"--device {name}: unknown device; use auto, cpu or cuda")


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves every block above 32 MiB (a feature map at full
    resolution: 4 x 16 x 352 x 752 floats = 68 MiB) with a fresh ``mmap`` and unmaps
    it on free, so each such tensor is page-faulted (and zeroed by the kernel) again:
    measured at 350 x 740 on CPU, elementwise ops ~5x slower and a segmentation
    iteration 7.7 s instead of 5.0 s (1 thread), ~2.8 s of it system time.
    ``M_MMAP_MAX = 0`` serves all blocks from the heap and ``M_TRIM_THRESHOLD = 1 GiB``
    keeps up to that much freed memory mapped. The price is heap fragmentation: the
    peak RSS of that iteration (2 threads) is 2206-2261 MiB without this and 2468-2915
    MiB with it, varying from run to run. Changes speed and memory only,
    never results. Process-wide (forked workers inherit it); call once at start-up.
    Returns False (and does nothing) where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def training_device(name: str) -> torch.device:
    """:func:`select_device` for a trainer; on CPU also :func:`keep_freed_memory`
    (~1.6x faster iterations at 350 x 740, see benchmarks/bench_segmentation.py)."""
    device = select_device(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG, torch (CPU) and every CUDA device."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed ``random`` and NumPy in a worker from
    the per-worker torch seed (which the loader derives from its generator)."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (for DataLoader shuffling / sampling)."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def use_amp(flag: str | bool, device: torch.device | str) -> bool:
    """Whether to use mixed precision: ``"auto"`` = on CUDA only, ``"on"`` (InputError
    on a non-CUDA device: mixed precision is only supported on CUDA), ``"off"``."""
    flag = ("on" if flag else "off") if isinstance(flag, bool) else str(flag).lower()
    is_cuda = torch.device(device).type == "cuda"
    if flag == "auto":
        return is_cuda
    if flag == "on":
        if not is_cuda:
            raise InputError(f"--amp on: mixed precision is only supported on CUDA, but the device "
                             f"is {torch.device(device)}; use --amp auto or off")
        return True
    if flag == "off":
        return False
    raise InputError(f"--amp {flag}: unknown value; use auto, on or off")


def ramp_up(epoch: float, length: float = 50) -> float:
    """Sigmoid-shaped ramp ``exp(-5 (1 - min(epoch, length) / length)^2)``, in (0, 1];
    1.0 from ``epoch >= length`` on, and always 1.0 when ``length == 0``."""
    if length <= 0:
        return 1.0
    t = min(max(float(epoch), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * (1.0 - t) ** 2)


# ----------------------------------------------------------------------------- RNG state

def rng_state() -> dict[str, Any]:
    """Snapshot of the Python, NumPy, torch CPU and CUDA RNGs as plain data + tensors."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "key": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _to_tuple(value: Any) -> Any:
    """Lists (as some serialisers turn tuples into) back into tuples, recursively."""
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a :func:`rng_state` snapshot. CUDA states are restored only when CUDA is
    present and the device count matches (resuming a GPU run on CPU is allowed)."""
    random.setstate(_to_tuple(state["python"]))
    np_state = state["numpy"]
    key = np_state["key"]
    key = key.numpy() if torch.is_tensor(key) else np.asarray(key)
    np.random.set_state((np_state["name"], key.astype(np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# ----------------------------------------------------------------------------- atomic files

def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` via a temp file in the same folder: ``write(f)``, flush, fsync,
    ``os.replace``. On any failure the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); harmless where unsupported
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically: an interrupted save leaves the old file intact."""
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return _atomic_write(path, lambda handle: handle.write(json.dumps(obj, indent=2) + "\n"), "w")


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


# ----------------------------------------------------------------------------- checkpoints

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

    def save_epoch(self, stateful: Mapping[str, Any], epoch: int, score: float, **extra: Any) -> float:
        """End of (0-based) ``epoch``: a best checkpoint if ``score`` ranks, then last.pth.

        ``stateful``: name -> model / optimizer / scheduler / GradScaler (``state_dict``)
        or ``torch.Generator`` (``get_state``); ``extra`` (args, fold, ...) is stored
        as is. Returns the best score so far.
        """
        reserved = {"rng", "best_score", "epoch", "score"} & (set(stateful) | set(extra))
        if reserved:
            raise ValueError(f"save_epoch: names {sorted(reserved)} are reserved")
        state = {name: _state_of(obj) for name, obj in stateful.items()}
        state.update(extra, epoch=int(epoch), score=float(score))
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


# ----------------------------------------------------------------------------- guard, logging

def check_finite(losses: Mapping[str, torch.Tensor | float], epoch: int, iteration: int,
                 checkpoint_hint: str = "") -> None:
    """Raise :class:`TrainingDiverged` if any loss term is NaN or infinite.

    ``losses``: name -> scalar (or tensor; every element is checked). The one-line
    message names the term, its value, epoch and iteration, and says that the last
    good checkpoint is kept (``checkpoint_hint``: where, and what to do).
    """
    for name, value in losses.items():
        if torch.is_tensor(value):
            finite = bool(torch.isfinite(value.detach()).all())
            shown = value.detach().float().flatten()[0].item() if value.numel() == 1 else "non-finite"
        else:
            finite = math.isfinite(float(value))
            shown = float(value)
        if not finite:
            tail = f" ({checkpoint_hint})" if checkpoint_hint else ""
            raise TrainingDiverged(f"training diverged: loss term '{name}' is {shown} at epoch {epoch}, "
                                   f"iteration {iteration}; the last good checkpoint is kept{tail}")


def make_writer(run_dir: str | os.PathLike):
    """A TensorBoard ``SummaryWriter`` logging into ``run_dir`` (created if needed)."""
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow import

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(run_dir))


def run_dir_for(runs_dir: str | os.PathLike, exp: str, fold: int | str) -> Path:
    """``RUNS/EXP/fold<K>``."""
    return Path(runs_dir) / exp / f"fold{fold}"


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


def train_epoch(loader: Iterable, step_fn: Callable[[dict, Callable[[dict], None]], tuple[dict, Any]],
                writer, step: int, epoch: int, desc: str, hint: str, progress: bool = True) -> tuple[int, Any]:
    """Run ``step_fn(batch, check)`` over ``loader`` with a tqdm bar showing the running
    loss; log every returned term as ``train/<name>`` at the global ``step``.

    ``step_fn`` returns ``(terms: name -> float, extra)``; ``check(terms)`` raises
    :class:`TrainingDiverged` on a non-finite term (``epoch`` is 0-based, ``hint`` names
    the last good checkpoint). Returns the new global step and the last ``extra``.
    """
    from tqdm import tqdm

    bar = tqdm(loader, desc=desc, disable=not progress)
    running, extra = 0.0, None
    for it, batch in enumerate(bar):
        terms, extra = step_fn(batch, lambda t, it=it: check_finite(t, epoch + 1, it + 1, hint))
        step += 1
        for name, value in terms.items():
            writer.add_scalar(f"train/{name}", value, step)
        running = 0.9 * running + 0.1 * terms["total"] if it else terms["total"]
        bar.set_postfix(loss=f"{running:.4f}")
    return step, extra

"""The one training loop that every stage plugs into (registration, SS-MGS, the baselines).

:func:`fit` owns what every stage shares: epochs x iterations over the stage's
training set, the progress bar with the running loss, TensorBoard scalars for every
loss term and for the learning rate, the NaN/inf guard, validation after each
epoch, best-N + last checkpoints and ``--resume``, and the panel cadence. A
:class:`Stage` supplies only what is its own: the networks and optimizers it
builds (everything in :meth:`Stage.state` is checkpointed), one training step
returning its loss terms, the validation rows and the score to select on, and its
panel.

Per epoch ``e`` (0-based), in this order: ``train_set.set_epoch(e)``,
``stage.start_epoch(e)``, the iterations (``train/<term>`` at the global step),
``train/lr`` and ``stage.epoch_scalars(e)`` at ``e + 1``, the panel when due,
``stage.end_epoch(e)`` (e.g. the scheduler step), ``stage.validate(e)`` (``val/<name>``
at ``e + 1``), the checkpoints (a best one only when the validation is ``selectable``),
``stage.best_scalar`` at ``e + 1`` (once a selectable epoch has a finite score), and one
printed line.
"""
from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from utils.errors import InputError
from utils.training.checkpoints import LAST_NAME, CheckpointManager
from utils.training.runtime import seed_worker

#: ``check(terms)``: raises :class:`TrainingDiverged` when a loss term is NaN or infinite.
FiniteCheck = Callable[[Mapping[str, Any]], None]


class TrainingDiverged(InputError):
    """A loss became NaN or infinite; the message says which, where, and what was kept."""


@dataclass
class Validation:
    """One epoch's validation. ``score`` selects checkpoints (higher is better);
    ``scalars`` are logged as ``val/<name>``; ``message`` and ``note`` are printed as
    ``epoch N: <message> (<note>; best <score_label> S)``. ``selectable``: whether this
    epoch's networks may become the run's selected model (a best checkpoint, ``best.json``,
    what the test script loads); an epoch that may not (e.g. BCP's pre-training) still
    writes ``last.pth``, and the best score so far stays that of the selectable epochs."""

    score: float
    scalars: dict[str, float]
    message: str
    note: str = ""
    selectable: bool = True


class Stage(ABC):
    """What one training method supplies to :func:`fit`.

    Attributes a stage sets: ``train_set`` (iteration-based: ``len`` = iterations per
    epoch, ``set_epoch(e)``), ``device``, and the class attributes ``kind`` (stored in
    every checkpoint), ``best_scalar`` (TensorBoard tag of the best score so far) and
    ``score_label`` (how the printed line names the score).
    """

    kind: str = "stage"
    best_scalar: str = "val/best_score"
    score_label: str = "score"
    train_set: Dataset
    device: torch.device

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything stateful, by name: modules, optimizers, schedulers, GradScalers
        (``state_dict``) and ``torch.Generator`` objects (``get_state``). Saved in every
        checkpoint and restored by ``--resume``."""

    @abstractmethod
    def learning_rate(self) -> float:
        """The learning rate of the epoch just trained (logged as ``train/lr``)."""

    @abstractmethod
    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], Any]:
        """One iteration: returns ``(loss terms by name, including "total"; anything the
        panel needs)``. Call ``check(terms)`` before the backward pass."""

    @abstractmethod
    def validate(self, epoch: int) -> Validation:
        """Score the networks on the fold's validation set after ``epoch`` (0-based)."""

    def start(self, first_epoch: int, writer: SummaryWriter) -> None:
        """Before the first epoch of this call (``first_epoch > 0`` after ``--resume``)."""

    def start_epoch(self, epoch: int) -> None:
        """Before the iterations of ``epoch``."""

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        """Per-epoch values (loss weights, ...), logged as ``train/<name>`` at ``epoch + 1``."""
        return {}

    def panel(self, last: Any) -> tuple[str, torch.Tensor] | None:
        """``(tag, [3, H, W] image)`` for TensorBoard, from the last step's extra output."""
        return None

    def end_epoch(self, epoch: int) -> None:
        """After the iterations and the panel of ``epoch``, before its validation."""

    def network_config(self) -> dict[str, Any]:
        """Constructor settings of the saved network (``"network"`` in every checkpoint)."""
        return {}


@dataclass
class FitSettings:
    """How :func:`fit` runs a stage. ``extra`` is stored in every checkpoint (e.g. the
    command-line arguments and the fold)."""

    run_dir: Path
    epochs: int
    batch_size: int = 1
    workers: int = 0
    keep_best: int = 10
    panel_every: int = 5
    resume: bool = False
    progress: bool = True
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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


def make_writer(run_dir: str | os.PathLike) -> SummaryWriter:
    """A TensorBoard ``SummaryWriter`` logging into ``run_dir`` (created if needed)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(run_dir))


def make_loader(train_set: Dataset, batch_size: int, workers: int) -> DataLoader:
    """The training loader: items in order (the set draws them itself), whole batches only,
    workers seeded from the loader's seed and kept alive across epochs."""
    return DataLoader(train_set, batch_size=batch_size, shuffle=False, num_workers=workers,
                      worker_init_fn=seed_worker, persistent_workers=workers > 0, drop_last=True)


def train_epoch(loader: Iterable, step_fn: Callable[[dict, FiniteCheck], tuple[dict, Any]],
                writer: SummaryWriter, step: int, epoch: int, desc: str, hint: str,
                progress: bool = True) -> tuple[int, Any]:
    """Run ``step_fn(batch, check)`` over ``loader`` with a progress bar showing the running
    loss; log every returned term as ``train/<name>`` at the global ``step``.

    ``step_fn`` returns ``(terms: name -> float, extra)``; ``check(terms)`` raises
    :class:`TrainingDiverged` on a non-finite term (``epoch`` is 0-based, ``hint`` names
    the last good checkpoint). Returns the new global step and the last ``extra``.
    """
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


def _panel_due(epoch: int, settings: FitSettings) -> bool:
    done = epoch + 1
    return settings.panel_every > 0 and (done % settings.panel_every == 0 or done == settings.epochs)


def _run_epoch(stage: Stage, loader: DataLoader, writer: SummaryWriter, step: int, epoch: int,
               settings: FitSettings) -> tuple[int, Validation]:
    """One epoch of :func:`fit`, up to and including validation (see the module docstring)."""
    stage.train_set.set_epoch(epoch)
    stage.start_epoch(epoch)
    desc = f"{settings.label} epoch {epoch + 1}/{settings.epochs}".strip()
    hint = f"last good checkpoint: {settings.run_dir / LAST_NAME}"
    step, last = train_epoch(loader, stage.train_step, writer, step, epoch, desc, hint, settings.progress)
    writer.add_scalar("train/lr", stage.learning_rate(), epoch + 1)
    for name, value in stage.epoch_scalars(epoch).items():
        writer.add_scalar(f"train/{name}", value, epoch + 1)
    if _panel_due(epoch, settings):
        panel = stage.panel(last)
        if panel is not None:
            writer.add_image(panel[0], panel[1], epoch + 1)
    stage.end_epoch(epoch)
    validation = stage.validate(epoch)
    for name, value in validation.scalars.items():
        writer.add_scalar(f"val/{name}", value, epoch + 1)
    return step, validation


def fit(stage: Stage, settings: FitSettings) -> Validation | None:
    """Train ``stage`` for ``settings.epochs`` epochs (continuing from ``last.pth`` with
    ``settings.resume``); returns the last epoch's validation (None when no epoch ran)."""
    loader = make_loader(stage.train_set, settings.batch_size, settings.workers)
    checkpoints = CheckpointManager(settings.run_dir, keep=settings.keep_best)
    writer = make_writer(settings.run_dir)
    validation = None
    try:
        first, _ = (checkpoints.resume(stage.state(), stage.device, settings.label) if settings.resume
                    else (0, -math.inf))
        stage.start(first, writer)
        step = first * len(loader)
        for epoch in range(first, settings.epochs):
            started = time.time()
            step, validation = _run_epoch(stage, loader, writer, step, epoch, settings)
            best = checkpoints.save_epoch(stage.state(), epoch, validation.score, selectable=validation.selectable,
                                          kind=stage.kind, network=stage.network_config(), **settings.extra)
            if math.isfinite(best):
                writer.add_scalar(stage.best_scalar, best, epoch + 1)
            writer.flush()
            note = f"{validation.note}; " if validation.note else ""
            selected = (f"best {stage.score_label} {best:.4f}" if math.isfinite(best)
                        else f"no {stage.score_label} selected yet")
            print(f"{settings.label} epoch {epoch + 1}: {validation.message} "
                  f"({note}{selected}) [{time.time() - started:.0f}s]".strip())
    finally:
        writer.close()
    return validation

"""Device, mixed-precision and seeding set-up of a training or test run.

Nothing here changes process-wide allocator behaviour: see
:mod:`utils.training.memory` for the one call that does, made explicitly by the trainers.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from utils.errors import InputError


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

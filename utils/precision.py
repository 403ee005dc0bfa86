"""The project's one way to switch mixed precision off for a block of code."""
from __future__ import annotations

import contextlib

import torch


def no_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Context in which autocast is disabled for ``device``'s type (a no-op context for a
    device type without autocast support). Losses and the attention use it so that their
    small constants and accumulations keep float32 meaning under mixed precision."""
    try:
        return torch.autocast(device_type=torch.device(device).type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()

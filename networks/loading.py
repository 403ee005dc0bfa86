"""Loading trained networks from checkpoint files, with one-line errors on mismatch."""
from __future__ import annotations

from pathlib import Path

import torch

from utils.errors import InputError
from utils.training import load_checkpoint


def load_network(path: str | Path, net: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Load ``path`` (a trainer checkpoint dict with ``"model"``, or a bare state dict)
    into ``net``; returns ``(net on device in eval mode, checkpoint dict)``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    state = load_checkpoint(path, map_location=device)
    weights = state["model"] if isinstance(state, dict) and "model" in state else state
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} does not match the {type(net).__name__} network ({first}); "
                         f"did you pass a checkpoint of the other stage?") from None
    net.to(device).eval()
    return net, state if isinstance(state, dict) else {}


def freeze(net: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients (the frozen registration net of the segmentation stage)."""
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net

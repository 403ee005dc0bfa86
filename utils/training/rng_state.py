"""Snapshot and restore of every global random number generator (for --resume)."""
from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch


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

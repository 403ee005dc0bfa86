"""The project's one atomic file writer: a file is either its old or its new content, never half.

Every file a run depends on (checkpoints, checkpoint manifests, fold files, the
pre-alignment cache) is written through :func:`atomic_write`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` via a temporary file in the same folder: ``write(handle)``, flush,
    fsync, ``os.replace``. On any failure the temporary file is removed and ``path`` is
    untouched. Creates the parent folder."""
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


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON (with a final newline) atomically."""
    return atomic_write(path, lambda handle: handle.write(json.dumps(obj, indent=indent) + "\n"), "w")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically: an interrupted save leaves the old file intact."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))

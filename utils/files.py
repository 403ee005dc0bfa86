"""The project's file writers: one atomic writer (a file is either its old or its new content,
never half), and on top of it JSON, checkpoints, CSV tables and PNG images.

Every file a run depends on (checkpoints, checkpoint manifests, fold files, the
pre-alignment cache) and every table and image the tools write go through
:func:`atomic_write`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
import torch

from utils.errors import InputError


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


def csv_cell(value: Any) -> str:
    """One CSV cell: ``None`` and non-finite floats -> empty, booleans -> 1 / 0, floats with 8
    significant digits, anything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)):
        return format(float(value), ".8g") if math.isfinite(value) else ""
    return str(value)


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` under the header ``columns`` (missing keys -> empty cells), atomically;
    a file that cannot be written is a one-line InputError."""
    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(row.get(column)) for column in columns])
    try:
        return atomic_write(path, write, "w")
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc}); check that the folder is writable "
                         f"and has free space") from None


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Encode a uint8 (or uint16) ``[H, W]`` or ``[H, W, 3]`` array (OpenCV's BGR order) as PNG
    at ``path``, creating the folder; a failure is a one-line InputError."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise InputError(f"{path}: could not encode the image as PNG")
    try:
        return atomic_write(path, lambda handle: handle.write(data.tobytes()))
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc}); check that the folder is writable "
                         f"and has free space") from None

"""The trainers' one process-wide memory setting: glibc keeps freed memory for reuse.

Called explicitly by the training scripts on CPU (never as a side effect of device
set-up): it changes speed and memory only, never results.
"""
from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves every large block (above its mmap threshold, e.g. one
    full-resolution feature map) with a fresh ``mmap`` and unmaps it on free, so each
    such tensor is page-faulted (and zeroed by the kernel) again on every iteration.
    ``M_MMAP_MAX = 0`` serves all blocks from the heap and ``M_TRIM_THRESHOLD = 1 GiB``
    keeps up to that much freed memory mapped: iterations get faster, at the price of
    some heap fragmentation (a higher and more variable peak RSS; docs/benchmarks.md
    has the measured figures). Changes speed and memory only, never results.
    Process-wide (forked workers inherit it); call once at start-up.
    Returns False (and does nothing) where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

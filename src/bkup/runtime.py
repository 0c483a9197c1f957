"""Process-wide tuning done once at start-up, before any big buffer is allocated."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def tune_malloc() -> None:
    """Serve big buffers (chunks, batches) from mmap so that freeing them returns the memory.

    glibc raises its mmap threshold each time a big block is freed, after which
    4–16 MiB buffers come from per-thread arenas and stay there: with a pool of
    worker threads, peak RSS then grows by tens of MB per thread. A fixed
    threshold disables that adjustment. Not glibc (musl, macOS): nothing to do.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass

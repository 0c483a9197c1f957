"""Process-wide tuning of glibc's allocator: one profile at start-up, another for a restore."""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Every command (backups, the server): buffers of 1 MiB and more come from mmap, so freeing one returns it.
MMAP_THRESHOLD = 1 << 20
# `bkup restore`: its chunks (up to two fetch batches of ~16 MiB) are reused from the heap instead.
RESTORE_MMAP_THRESHOLD = 32 << 20
RESTORE_TRIM_THRESHOLD = 64 << 20


def _mallopt(*settings: tuple[int, int]) -> None:
    """Not glibc (musl, macOS): nothing to do."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        for param, value in settings:
            libc.mallopt(param, value)
    except (OSError, AttributeError):
        pass


def tune_malloc() -> None:
    """Serve big buffers (chunks, batches) from mmap so that freeing them returns the memory.

    glibc raises its mmap threshold each time a big block is freed, after which
    4–16 MiB buffers come from per-thread arenas and stay there: with a pool of
    worker threads, peak RSS then grows by tens of MB per thread. A fixed
    threshold disables that adjustment.
    """
    _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def tune_malloc_for_restore() -> None:
    """Keep a restore's chunk buffers in the heap, and freed ones there for the next batch.

    With the start-up profile each decoded chunk of 1 MiB or more was a fresh
    mmap, zeroed page by page by the kernel as zstd wrote it and unmapped once
    written out: a page fault per 4 KiB restored (~240,000 for the 1 GiB of
    "big", against ~19,000 now) and ~15 % of the restoring process's CPU. A
    restore holds at most two batches of chunks and one fetch thread makes
    them, so the heap it keeps stays about that size. A long-running agent
    keeps the start-up profile.
    """
    _mallopt((M_MMAP_THRESHOLD, RESTORE_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, RESTORE_TRIM_THRESHOLD))

"""Process-wide tuning done once at start-up (every `bkup` command): glibc's allocator and Python's cycle collector."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # chunks (≤ 4 MiB) and batches come from the heap…
TRIM_THRESHOLD = 64 << 20  # …which keeps this much freed memory for the next ones…
ARENA_MAX = 2  # …in at most two arenas, however many threads allocate


def tune_malloc() -> None:
    """Reuse big buffers (chunks, batches) instead of mapping and zeroing fresh pages for each.

    Each chunk and frame is a new bytes object of up to a few MiB. Served by
    mmap (what a fixed 1 MiB threshold did), every one was zeroed page by page
    by the kernel as it was written, and returned when freed: ~600,000 page
    faults in the server and ~480,000 in the agent for a first backup of the
    1 GiB "big", a quarter of the server's CPU. Left to glibc's defaults, the
    threshold rises as big blocks are freed and each thread's arena keeps its
    own: tens of MB of peak RSS per worker thread. Two arenas bound that.
    Not glibc (musl, macOS): nothing to do.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX)):
            libc.mallopt(param, value)
    except (OSError, AttributeError):
        pass


# A young-generation collection after this many new container objects, not 700.
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Run the cycle collector less often.

    A backup or restore makes hundreds of thousands of short-lived containers
    (entries, dicts, frames), nearly all freed by reference counting; at the
    default threshold the collector still ran ~470 young and 5 full
    collections in an agent's first backup of "small" (0.7–1.4 CPU seconds)
    and ~950 in the server (1.2–1.9 s); now ~25 and ~30 (0.2–0.3 s each).
    Cycles are still collected, later.
    """
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def freeze_imports() -> None:
    """Move what start-up made (modules, classes, functions: never garbage) out of the collector's sight.

    Every full collection then walks only what the command itself made.
    """
    gc.freeze()

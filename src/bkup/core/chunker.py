"""Content-defined chunking of file bodies: FastCDC through the native pyfastcdc extension."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

from bkup.errors import BkupError

MIN_SIZE = 256 * 1024
AVG_SIZE = 1 << 20
MAX_SIZE = 4 << 20

# Cut points depend on every one of these; changing any of them re-chunks
# every file and loses deduplication against data already stored.
_NORMALIZED_CHUNKING = 1
_GEAR_SEED = 0


class ChunkerUnavailable(BkupError):
    """pyfastcdc runs as pure Python (no compiled wheel): about 1000x slower."""


def _cutter() -> FastCDC:
    # Cheap to build (no seed, so no table copies); one per iteration because
    # pyfastcdc does not promise that an instance can be shared by threads.
    return FastCDC(
        avg_size=AVG_SIZE,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        normalized_chunking=_NORMALIZED_CHUNKING,
        seed=_GEAR_SEED,
    )


def ensure_native() -> None:
    """Raise ChunkerUnavailable unless pyfastcdc's compiled extension is in use."""
    module = FastCDC.__module__
    if not module.startswith("pyfastcdc.cy"):
        raise ChunkerUnavailable(
            f"pyfastcdc is running its pure-Python fallback ({module}), which is far too slow "
            "for backups; install a pyfastcdc wheel for this platform (or a C compiler and Cython)"
        )


def iter_chunks(fileobj: BinaryIO) -> Iterator[bytes]:
    """Yield the chunks of a binary stream in order, reading it once; each chunk is its own bytes.

    Memory stays at about two maximum chunks whatever the stream's size. An
    empty stream yields nothing.
    """
    for chunk in _cutter().cut_stream(fileobj):
        # chunk.data points into pyfastcdc's buffer and is overwritten by the next chunk.
        yield bytes(chunk.data)


def iter_chunks_fd(fd: int) -> Iterator[bytes]:
    """Yield the chunks of an open file descriptor from its current position; the fd stays open."""
    with open(fd, "rb", buffering=0, closefd=False) as raw:
        yield from iter_chunks(raw)


def iter_file_chunks(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Iterator[bytes]:
    """Yield the chunks of the file at `path`; it is opened on the first `next()`, closed at the end.

    Streamed reads rather than pyfastcdc's `cut_file` (mmap): mmap is only ~20%
    faster at cutting, which zstd and BLAKE3 dwarf, and a file truncated while
    mapped kills the whole agent with SIGBUS; live files do get truncated.
    """
    with open(path, "rb", buffering=0) as raw:
        yield from iter_chunks(raw)

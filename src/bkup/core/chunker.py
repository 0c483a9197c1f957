"""Content-defined chunking of file bodies: FastCDC through the native pyfastcdc extension."""

from __future__ import annotations

import os
import threading
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


def iter_chunks_fd(fd: int, size: int | None = None) -> Iterator[bytes]:
    """Yield the chunks of an open file descriptor from its current position; the fd stays open.

    The same cut points as `iter_chunks`, cheaper per file: a body of at most
    MIN_SIZE bytes is one chunk and one `os.read`, with no chunker at all;
    larger bodies are cut in a window reused by the calling thread
    (`pyfastcdc.cut_stream` allocates and zeroes ~8 MiB per call, which made
    small files cost ~10 ms each once glibc stopped reusing that block).

    `size`: the body's size as the caller just stat'ed it. It saves an fstat
    and an lseek, and a small body that one read returns whole is not
    confirmed by a second read at its end: the caller must then check, after
    reading, that the file did not change (the agent compares fstat before and
    after). Every system call costs a GIL hand-off, and small files are many.
    """
    trusted = size is not None
    if size is None:
        try:
            size = os.fstat(fd).st_size - os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            size = MIN_SIZE + 1  # not seekable: take the general path
    head = b""
    if 0 <= size <= MIN_SIZE:
        while len(head) <= MIN_SIZE:
            more = os.read(fd, MIN_SIZE + 1 - len(head) if head else size + 1)
            if not more:
                if head:
                    yield head
                return
            head = more if not head else head + more
            if trusted and len(head) == size:
                yield head
                return
    yield from _cut_window(fd, head)


WINDOW_SIZE = 16 << 20  # per thread; cuts ~12 MiB between refills, moves < MAX_SIZE
_local = threading.local()


def _window() -> bytearray:
    buf: bytearray | None = getattr(_local, "window", None)
    if buf is None:
        buf = _local.window = bytearray(WINDOW_SIZE)
    return buf


def _cut_window(fd: int, head: bytes) -> Iterator[bytes]:
    # A cut depends only on the MAX_SIZE bytes after the chunk's start, so every
    # chunk that starts at least MAX_SIZE before the window's end (or anywhere,
    # once the file is read to its end) is final; the rest moves to the front.
    buf = _window()
    view = memoryview(buf)
    filled = len(head)
    buf[:filled] = head
    eof = False
    cutter = _cutter()
    try:
        while True:
            while not eof and filled < WINDOW_SIZE:
                n = os.readv(fd, [view[filled:]])
                if n == 0:
                    eof = True
                filled += n
            start = 0
            for chunk in cutter.cut_buf(view[:filled]):
                if not eof and chunk.offset + MAX_SIZE > filled:
                    break
                yield bytes(chunk.data)
                start = chunk.offset + chunk.length
            if eof:
                return
            rest = filled - start
            buf[:rest] = buf[start:filled]
            filled = rest
    finally:
        view.release()


def iter_file_chunks(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Iterator[bytes]:
    """Yield the chunks of the file at `path`; it is opened on the first `next()`, closed at the end.

    Streamed reads rather than pyfastcdc's `cut_file` (mmap): mmap is only ~20%
    faster at cutting, which zstd and BLAKE3 dwarf, and a file truncated while
    mapped kills the whole agent with SIGBUS; live files do get truncated.
    """
    with open(path, "rb", buffering=0) as raw:
        yield from iter_chunks(raw)

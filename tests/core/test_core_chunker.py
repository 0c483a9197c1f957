"""Chunker: FastCDC bounds, determinism, locality of edits, and the file/fd/stream entry points."""

from __future__ import annotations

import io
import os
import random

import pytest

from bkup.core import chunker
from bkup.core.chunker import (
    AVG_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    ChunkerUnavailable,
    ensure_native,
    iter_chunks,
    iter_chunks_fd,
    iter_file_chunks,
)
from bkup.core.hashing import chunk_id


def cut(data: bytes) -> list[bytes]:
    return list(iter_chunks(io.BytesIO(data)))


@pytest.fixture(scope="module")
def data20() -> bytes:
    return random.Random(20).randbytes(20 << 20)


def test_sizes_are_the_documented_ones() -> None:
    assert (MIN_SIZE, AVG_SIZE, MAX_SIZE) == (256 * 1024, 1 << 20, 4 << 20)
    cutter = chunker._cutter()
    assert (cutter.min_size, cutter.avg_size, cutter.max_size) == (MIN_SIZE, AVG_SIZE, MAX_SIZE)


def test_native_extension_is_used() -> None:
    ensure_native()


def test_ensure_native_refuses_the_pure_python_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fallback:
        pass

    Fallback.__module__ = "pyfastcdc.py.fastcdc"
    monkeypatch.setattr(chunker, "FastCDC", Fallback)
    with pytest.raises(ChunkerUnavailable, match="pure-Python"):
        ensure_native()


def test_chunks_within_bounds_and_cover_the_input(data20: bytes) -> None:
    chunks = cut(data20)
    assert b"".join(chunks) == data20
    assert all(MIN_SIZE <= len(c) <= MAX_SIZE for c in chunks[:-1])
    assert 1 <= len(chunks[-1]) <= MAX_SIZE
    # FastCDC's mean is about AVG_SIZE + MIN_SIZE (cut-point skipping).
    mean = len(data20) / len(chunks)
    assert AVG_SIZE * 0.8 < mean < AVG_SIZE * 1.8, mean


def test_max_size_is_enforced_when_no_cut_point_exists() -> None:
    # Runs of one byte value never satisfy the gear mask: every chunk is cut at the maximum.
    assert [len(c) for c in cut(bytes(10 * MAX_SIZE + 5))] == [MAX_SIZE] * 10 + [5]


def test_min_size_is_the_earliest_cut(data20: bytes) -> None:
    # A cut depends only on the 64 bytes before it: shift the stream so that a
    # natural cut point falls 64 bytes after MIN_SIZE, and it is cut right there.
    start = 0
    for c in cut(data20):
        if MIN_SIZE + 64 <= len(c) < AVG_SIZE:
            break
        start += len(c)
    else:
        pytest.fail("no short chunk in the sample")
    target = MIN_SIZE + 64
    shifted = data20[start + len(c) - target :]
    assert len(next(iter_chunks(io.BytesIO(shifted)))) == target


def test_deterministic(data20: bytes) -> None:
    assert [chunk_id(c) for c in cut(data20)] == [chunk_id(c) for c in cut(bytes(data20))]


def test_inserting_one_byte_changes_at_most_three_chunks() -> None:
    data = random.Random(64).randbytes(64 << 20)
    middle = len(data) // 2
    before = [chunk_id(c) for c in cut(data)]
    after = [chunk_id(c) for c in cut(data[:middle] + b"\x42" + data[middle:])]
    assert len(set(after) - set(before)) <= 3
    assert len(set(before) - set(after)) <= 3
    assert len(before) > 40


@pytest.mark.parametrize("size", [0, 1, 1000, MIN_SIZE, MIN_SIZE + 1])
def test_small_inputs(size: int, tmp_path) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = [data] if data else []
    assert cut(data) == expected
    assert list(iter_file_chunks(path)) == expected


def test_file_fd_and_stream_agree(tmp_path, data20: bytes) -> None:
    path = tmp_path / "big"
    path.write_bytes(data20)
    from_stream = cut(data20)
    assert list(iter_file_chunks(path)) == from_stream
    assert list(iter_file_chunks(os.fsencode(path))) == from_stream
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(iter_chunks_fd(fd)) == from_stream
        os.lseek(fd, 0, os.SEEK_SET)
        assert list(iter_chunks_fd(fd, len(data20))) == from_stream
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


def test_stream_without_readinto() -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self._f = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self._f.read(min(n, 7777))  # short reads too

    data = random.Random(3).randbytes(3 << 20)
    assert list(iter_chunks(ReadOnly(data))) == cut(data)  # type: ignore[arg-type]


def test_read_error_propagates_after_the_chunks_before_it() -> None:
    class FailingReader(io.RawIOBase):
        """Serves `good` bytes, then fails like a disk would (borg-style fault injection)."""

        def __init__(self, data: bytes, good: int) -> None:
            self._f = io.BytesIO(data[:good])

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[override]
            n = self._f.readinto(b)
            if n == 0:
                raise OSError(5, "Input/output error")
            return n

    data = random.Random(5).randbytes(30 << 20)
    it = iter_chunks(FailingReader(data, 20 << 20))
    seen = []
    with pytest.raises(OSError, match="Input/output"):
        for c in it:
            seen.append(c)
    assert b"".join(seen) == data[: len(b"".join(seen))]


def test_fd_with_a_trusted_size_reads_a_small_body_once(tmp_path) -> None:
    """A body that one read returns whole is one chunk; a body longer than the caller's size is still read whole."""
    for n in (1, 1000, MIN_SIZE):
        path = tmp_path / f"f{n}"
        path.write_bytes(os.urandom(n))
        fd = os.open(path, os.O_RDONLY)
        try:
            assert list(iter_chunks_fd(fd, n)) == [path.read_bytes()]
            os.lseek(fd, 0, os.SEEK_SET)
            grown = list(iter_chunks_fd(fd, n - 1))  # the file grew since the caller's stat: all of it comes
            assert b"".join(grown) == path.read_bytes()
        finally:
            os.close(fd)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    fd = os.open(empty, os.O_RDONLY)
    try:
        assert list(iter_chunks_fd(fd, 0)) == []
    finally:
        os.close(fd)

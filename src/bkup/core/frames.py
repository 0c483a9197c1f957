"""The frame stream that carries chunks between agent and server, for upload and for read (docs/format.md)."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import zstandard

from bkup.core.chunker import MAX_SIZE
from bkup.core.hashing import chunk_id as compute_chunk_id
from bkup.core.hashing import is_chunk_id
from bkup.errors import IntegrityError

MAGIC = b"BKF1"
FLAG_ZSTD = 0x01
# zstd level of chunks. Level 2 compressed ~40 % faster but stored 1.4–3.2 % more on the benchmark
# datasets, past the repository-size target (docs/performance.md, "Measured and not kept").
DEFAULT_LEVEL = 3
END_FLAGS = 0xFF  # only in the end marker
HEADER_SIZE = 41  # id 32 | flags 1 | raw_len 4 | data_len 4

_HEADER = struct.Struct(">32sBII")
_KNOWN_FLAGS = FLAG_ZSTD
_ZERO_ID = bytes(32)
_U32_MAX = 0xFFFFFFFF

assert _HEADER.size == HEADER_SIZE


class FrameError(IntegrityError, ValueError):
    """A frame or frame stream that breaks the format."""


class TruncatedStream(FrameError):
    """The stream ended before its end marker."""


class ChunkMismatch(FrameError):
    """A frame's data does not decode to `raw_len` bytes whose BLAKE3 is the frame's id."""


def _check_fields(cid: str, flags: int, raw_len: int, data_len: int) -> None:
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"frame {cid}: flags 0x{flags:02x} has unknown bits (allowed: 0x00, 0x01)")
    if raw_len < 1:
        raise FrameError(f"frame {cid}: raw_len is 0 (a chunk has at least 1 byte)")
    if raw_len > MAX_SIZE:
        raise FrameError(f"frame {cid}: raw_len {raw_len} exceeds the maximum chunk size {MAX_SIZE}")
    if data_len > raw_len:
        raise FrameError(f"frame {cid}: data_len {data_len} exceeds raw_len {raw_len}")
    if flags == 0 and data_len != raw_len:
        raise FrameError(f"frame {cid}: raw frame (flags 0) with data_len {data_len} != raw_len {raw_len}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One chunk on the wire: its id (hex), flags, plaintext length and data (zstd or raw)."""

    id: str
    flags: int
    raw_len: int
    data: bytes

    def __post_init__(self) -> None:
        if not is_chunk_id(self.id):
            raise FrameError(f"frame id is not a chunk id: {self.id!r:.80}")
        _check_fields(self.id, self.flags, self.raw_len, len(self.data))

    def header(self) -> bytes:
        """The 41 bytes that precede `data` in a stream."""
        return _HEADER.pack(bytes.fromhex(self.id), self.flags, self.raw_len, len(self.data))

    def to_bytes(self) -> bytes:
        return self.header() + self.data


# zstandard contexts are not thread-safe; each thread keeps its own.
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dctx is None:
        dctx = _local.decompressor = zstandard.ZstdDecompressor()
    return dctx


def encode_chunk(raw: bytes, *, level: int = DEFAULT_LEVEL, chunk_id: str | None = None) -> Frame:
    """Frame one chunk: zstd at `level`, or raw when that saves less than 1/32 of the size.

    `chunk_id` saves hashing again when the caller already knows it (it is not checked).
    """
    _check_size(raw)
    cid = chunk_id if chunk_id is not None else compute_chunk_id(raw)
    return _framed(cid, raw, _compressor(level).compress(raw))


def _check_size(raw: bytes) -> None:
    if not 1 <= len(raw) <= MAX_SIZE:
        raise FrameError(f"a chunk has 1 to {MAX_SIZE} bytes, not {len(raw)}")


def _framed(cid: str, raw: bytes, packed: bytes | zstandard.BufferSegment) -> Frame:
    n = len(raw)
    if len(packed) < n - n // 32:
        return Frame(cid, FLAG_ZSTD, n, bytes(packed))  # no copy when `packed` is bytes already
    return Frame(cid, 0, n, bytes(raw))


# Chunks under BATCH_BELOW bytes are compressed together (`encode_chunks`), about BATCH_BYTES of
# them in one call into zstd. Each call releases the GIL and must take it back: for a chunk of a
# few KiB, taking it back from a thread that runs Python can cost far more than the compression
# (up to the interpreter's switch interval of 5 ms; docs/performance.md).
BATCH_BELOW = 256 * 1024
BATCH_BYTES = 1024 * 1024


def encode_chunks(chunks: Iterable[tuple[str, bytes]], *, level: int = DEFAULT_LEVEL) -> Iterator[Frame]:
    """Frame chunks given as (id, raw), exactly as `encode_chunk` frames each, pulling them as they go.

    Small chunks (under BATCH_BELOW) are compressed a batch at a time; their
    raw bytes are let go as soon as their batch is framed. Ids are trusted,
    as `chunk_id` is by `encode_chunk`.
    """
    ids: list[str] = []
    raws: list[bytes] = []
    size = 0
    for cid, raw in chunks:
        small = len(raw) < BATCH_BELOW
        if small:
            ids.append(cid)
            raws.append(raw)
            size += len(raw)
        if ids and (not small or size >= BATCH_BYTES):  # a large chunk keeps its place after the batch
            batch = _encode_batch(ids, raws, level)
            ids, raws, size = [], [], 0
            yield from batch
        if not small:
            yield encode_chunk(raw, level=level, chunk_id=cid)
    if ids:
        yield from _encode_batch(ids, raws, level)


def _encode_batch(ids: Sequence[str], raws: Sequence[bytes], level: int) -> list[Frame]:
    if len(raws) == 1:
        return [encode_chunk(raws[0], level=level, chunk_id=ids[0])]
    for raw in raws:
        _check_size(raw)
    packed = _compressor(level).multi_compress_to_buffer(list(raws), threads=1)
    return [_framed(cid, raw, packed[i]) for i, (cid, raw) in enumerate(zip(ids, raws))]


def decode_frame(frame: Frame) -> bytes:
    """The chunk's plaintext, checked: exactly `raw_len` bytes whose BLAKE3 is `frame.id`.

    Decompression never allocates more than `raw_len` bytes, whatever the
    zstd header claims. Raises ChunkMismatch.
    """
    if frame.flags & FLAG_ZSTD:
        try:
            declared = zstandard.get_frame_parameters(frame.data).content_size
        except zstandard.ZstdError as e:
            raise ChunkMismatch(f"chunk {frame.id}: data is not a zstd frame ({e})") from None
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared != frame.raw_len:
            raise ChunkMismatch(
                f"chunk {frame.id}: zstd header declares {declared} bytes but raw_len is {frame.raw_len}"
            )
        try:
            raw = _decompressor().decompress(frame.data, max_output_size=frame.raw_len, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise ChunkMismatch(
                f"chunk {frame.id}: zstd data does not decode to raw_len {frame.raw_len} bytes ({e})"
            ) from None
    else:
        raw = frame.data
    if len(raw) != frame.raw_len:
        raise ChunkMismatch(f"chunk {frame.id}: decoded {len(raw)} bytes but raw_len is {frame.raw_len}")
    actual = compute_chunk_id(raw)
    if actual != frame.id:
        raise ChunkMismatch(f"chunk {frame.id}: data hashes to {actual}")
    return raw


def stream_header() -> bytes:
    """The 4 bytes every frame stream starts with."""
    return MAGIC


def end_marker(count: int) -> bytes:
    """The 41-byte end marker of a stream that held `count` frames."""
    if not 0 <= count <= _U32_MAX:
        raise FrameError(f"a frame stream holds 0 to {_U32_MAX} frames, not {count}")
    return _HEADER.pack(_ZERO_ID, END_FLAGS, count, 0)


def stream_frames(frames: Iterable[Frame]) -> Iterator[bytes]:
    """Yield a whole frame stream (magic, each frame, end marker) as pieces to write or send."""
    yield MAGIC
    count = 0
    for frame in frames:
        yield frame.header()
        yield frame.data
        count += 1
    yield end_marker(count)


class FrameBatch:
    """The frames of one upload, made while it is being sent; a second pass replays them.

    `frames` is pulled only as the request body is sent, so the sender
    compresses the next chunk while the receiver verifies and stores the
    previous one. It stops before the frame that would take the batch past
    `limit` bytes (header and data), which it keeps as `carry` for the next
    batch. Every frame made stays in `made`, so a retry (a new pass) sends the
    same bytes, then goes on; `nbytes` is their size so far. A batch always
    takes at least one frame, whatever its size.
    """

    def __init__(self, frames: Iterator[Frame], limit: int, carry: Frame | None = None) -> None:
        self._frames = frames
        self._limit = limit
        self.made: list[Frame] = []
        self.nbytes = 0
        self.carry: Frame | None = None
        self.exhausted = False
        self._first = carry

    def _take(self, frame: Frame) -> bool:
        size = HEADER_SIZE + len(frame.data)
        if self.made and self.nbytes + size > self._limit:
            self.carry = frame
            return False
        self.made.append(frame)
        self.nbytes += size
        return True

    def _more(self) -> Iterator[Frame]:
        if self._first is not None:
            first, self._first = self._first, None
            self._take(first)  # the batch is empty: it fits
            yield first
        for frame in self._frames:
            if not self._take(frame):
                return
            yield frame
        self.exhausted = True

    def __iter__(self) -> Iterator[Frame]:
        yield from list(self.made)
        if not self.exhausted and self.carry is None:
            yield from self._more()


def coalesce(pieces: Iterable[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    """The same bytes, small pieces joined up to at least `size`; holds at most `size` plus one piece.

    A stream of small frames is two short pieces per frame, and each piece
    costs an HTTP library (or a web framework's thread hand-off) far more
    than its bytes. A piece of `size` or more goes on alone, as it is (what
    was held before it goes first, however short): joined, a 4 MiB frame was
    copied whole once more on its way out.
    """
    held: list[bytes] = []
    n = 0
    for piece in pieces:
        if len(piece) >= size:  # big enough alone: joined, it would be copied whole
            if held:
                yield b"".join(held)
                held, n = [], 0
            yield piece
            continue
        held.append(piece)
        n += len(piece)
        if n >= size:
            yield b"".join(held)
            held, n = [], 0
    if held:
        yield b"".join(held)


class FrameParser:
    """Incremental reader of a frame stream: feed it bytes as they arrive, get whole frames back.

    Each header is checked as soon as its 41 bytes are in, so the parser never
    holds more than one frame (at most 4 MiB of data) plus the latest feed.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._started = False
        self._count = 0
        self._done = False

    @property
    def done(self) -> bool:
        """True once the end marker has been read."""
        return self._done

    @property
    def count(self) -> int:
        """Frames parsed so far."""
        return self._count

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Take the next bytes of the stream; return the frames they complete (maybe none)."""
        if self._done:
            if data:
                raise FrameError(f"{len(data)} bytes after the end marker")
            return []
        buf = self._buf
        buf += data
        pos = 0
        if not self._started:
            if len(buf) < len(MAGIC):
                if not MAGIC.startswith(buf):
                    raise FrameError(f"stream does not start with {MAGIC!r}: {bytes(buf)!r}")
                return []
            if buf[: len(MAGIC)] != MAGIC:
                raise FrameError(f"stream does not start with {MAGIC!r}: {bytes(buf[:4])!r}")
            self._started = True
            pos = len(MAGIC)
        frames: list[Frame] = []
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            raw_id, flags, raw_len, data_len = _HEADER.unpack_from(buf, pos)
            if flags == END_FLAGS:
                self._end(raw_id, raw_len, data_len)
                pos += HEADER_SIZE
                if pos < end:
                    raise FrameError(f"{end - pos} bytes after the end marker")
                break
            cid = raw_id.hex()
            _check_fields(cid, flags, raw_len, data_len)
            start = pos + HEADER_SIZE
            if end - start < data_len:
                break
            with memoryview(buf) as view:
                payload = bytes(view[start : start + data_len])
            frames.append(Frame(cid, flags, raw_len, payload))
            self._count += 1
            pos = start + data_len
        if pos:
            del buf[:pos]  # what remains is less than one frame
        return frames

    def _end(self, raw_id: bytes, count: int, data_len: int) -> None:
        if raw_id != _ZERO_ID or data_len != 0:
            raise FrameError("malformed end marker (flags 0xff needs a zero id and data_len 0)")
        if count != self._count:
            raise FrameError(f"end marker counts {count} frames but the stream held {self._count}")
        self._done = True

    def close(self) -> None:
        """Declare the input finished: raise TruncatedStream unless the end marker was read."""
        if self._done:
            return
        if not self._started:
            raise TruncatedStream(f"frame stream ended before its magic ({len(self._buf)} bytes)")
        raise TruncatedStream(
            f"frame stream ended without its end marker, after {self._count} frames"
            + (f" and {len(self._buf)} bytes of an incomplete frame" if self._buf else "")
        )


def parse_frames(data: bytes) -> list[Frame]:
    """All frames of a complete stream held in memory (raises like FrameParser)."""
    parser = FrameParser()
    frames = parser.feed(data)
    parser.close()
    return frames

"""Frames: round trips, incremental parsing, every malformed stream refused, bounded decompression."""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import pytest
import zstandard

from bkup.core.chunker import MAX_SIZE
from bkup.core.frames import (
    BATCH_BELOW,
    BATCH_BYTES,
    FLAG_ZSTD,
    HEADER_SIZE,
    MAGIC,
    ChunkMismatch,
    Frame,
    FrameError,
    FrameParser,
    TruncatedStream,
    decode_frame,
    encode_chunk,
    encode_chunks,
    end_marker,
    parse_frames,
    stream_frames,
    stream_header,
)
from bkup.core.hashing import chunk_id
from bkup.errors import IntegrityError

FORMAT_DOC = Path(__file__).parents[2] / "docs" / "format.md"


def text(n: int, seed: int = 0) -> bytes:
    """Compressible, not trivially: random words."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def noise(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def header(raw_id: bytes, flags: int, raw_len: int, data_len: int) -> bytes:
    return struct.pack(">32sBII", raw_id, flags, raw_len, data_len)


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    chunks = [text(300, 1), noise(50, 2), b"x", text(5000, 3), noise(4000, 4), bytes(9000)]
    return [encode_chunk(c) for c in chunks]


@pytest.fixture(scope="module")
def stream(frames: list[Frame]) -> bytes:
    return b"".join(stream_frames(frames))


# --- encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "flags"),
    [
        (b"x", 0),
        (noise(1000), 0),
        (noise(MAX_SIZE), 0),
        (text(100_000), FLAG_ZSTD),
        (bytes(MAX_SIZE), FLAG_ZSTD),
    ],
    ids=["1-byte", "noise", "noise-max", "text", "zeros-max"],
)
def test_encode_decode_round_trip(raw: bytes, flags: int) -> None:
    frame = encode_chunk(raw)
    assert frame.id == chunk_id(raw)
    assert frame.flags == flags
    assert frame.raw_len == len(raw)
    if flags == 0:
        assert frame.data == raw
    else:
        assert len(frame.data) < len(raw) - len(raw) // 32
    assert decode_frame(frame) == raw
    assert parse_frames(b"".join(stream_frames([frame]))) == [frame]


def test_compression_that_does_not_pay_is_not_kept() -> None:
    # Half noise: zstd saves far more than 1/32. Noise with 2% zeros: it saves less.
    assert encode_chunk(noise(32768) + bytes(32768)).flags == FLAG_ZSTD
    assert encode_chunk(noise(64000) + bytes(1000)).flags == 0


def test_given_chunk_id_is_used_and_level_is_honoured() -> None:
    raw = text(200_000, 9)
    cid = chunk_id(raw)
    assert encode_chunk(raw, chunk_id=cid).id == cid
    assert len(encode_chunk(raw, level=19).data) <= len(encode_chunk(raw, level=1).data)


@pytest.mark.parametrize("size", [0, MAX_SIZE + 1])
def test_encode_refuses_sizes_outside_the_limits(size: int) -> None:
    with pytest.raises(FrameError, match="1 to"):
        encode_chunk(bytes(size))


def test_frame_checks_its_fields() -> None:
    cid = chunk_id(b"abc")
    with pytest.raises(FrameError, match="not a chunk id"):
        Frame(cid.upper(), 0, 3, b"abc")
    with pytest.raises(FrameError, match="data_len 2 != raw_len 3"):
        Frame(cid, 0, 3, b"ab")
    with pytest.raises(FrameError, match="flags 0x02"):
        Frame(cid, 2, 3, b"abc")


def test_header_layout() -> None:
    frame = encode_chunk(b"hello")
    assert frame.header() == bytes.fromhex(frame.id) + b"\x00" + b"\x00\x00\x00\x05" * 2
    assert frame.to_bytes() == frame.header() + b"hello"
    assert stream_header() == MAGIC == b"BKF1"
    assert end_marker(3) == bytes(32) + b"\xff\x00\x00\x00\x03\x00\x00\x00\x00"
    assert len(end_marker(0)) == HEADER_SIZE


def test_worked_example_in_format_doc_is_true() -> None:
    doc = FORMAT_DOC.read_text()
    block = doc.split("<!-- worked-example -->", 1)[1].split("```", 2)[1]
    hex_digits = "".join(re.sub(r"#.*", "", line) for line in block.splitlines()[1:])
    expected = bytes.fromhex(hex_digits)
    frame = encode_chunk(b"hello")
    assert frame.flags == 0
    assert b"".join(stream_frames([frame])) == expected


# --- parsing ------------------------------------------------------------------------


def test_parse_whole_stream(frames: list[Frame], stream: bytes) -> None:
    parser = FrameParser()
    assert parser.feed(stream) == frames
    assert parser.done and parser.count == len(frames)
    parser.close()
    assert [decode_frame(f) for f in frames][2] == b"x"


def test_empty_stream_of_no_frames() -> None:
    assert parse_frames(MAGIC + end_marker(0)) == []


def test_byte_by_byte(frames: list[Frame], stream: bytes) -> None:
    parser = FrameParser()
    got: list[Frame] = []
    for i in range(len(stream)):
        assert not parser.done
        got += parser.feed(stream[i : i + 1])
    assert parser.done
    parser.close()
    assert got == frames


@pytest.mark.parametrize("seed", range(40))
def test_random_splits(seed: int, frames: list[Frame], stream: bytes) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 30)))
    parser = FrameParser()
    got: list[Frame] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got += parser.feed(memoryview(stream)[a:b] if seed % 2 else stream[a:b])
    parser.close()
    assert got == frames


def test_memory_stays_within_one_frame_plus_the_feed() -> None:
    big = [encode_chunk(noise(MAX_SIZE, s)) for s in range(3)]
    stream = b"".join(stream_frames(big))
    parser = FrameParser()
    feed = 256 * 1024
    got: list[Frame] = []
    for i in range(0, len(stream), feed):
        got += parser.feed(stream[i : i + feed])
        assert len(parser._buf) < HEADER_SIZE + MAX_SIZE + feed
    parser.close()
    assert got == big


def test_header_is_refused_before_its_data_arrives() -> None:
    parser = FrameParser()
    with pytest.raises(FrameError, match="exceeds the maximum chunk size"):
        parser.feed(MAGIC + header(b"\x01" * 32, 1, 1 << 31, 1 << 30))


CID = bytes.fromhex(chunk_id(b"abc"))
GOOD = header(CID, 0, 3, 3) + b"abc"

MALFORMED = {
    "bad magic": b"BKF2" + GOOD + end_marker(1),
    "bad magic prefix": b"X",
    "unknown flag bit": MAGIC + header(CID, 0x02, 3, 3) + b"abc" + end_marker(1),
    "zstd plus unknown bit": MAGIC + header(CID, 0x81, 3, 3) + b"abc" + end_marker(1),
    "raw_len 0": MAGIC + header(CID, 0, 0, 0) + end_marker(1),
    "raw_len over max": MAGIC + header(CID, 1, MAX_SIZE + 1, 3) + b"abc" + end_marker(1),
    "data_len over raw_len": MAGIC + header(CID, 1, 3, 4) + b"abcd" + end_marker(1),
    "raw frame with data_len != raw_len": MAGIC + header(CID, 0, 4, 3) + b"abc" + end_marker(1),
    "end count too high": MAGIC + GOOD + end_marker(2),
    "end count too low": MAGIC + GOOD + GOOD + end_marker(1),
    "end marker with id": MAGIC + GOOD + header(b"\x01" * 32, 0xFF, 1, 0),
    "end marker with data": MAGIC + GOOD + header(bytes(32), 0xFF, 1, 1) + b"x",
    "bytes after end": MAGIC + GOOD + end_marker(1) + b"\x00",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_streams_are_refused(data: bytes) -> None:
    with pytest.raises(FrameError) as exc:
        parse_frames(data)
    assert not isinstance(exc.value, (TruncatedStream, ChunkMismatch))
    assert isinstance(exc.value, IntegrityError) and isinstance(exc.value, ValueError)


def test_feed_after_end_marker_is_refused() -> None:
    parser = FrameParser()
    parser.feed(MAGIC + GOOD + end_marker(1))
    assert parser.feed(b"") == []
    with pytest.raises(FrameError, match="after the end marker"):
        parser.feed(b"more")


def test_error_message_names_the_chunk() -> None:
    with pytest.raises(FrameError, match=f"frame {CID.hex()}: data_len 4 exceeds raw_len 3"):
        parse_frames(MALFORMED["data_len over raw_len"])


def test_truncation_anywhere_is_detected(stream: bytes) -> None:
    for i in range(len(stream)):
        parser = FrameParser()
        parser.feed(stream[:i])
        assert not parser.done
        with pytest.raises(TruncatedStream):
            parser.close()


def test_no_bit_flip_goes_unnoticed(frames: list[Frame], stream: bytes) -> None:
    """Any single corrupted byte is refused, or still yields exactly the original chunks."""
    originals = [decode_frame(f) for f in frames]
    refused = 0
    for i in range(len(stream)):
        for mask in (0x01, 0x80):
            damaged = bytearray(stream)
            damaged[i] ^= mask
            try:
                assert [decode_frame(f) for f in parse_frames(bytes(damaged))] == originals
            except FrameError:
                refused += 1
    assert refused > 2 * len(stream) * 0.9


# --- decoding -------------------------------------------------------------------------


def test_wrong_id_is_a_mismatch() -> None:
    frame = encode_chunk(text(1000))
    forged = Frame(chunk_id(b"other"), frame.flags, frame.raw_len, frame.data)
    with pytest.raises(ChunkMismatch, match=f"chunk {forged.id}: data hashes to {frame.id}"):
        decode_frame(forged)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: Frame(f.id, f.flags, f.raw_len - 1, f.data),
        lambda f: Frame(f.id, f.flags, f.raw_len + 1, f.data),
        lambda f: Frame(f.id, f.flags, f.raw_len, f.data + b"\x00"),
        lambda f: Frame(f.id, f.flags, f.raw_len, f.data[:-1]),
        lambda f: Frame(f.id, f.flags, f.raw_len, b"\x00" * len(f.data)),
        lambda f: Frame(f.id, f.flags, f.raw_len, f.data + zstandard.ZstdCompressor().compress(b"x")),
    ],
    ids=["raw_len-1", "raw_len+1", "trailing byte", "cut short", "not zstd", "second zstd frame"],
)
def test_damaged_zstd_frames_are_mismatches(mutate) -> None:
    with pytest.raises(ChunkMismatch):
        decode_frame(mutate(encode_chunk(text(10_000))))


def test_raw_frame_with_wrong_content_is_a_mismatch() -> None:
    raw = noise(100)
    with pytest.raises(ChunkMismatch):
        decode_frame(Frame(chunk_id(raw), 0, 100, noise(100, 1)))


def rle_zstd(blocks: int, *, content_size: int | None = None) -> bytes:
    """A hand-made zstd frame of `blocks` RLE blocks of 128 KiB zeros: 4 bytes each."""
    out = bytearray(b"\x28\xb5\x2f\xfd")
    if content_size is None:
        out += b"\x00\x38"  # no content size; window 2^17
    else:
        out += b"\xc0\x38" + content_size.to_bytes(8, "little")  # 8-byte content size
    for i in range(blocks):
        block_header = (131072 << 3) | (1 << 1) | (i == blocks - 1)
        out += block_header.to_bytes(3, "little") + b"\x00"
    return bytes(out)


def test_handmade_zstd_is_valid() -> None:
    raw = bytes(3 * 131072)
    assert decode_frame(Frame(chunk_id(raw), FLAG_ZSTD, len(raw), rle_zstd(3))) == raw
    assert decode_frame(Frame(chunk_id(raw), FLAG_ZSTD, len(raw), rle_zstd(3, content_size=len(raw)))) == raw


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (rle_zstd(32768), "does not decode"),  # 4 GiB, size not declared
        (rle_zstd(32768, content_size=MAX_SIZE), "does not decode"),  # 4 GiB, declared 4 MiB
        (rle_zstd(2, content_size=1 << 40), "declares 1099511627776 bytes"),  # lies about its size
    ],
    ids=["undeclared", "understated", "overstated"],
)
def test_zstd_bomb_is_bounded_by_raw_len(data: bytes, message: str) -> None:
    bomb = Frame(chunk_id(b"whatever"), FLAG_ZSTD, MAX_SIZE, data)
    with pytest.raises(ChunkMismatch, match=message):
        decode_frame(bomb)


# --- batches: encode_chunks -------------------------------------------------


def mixed_chunks(seed: int, n: int = 400) -> list[bytes]:
    """Chunks of every kind in a random order: tiny, incompressible, compressible, and past BATCH_BELOW."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.4:
            out.append(text(rng.randint(1, 20_000), seed * 1000 + i))
        elif kind < 0.7:
            out.append(noise(rng.randint(1, 9000), seed * 1000 + i))
        elif kind < 0.97:
            out.append(bytes(rng.randint(1, 5000)))
        else:
            out.append(text(rng.randint(BATCH_BELOW, 2 * BATCH_BELOW), i))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_encode_chunks_frames_each_chunk_as_encode_chunk_does(seed: int) -> None:
    chunks = mixed_chunks(seed)
    ids = [chunk_id(c) for c in chunks]
    batched = list(encode_chunks(zip(ids, chunks)))
    assert batched == [encode_chunk(c, chunk_id=i) for i, c in zip(ids, chunks)]
    assert {f.flags for f in batched} == {0, FLAG_ZSTD}
    assert [decode_frame(f) for f in batched] == chunks


def test_encode_chunks_pulls_about_one_batch_ahead() -> None:
    pulled = 0

    def chunks():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            raw = text(1000, i)
            yield chunk_id(raw), raw

    frames = encode_chunks(chunks())
    next(frames)
    assert pulled == BATCH_BYTES // 1000 + 1  # the first batch, no more


def test_encode_chunks_refuses_sizes_outside_the_limits() -> None:
    with pytest.raises(FrameError, match="1 to"):
        list(encode_chunks([(chunk_id(b"a"), b"a"), (chunk_id(b""), b"")]))

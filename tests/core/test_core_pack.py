"""Packs: build and read back, and refuse every damaged, forged or foreign byte."""

from __future__ import annotations

import os
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bkup.core.chunker import MAX_SIZE
from bkup.core.frames import FLAG_ZSTD, Frame, decode_frame, encode_chunk
from bkup.core.hashing import chunk_id
from bkup.core.pack import (
    BLOB_OVERHEAD,
    HEADER,
    TRAILER_SIZE,
    PackBuilder,
    PackEntry,
    PackError,
    decode_index,
    encode_index,
    open_blob,
    parse_trailer,
    seal_blob,
)
from bkup.errors import IntegrityError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PACK_ID = "0123456789abcdef0123456789abcdef"


def chunks() -> list[bytes]:
    rng = random.Random(7)
    return [rng.randbytes(1000), b"a" * 5000, b"z", rng.randbytes(300) * 20, rng.randbytes(70_000)]


def build(key: bytes = KEY, pack_id: str = PACK_ID) -> tuple[bytes, list[Frame], tuple[PackEntry, ...]]:
    frames = [encode_chunk(c) for c in chunks()]
    builder = PackBuilder(key, pack_id)
    out = bytearray(builder.begin())
    for f in frames:
        out += builder.add(f.id, f.flags, f.raw_len, f.data)
    out += builder.finish()
    assert builder.size == len(out)
    return bytes(out), frames, builder.entries


def read_pack(pack: bytes, key: bytes = KEY, pack_id: str = PACK_ID) -> list[bytes]:
    """A reader written from docs/format.md: trailer, index, blobs, frames."""
    assert pack[: len(HEADER)] == HEADER
    index_offset, index_length = parse_trailer(pack[-TRAILER_SIZE:], pack_size=len(pack))
    entries = decode_index(key, pack_id, pack[index_offset : index_offset + index_length], index_offset=index_offset)
    out = []
    for e in entries:
        stored = open_blob(key, e, pack[e.offset : e.offset + e.length])
        out.append(decode_frame(Frame(e.id, e.flags, e.raw_len, stored)))
    return out


def test_round_trip() -> None:
    pack, frames, entries = build()
    assert read_pack(pack) == chunks()
    assert {f.flags for f in frames} == {0, FLAG_ZSTD}
    assert [e.id for e in entries] == [f.id for f in frames]
    assert [e.length for e in entries] == [len(f.data) + BLOB_OVERHEAD for f in frames]
    assert entries[0].offset == len(HEADER) == 8


def test_layout_sizes() -> None:
    pack, frames, entries = build()
    index_offset, index_length = parse_trailer(pack[-TRAILER_SIZE:])
    assert index_offset == entries[-1].offset + entries[-1].length
    # nonce + (count + 49 bytes per entry) + tag
    assert index_length == 12 + 4 + 49 * len(entries) + 16
    assert len(pack) == index_offset + index_length + TRAILER_SIZE
    assert pack[-8:] == b"BKPKIDX1"
    assert struct.unpack(">QII", pack[-24:-8]) == (index_offset, index_length, 1)


def test_empty_pack() -> None:
    builder = PackBuilder(KEY, PACK_ID)
    pack = builder.begin() + builder.finish()
    assert read_pack(pack) == []


def test_blob_seal_and_open() -> None:
    cid = chunk_id(b"data")
    blob = seal_blob(KEY, cid, 0, b"data")
    assert len(blob) == 4 + BLOB_OVERHEAD
    assert seal_blob(KEY, cid, 0, b"data") != blob  # fresh nonce each time
    entry = PackEntry(cid, 8, len(blob), 4, 0)
    assert open_blob(KEY, entry, blob) == b"data"
    # The AAD is documented: raw id + flags byte, nonce first.
    assert AESGCM(KEY).decrypt(blob[:12], blob[12:], bytes.fromhex(cid) + b"\x00") == b"data"


def test_blobs_can_move_between_packs() -> None:
    # A blob is bound to its chunk id and flags, not to a pack or offset: repacking copies it as is.
    pack, frames, entries = build()
    e = entries[1]
    blob = pack[e.offset : e.offset + e.length]
    assert open_blob(KEY, PackEntry(e.id, 12345, e.length, e.raw_len, e.flags), blob) == frames[1].data


# --- damage ---------------------------------------------------------------------------


def test_every_blob_byte_is_authenticated() -> None:
    pack, _, entries = build()
    e = entries[0]
    blob = pack[e.offset : e.offset + e.length]
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x20
        with pytest.raises(PackError, match=f"chunk {e.id}"):
            open_blob(KEY, e, bytes(damaged))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: PackEntry(chunk_id(b"other"), e.offset, e.length, e.raw_len, e.flags),
        lambda e: PackEntry(e.id, e.offset, e.length, e.raw_len, e.flags ^ 1),
    ],
    ids=["other id", "other flags"],
)
def test_blob_is_bound_to_id_and_flags(mutate) -> None:
    pack, _, entries = build()
    e = entries[1]
    with pytest.raises(PackError, match="fails authentication"):
        open_blob(KEY, mutate(e), pack[e.offset : e.offset + e.length])


def test_blob_length_must_match_entry() -> None:
    pack, _, entries = build()
    e = entries[0]
    with pytest.raises(PackError, match="the index says"):
        open_blob(KEY, e, pack[e.offset : e.offset + e.length - 1])


def test_wrong_key_is_refused() -> None:
    pack, _, entries = build()
    e = entries[0]
    with pytest.raises(PackError, match="another key"):
        open_blob(OTHER_KEY, e, pack[e.offset : e.offset + e.length])
    with pytest.raises(PackError, match="another key"):
        read_pack(pack, key=OTHER_KEY)


def test_index_of_another_pack_is_refused() -> None:
    pack, _, _ = build()
    with pytest.raises(PackError, match="another pack's index"):
        read_pack(pack, pack_id="f" * 32)


def test_every_index_byte_is_authenticated() -> None:
    pack, _, _ = build()
    index_offset, index_length = parse_trailer(pack[-TRAILER_SIZE:])
    for i in range(index_offset, index_offset + index_length):
        damaged = bytearray(pack)
        damaged[i] ^= 0x01
        with pytest.raises(PackError):
            read_pack(bytes(damaged))


def test_every_trailer_byte_matters() -> None:
    pack, _, _ = build()
    for i in range(len(pack) - TRAILER_SIZE, len(pack)):
        damaged = bytearray(pack)
        damaged[i] ^= 0x01
        with pytest.raises(PackError):
            read_pack(bytes(damaged))


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (b"\x00" * 23, "needs 24 bytes"),
        (struct.pack(">QII8s", 8, 32, 1, b"BKPKIDX2"), "magic"),
        (struct.pack(">QII8s", 8, 32, 2, b"BKPKIDX1"), "version 2"),
        (struct.pack(">QII8s", 7, 32, 1, b"BKPKIDX1"), "corrupt"),
        (struct.pack(">QII8s", 8, 31, 1, b"BKPKIDX1"), "corrupt"),
    ],
)
def test_bad_trailers(tail: bytes, message: str) -> None:
    with pytest.raises(PackError, match=message):
        parse_trailer(tail)


def test_trailer_against_pack_size() -> None:
    pack, _, _ = build()
    assert parse_trailer(b"junk" + pack[-TRAILER_SIZE:]) == parse_trailer(pack[-TRAILER_SIZE:])
    with pytest.raises(PackError, match="does not end a pack"):
        parse_trailer(pack[-TRAILER_SIZE:], pack_size=len(pack) + 1)


def test_truncated_pack_is_refused() -> None:
    pack, _, _ = build()
    for cut in (1, TRAILER_SIZE, TRAILER_SIZE + 1, len(pack) // 2):
        with pytest.raises(PackError):
            read_pack(pack[:-cut])


# --- the index as specified, entry by entry ------------------------------------------------

A, B = chunk_id(b"a" * 10), chunk_id(b"b" * 10)


def sealed_index(entries: list[tuple[str, int, int, int, int]], count: int | None = None) -> bytes:
    """Encrypt an index by hand from docs/format.md, bypassing encode_index's checks."""
    plain = struct.pack(">I", len(entries) if count is None else count)
    for cid, offset, length, raw_len, flags in entries:
        plain += struct.pack(">32sQIIB", bytes.fromhex(cid), offset, length, raw_len, flags)
    nonce = os.urandom(12)
    return nonce + AESGCM(KEY).encrypt(nonce, plain, b"bkup-pack-index:" + PACK_ID.encode())


def test_handmade_index_decodes() -> None:
    blob = sealed_index([(A, 8, 38, 10, 0), (B, 46, 30, 10, 1)])
    assert decode_index(KEY, PACK_ID, blob, index_offset=76) == [
        PackEntry(A, 8, 38, 10, 0),
        PackEntry(B, 46, 30, 10, 1),
    ]


@pytest.mark.parametrize(
    ("entries", "count", "message"),
    [
        ([(A, 8, 38, 10, 0)], 2, "counts 2 entries"),
        ([(A, 8, 38, 10, 0)], 0, "counts 0 entries"),
        ([(A, 9, 38, 10, 0)], None, "expected 8"),
        ([(A, 8, 38, 10, 0), (B, 40, 30, 10, 1)], None, "expected 46"),  # overlap
        ([(A, 8, 38, 10, 0), (B, 50, 30, 10, 1)], None, "expected 46"),  # gap
        ([(A, 8, 38, 10, 0), (A, 46, 38, 10, 0)], None, "appears twice"),
        ([(A, 8, 38, 10, 2)], None, "unknown bits"),
        ([(A, 8, 28, 0, 1)], None, "raw_len 0"),
        ([(A, 8, 28 + MAX_SIZE + 1, MAX_SIZE + 1, 0)], None, "raw_len 4194305"),
        ([(A, 8, 39, 10, 1)], None, "do not fit"),  # stored 11 > raw 10
        ([(A, 8, 37, 10, 0)], None, "do not fit"),  # raw stored != raw_len
        ([(A, 8, 28, 10, 1)], None, "do not fit"),  # nothing stored
    ],
)
def test_bad_index_entries(entries, count, message: str) -> None:
    with pytest.raises(PackError, match=message):
        decode_index(KEY, PACK_ID, sealed_index(entries, count))


def test_index_must_end_where_the_blobs_end() -> None:
    blob = sealed_index([(A, 8, 38, 10, 0)])
    assert decode_index(KEY, PACK_ID, blob, index_offset=46)
    with pytest.raises(PackError, match="blobs end at 46 but the index starts at 47"):
        decode_index(KEY, PACK_ID, blob, index_offset=47)


def test_encode_index_checks_layout() -> None:
    with pytest.raises(PackError, match="expected 8"):
        encode_index(KEY, PACK_ID, [PackEntry(A, 0, 38, 10, 0)])
    with pytest.raises(ValueError, match="inside the blobs"):
        encode_index(KEY, PACK_ID, [PackEntry(A, 8, 38, 10, 0)], index_offset=45)
    tail = encode_index(KEY, PACK_ID, [PackEntry(A, 8, 38, 10, 0)])
    assert parse_trailer(tail)[0] == 46


def test_builder_misuse() -> None:
    f = encode_chunk(b"hello")
    builder = PackBuilder(KEY, PACK_ID)
    with pytest.raises(RuntimeError):
        builder.add(f.id, f.flags, f.raw_len, f.data)
    builder.begin()
    builder.add(f.id, f.flags, f.raw_len, f.data)
    assert f.id in builder and len(builder) == 1
    with pytest.raises(ValueError, match="already in pack"):
        builder.add(f.id, f.flags, f.raw_len, f.data)
    with pytest.raises(PackError, match="do not fit"):
        builder.add(chunk_id(b"x"), 0, 2, b"x")
    builder.finish()
    with pytest.raises(RuntimeError):
        builder.finish()
    with pytest.raises(ValueError, match="32 bytes"):
        PackBuilder(b"short", PACK_ID)


def test_errors_are_integrity_errors() -> None:
    assert issubclass(PackError, IntegrityError)

"""Fuzz of the frame and pack parsers: whatever the bytes, the only exceptions are FrameError and PackError.

Inputs are random, and mutations of valid streams, indexes and blobs (the
interesting bugs sit one flipped byte away from something valid). Indexes
are also fuzzed *after* authentication (sealed under the real key), so the
parsing behind the AES-GCM check is exercised, not only the check.
BKUP_FUZZ_EXAMPLES scales the examples (CI: 300 per test).
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bkup.core.frames import (
    FLAG_ZSTD,
    Frame,
    FrameError,
    FrameParser,
    decode_frame,
    encode_chunk,
    end_marker,
    stream_header,
)
from bkup.core.hashing import chunk_id
from bkup.core.pack import (
    NONCE_SIZE,
    PackBuilder,
    PackEntry,
    PackError,
    _index_aad,
    decode_index,
    open_blob,
    parse_trailer,
)

EXAMPLES = max(300, int(os.environ.get("BKUP_FUZZ_EXAMPLES", "0")) * 40)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
KEY = bytes(range(32))
PACK_ID = "ab" * 16

_SAMPLES = [b"a", b"hello bkup " * 50, os.urandom(300), bytes(5000)]
VALID_STREAM = stream_header() + b"".join(encode_chunk(s).to_bytes() for s in _SAMPLES) + end_marker(len(_SAMPLES))


def _pack() -> tuple[bytes, list[PackEntry]]:
    b = PackBuilder(KEY, PACK_ID)
    out = b.begin()
    for s in _SAMPLES:
        f = encode_chunk(s)
        out += b.add(f.id, f.flags, f.raw_len, f.data)
    out += b.finish()
    return out, list(b.entries)


VALID_PACK, VALID_ENTRIES = _pack()


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """`base` with a few bytes flipped, a slice cut out or inserted, or cut short."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[i:]
    return bytes(data)


def _parse_all(data: bytes, splits: list[int]) -> None:
    parser = FrameParser()
    pos = 0
    for cut in sorted(set(splits)) + [len(data)]:
        cut = min(cut, len(data))
        for frame in parser.feed(data[pos:cut]):
            decode_frame(frame)
        pos = max(pos, cut)
    parser.close()


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(VALID_STREAM)), st.lists(st.integers(0, 30000), max_size=6))
def test_frame_streams_parse_or_raise_frame_error(data, splits):
    try:
        _parse_all(data, splits)
    except FrameError:
        pass


@FUZZ
@given(st.sampled_from(_SAMPLES).flatmap(lambda s: st.tuples(st.just(encode_chunk(s)), st.integers(0, 3))), st.data())
def test_decode_frame_of_a_forged_frame_raises_only_chunk_mismatch(pair, data):
    frame, what = pair
    payload = data.draw(mutated(frame.data)) or b"\x00"
    try:
        if what == 0:  # forged data under the right id
            forged = Frame(frame.id, frame.flags, frame.raw_len if frame.flags == FLAG_ZSTD else len(payload), payload)
        elif what == 1:  # another id
            forged = Frame(chunk_id(payload), frame.flags, frame.raw_len, frame.data)
        elif what == 2:  # the zstd flag on raw data, or off on zstd data
            forged = Frame(frame.id, frame.flags ^ FLAG_ZSTD, max(frame.raw_len, len(frame.data)), frame.data)
        else:  # a raw_len that lies
            forged = Frame(frame.id, frame.flags, data.draw(st.integers(max(1, len(frame.data)), 4 << 20)), frame.data)
    except FrameError:
        return  # the constructor refused it: as good as the parser would
    try:
        raw = decode_frame(forged)
    except FrameError:
        return
    assert chunk_id(raw) == forged.id and len(raw) == forged.raw_len


@FUZZ
@given(st.one_of(st.binary(max_size=64), mutated(VALID_PACK[-40:])), st.one_of(st.none(), st.integers(0, 1 << 40)))
def test_parse_trailer_raises_only_pack_error(tail, size):
    try:
        offset, length = parse_trailer(tail, pack_size=size)
    except PackError:
        return
    assert offset >= 8 and length > 0


@FUZZ
@given(st.one_of(st.binary(max_size=512), mutated(VALID_PACK)))
def test_decode_index_of_damaged_packs_raises_only_pack_error(pack):
    try:
        offset, length = parse_trailer(pack, pack_size=len(pack))
        decode_index(KEY, PACK_ID, pack[offset:offset + length], index_offset=offset)
    except PackError:
        pass


@FUZZ
@given(st.binary(max_size=49 * 6).map(lambda b: struct.pack(">I", len(b) // 49) + b), st.booleans())
def test_decode_index_of_authentic_but_malformed_plaintext_raises_only_pack_error(plain, lie):
    # Behind the authentication check: what if the key were used to seal nonsense?
    if lie:
        plain = struct.pack(">I", int.from_bytes(plain[:4], "big") + 1) + plain[4:]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(NONCE_SIZE)
    sealed = nonce + AESGCM(KEY).encrypt(nonce, plain, _index_aad(PACK_ID))
    try:
        entries = decode_index(KEY, PACK_ID, sealed)
    except PackError:
        return
    assert all(e.length > 28 and 1 <= e.raw_len <= 4 << 20 for e in entries)


@FUZZ
@given(st.integers(0, len(VALID_ENTRIES) - 1), st.data())
def test_open_blob_of_damaged_blobs_raises_only_pack_error(i, data):
    entry = VALID_ENTRIES[i]
    good = VALID_PACK[entry.offset:entry.offset + entry.length]
    blob = data.draw(st.one_of(mutated(good), st.binary(max_size=64)))
    entry = data.draw(st.sampled_from([entry, *VALID_ENTRIES]))
    try:
        stored = open_blob(KEY, entry, blob)
    except PackError:
        return
    assert blob == good and stored  # only the untouched blob at its own entry opens


@FUZZ
@given(st.one_of(st.text(max_size=70), st.just("ab" * 32)), st.integers(-5, 300), st.integers(-5, 5 << 20),
       st.one_of(st.binary(max_size=28), st.binary(min_size=29, max_size=100)))
def test_open_blob_with_a_malformed_entry_raises_only_pack_error(cid, flags, raw_len, blob):
    entry = PackEntry(cid, 8, len(blob), raw_len, flags)
    try:
        open_blob(KEY, entry, blob)
    except PackError:
        pass

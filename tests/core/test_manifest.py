"""The manifest format: records round-trip through zstd and AES-GCM segments; damage and misuse are refused."""

from __future__ import annotations

import os
import random

import pytest

from bkup.core.manifest import (
    HEADER_SIZE,
    NONCE_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    ManifestEncoder,
    ManifestError,
    decode_manifest,
    encode_manifest,
    manifest_user,
    stream_manifest,
)

KEY = os.urandom(32)


def records(n: int) -> list[dict]:
    rnd = random.Random(n)
    return [{"type": "run", "n": n}] + [{"op": "open", "path": f"/f{i}", "chunks": [rnd.randbytes(32).hex()]} for i in range(n)]


def test_round_trip_with_many_segments():
    enc = ManifestEncoder(KEY, 7, 3, "12", segment_size=10_000)
    data = enc.begin() + b"".join(enc.add(r) for r in records(3000)) + enc.finish()
    assert manifest_user(data) == 7
    assert list(decode_manifest(KEY, 3, "12", data)) == records(3000)
    assert len(data) > 100_000  # many segments


def test_segments_stay_within_the_formats_limit():
    # Random chunk ids (hex: about half compressible): ~3 segments of the default size.
    enc = ManifestEncoder(KEY, 7, 3, "12")
    recs = [{"type": "run"}] + [{"op": "open", "path": f"/f{i}", "chunks": [os.urandom(32).hex() for _ in range(8)]} for i in range(12_000)]
    data = enc.begin() + b"".join(enc.add(r) for r in recs) + enc.finish()
    lengths, pos = [], 12
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        lengths.append(n - NONCE_SIZE - TAG_SIZE)
        pos += 4 + n
    assert pos == len(data) and len(lengths) >= 3
    assert SEGMENT_SIZE <= 4 * 2**20  # docs/format.md §7.1
    assert all(n == SEGMENT_SIZE for n in lengths[:-1]) and 0 < lengths[-1] <= SEGMENT_SIZE
    assert list(decode_manifest(KEY, 3, "12", data)) == recs


def test_a_stream_reads_one_segment_at_a_time():
    enc = ManifestEncoder(KEY, 7, 3, "12", segment_size=10_000)
    data = enc.begin() + b"".join(enc.add(r) for r in records(3000)) + enc.finish()
    reads: list[tuple[int, int]] = []

    def read_at(start: int, n: int) -> bytes:
        reads.append((start, n))
        return data[start : start + n]

    assert list(stream_manifest({7: KEY}.__getitem__, 3, "12", len(data), read_at)) == records(3000)
    assert len(reads) > 10 and max(n for _, n in reads) <= 10_000 + NONCE_SIZE + TAG_SIZE + 4
    assert sum(n for _, n in reads) == len(data)  # every byte read once


def test_a_segment_longer_than_the_format_allows_is_refused_unread():
    length = 4 * 2**20 + NONCE_SIZE + TAG_SIZE + 1
    data = encode_manifest(KEY, 1, 2, "5", [])[:HEADER_SIZE] + length.to_bytes(4, "big") + bytes(length)
    reads: list[int] = []

    def read_at(start: int, n: int) -> bytes:
        reads.append(n)
        return data[start : start + n]

    with pytest.raises(ManifestError, match="longer than the format allows"):
        list(stream_manifest(lambda _user_id: KEY, 2, "5", len(data), read_at))
    assert max(reads) == HEADER_SIZE + 4


def test_empty_and_small():
    assert list(decode_manifest(KEY, 1, "1", encode_manifest(KEY, 1, 1, "1", []))) == []
    assert list(decode_manifest(KEY, 1, "1", encode_manifest(KEY, 1, 1, "1", [{"a": 1}]))) == [{"a": 1}]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-1],  # truncated inside the last segment
        lambda d: d + b"\0" * 8,  # bytes appended
        lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:],  # a flipped byte
        lambda d: b"NOTAMANI" + d[8:],
    ],
)
def test_damage_is_refused(mangle):
    data = encode_manifest(KEY, 1, 2, "5", records(50))
    with pytest.raises(ManifestError):
        list(decode_manifest(KEY, 2, "5", mangle(data)))


def test_dropping_the_last_segment_is_refused():
    enc = ManifestEncoder(KEY, 1, 2, "5", segment_size=1000)
    parts = [enc.begin()] + [enc.add(r) for r in records(3000)]
    full = b"".join(parts) + enc.finish()
    cut = b"".join(parts)  # every segment sealed so far, none marked last
    assert len(cut) > 12 and cut != full
    with pytest.raises(ManifestError):
        list(decode_manifest(KEY, 2, "5", cut))


def test_a_manifest_cannot_be_moved_or_opened_with_another_key():
    data = encode_manifest(KEY, 1, 2, "5", records(3))
    for client, name, key in ((3, "5", KEY), (2, "6", KEY), (2, "5", os.urandom(32))):
        with pytest.raises(ManifestError):
            list(decode_manifest(key, client, name, data))

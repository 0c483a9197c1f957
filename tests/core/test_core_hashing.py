"""Hashing: chunk ids and content ids match BLAKE3-256 as specified."""

from __future__ import annotations

import pytest
from blake3 import blake3

from bkup.core.hashing import EMPTY_CONTENT_ID, chunk_id, content_id, content_id_of_checked, is_chunk_id

# Official BLAKE3 test vectors (hash of b"" and of b"abc").
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
BLAKE3_ABC = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"


def test_chunk_id_is_blake3_256_lowercase_hex() -> None:
    assert chunk_id(b"abc") == BLAKE3_ABC
    assert chunk_id(memoryview(b"xabc")[1:]) == BLAKE3_ABC
    assert chunk_id(bytearray(b"abc")) == BLAKE3_ABC


def test_content_id_hashes_the_raw_ids_in_order() -> None:
    a, b = chunk_id(b"a"), chunk_id(b"b")
    assert content_id([a, b]) == blake3(bytes.fromhex(a) + bytes.fromhex(b)).hexdigest()
    assert content_id([a, b]) != content_id([b, a])
    assert content_id([a]) != a  # a one-chunk content is not named like its chunk
    assert content_id((a, b)) == content_id([a, b])


def test_empty_content_id_is_blake3_of_nothing() -> None:
    assert EMPTY_CONTENT_ID == content_id([]) == BLAKE3_EMPTY


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (BLAKE3_ABC, True),
        ("0" * 64, True),
        (BLAKE3_ABC.upper(), False),
        (BLAKE3_ABC[:-1], False),
        (BLAKE3_ABC + "0", False),
        (BLAKE3_ABC[:-1] + "g", False),
        (BLAKE3_ABC[:-1] + "\n", False),
        (" " + BLAKE3_ABC[1:], False),
        (bytes.fromhex(BLAKE3_ABC), False),
        (None, False),
        ("", False),
    ],
)
def test_is_chunk_id(value: object, ok: bool) -> None:
    assert is_chunk_id(value) is ok


@pytest.mark.parametrize("bad", [BLAKE3_ABC.upper(), "ab" * 31, "zz" * 32, "ab cd" + "0" * 59])
def test_content_id_refuses_other_spellings(bad: str) -> None:
    with pytest.raises(ValueError, match="not a chunk id"):
        content_id([BLAKE3_ABC, bad])


def test_content_id_of_checked_ids_hashes_them_in_pieces_as_one_stream() -> None:
    ids = [chunk_id(i.to_bytes(4, "big")) for i in range(9000)]  # three pieces of 4,096
    streamed = blake3()
    for cid in ids:
        streamed.update(bytes.fromhex(cid))
    assert content_id_of_checked(ids) == content_id(ids) == streamed.hexdigest()
    assert content_id_of_checked([]) == EMPTY_CONTENT_ID

"""Chunk ids and content ids: the BLAKE3-256 names of chunks and of file bodies."""

from __future__ import annotations

import re
from collections.abc import Sequence

from blake3 import blake3

ID_SIZE = 32  # bytes; 64 hex characters

_CHUNK_ID = re.compile(r"[0-9a-f]{64}")


def chunk_id(data: bytes | bytearray | memoryview) -> str:
    """BLAKE3-256 of a chunk's plaintext, as 64 lowercase hex characters."""
    return blake3(data).hexdigest()


def is_chunk_id(s: object) -> bool:
    """True for exactly 64 lowercase hex characters (the only spelling bkup accepts)."""
    return isinstance(s, str) and len(s) == 64 and _CHUNK_ID.fullmatch(s) is not None


def content_id(chunk_ids: Sequence[str]) -> str:
    """BLAKE3-256 of the concatenated raw 32-byte chunk ids, in order; raises ValueError on a bad id."""
    for cid in chunk_ids:
        if not is_chunk_id(cid):
            raise ValueError(f"not a chunk id (64 lowercase hex characters): {cid!r:.80}")
    return content_id_of_checked(chunk_ids)


def content_id_of_checked(chunk_ids: Sequence[str]) -> str:
    """`content_id` of chunk ids the caller has already checked with `is_chunk_id`."""
    hasher = blake3()
    for i in range(0, len(chunk_ids), 4096):  # pieces: a file of a million chunks
        hasher.update(bytes.fromhex("".join(chunk_ids[i : i + 4096])))
    return hasher.hexdigest()


EMPTY_CONTENT_ID = content_id([])

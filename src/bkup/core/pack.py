"""The pack format: encrypted chunk blobs back to back, an encrypted index, a fixed trailer (docs/format.md)."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bkup.core.chunker import MAX_SIZE
from bkup.core.frames import FLAG_ZSTD
from bkup.core.hashing import is_chunk_id
from bkup.errors import IntegrityError

HEADER = b"BKPACK01"
FORMAT_VERSION = 1
TRAILER_MAGIC = b"BKPKIDX1"
TRAILER_SIZE = 24
NONCE_SIZE = 12
TAG_SIZE = 16
BLOB_OVERHEAD = NONCE_SIZE + TAG_SIZE  # 28
KEY_SIZE = 32
INDEX_AAD_PREFIX = b"bkup-pack-index:"

_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">32sQIIB")  # id | offset | length | raw_len | flags
_TRAILER = struct.Struct(">QII8s")  # index_offset | index_length | version | magic
_KNOWN_FLAGS = FLAG_ZSTD
# The smallest index: nonce, tag and an encrypted count of 0.
MIN_INDEX_LENGTH = NONCE_SIZE + _COUNT.size + TAG_SIZE

assert _ENTRY.size == 49 and _TRAILER.size == TRAILER_SIZE


class PackError(IntegrityError):
    """A pack, blob or index that is damaged, forged, or sealed under another key."""


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one chunk's blob sits in a pack: offset and length of the whole blob, plaintext size, flags."""

    id: str
    offset: int
    length: int
    raw_len: int
    flags: int

    @property
    def stored_len(self) -> int:
        """Length of the stored data (the frame's data) inside the blob."""
        return self.length - BLOB_OVERHEAD


def _aead(key: bytes) -> AESGCM:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a pack key has {KEY_SIZE} bytes, not {len(key)}")
    return AESGCM(key)


def _blob_aad(chunk_id: str, flags: int) -> bytes:
    return bytes.fromhex(chunk_id) + bytes((flags,))


def _check_stored(chunk_id: str, flags: int, raw_len: int, stored_len: int) -> None:
    # The same limits as for frames: stored bytes are a frame's data.
    if not is_chunk_id(chunk_id):
        raise PackError(f"not a chunk id: {chunk_id!r:.80}")
    if flags & ~_KNOWN_FLAGS:
        raise PackError(f"chunk {chunk_id}: flags 0x{flags:02x} has unknown bits")
    if not 1 <= raw_len <= MAX_SIZE:
        raise PackError(f"chunk {chunk_id}: raw_len {raw_len} is outside 1..{MAX_SIZE}")
    if stored_len < 1 or stored_len > raw_len or (flags == 0 and stored_len != raw_len):
        raise PackError(f"chunk {chunk_id}: {stored_len} stored bytes do not fit raw_len {raw_len}, flags {flags}")


def seal_blob(key: bytes, chunk_id: str, flags: int, data: bytes) -> bytes:
    """Encrypt one chunk's stored data (a frame's data) into a blob: nonce | ciphertext | tag."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + _aead(key).encrypt(nonce, data, _blob_aad(chunk_id, flags))


def open_blob(key: bytes, entry: PackEntry, blob: bytes) -> bytes:
    """Decrypt and authenticate a blob read at `entry`; return the stored data (still zstd if flagged)."""
    if not is_chunk_id(entry.id) or not 0 <= entry.flags <= 0xFF:
        # Entries come from decode_index, which checks them; one made up elsewhere still gets a clean error.
        raise PackError(f"not a pack entry: id {entry.id!r:.80}, flags {entry.flags}")
    if len(blob) != entry.length:
        raise PackError(f"chunk {entry.id}: blob has {len(blob)} bytes, the index says {entry.length}")
    if len(blob) <= BLOB_OVERHEAD:
        raise PackError(f"chunk {entry.id}: blob of {len(blob)} bytes is too short")
    try:
        return _aead(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], _blob_aad(entry.id, entry.flags))
    except InvalidTag:
        raise PackError(
            f"chunk {entry.id}: blob at offset {entry.offset} fails authentication (damaged, or another key)"
        ) from None


def _index_aad(pack_id: str) -> bytes:
    return INDEX_AAD_PREFIX + pack_id.encode()


def encode_index(key: bytes, pack_id: str, entries: Sequence[PackEntry], index_offset: int | None = None) -> bytes:
    """The encrypted index of `entries` followed by the trailer: the last bytes of the pack.

    `index_offset` (where these bytes will start) defaults to the end of the
    last blob, which is right for blobs written back to back after HEADER.
    """
    end = _check_layout(entries)
    if index_offset is None:
        index_offset = end
    elif index_offset < end:
        raise ValueError(f"index_offset {index_offset} lies inside the blobs (they end at {end})")
    plain = bytearray(_COUNT.pack(len(entries)))
    for e in entries:
        plain += _ENTRY.pack(bytes.fromhex(e.id), e.offset, e.length, e.raw_len, e.flags)
    nonce = os.urandom(NONCE_SIZE)
    sealed = nonce + _aead(key).encrypt(nonce, bytes(plain), _index_aad(pack_id))
    return sealed + _TRAILER.pack(index_offset, len(sealed), FORMAT_VERSION, TRAILER_MAGIC)


def parse_trailer(tail: bytes, *, pack_size: int | None = None) -> tuple[int, int]:
    """(index_offset, index_length) from the last TRAILER_SIZE bytes of a pack (a longer tail is fine).

    With `pack_size`, also check that index and trailer end the pack exactly.
    """
    if len(tail) < TRAILER_SIZE:
        raise PackError(f"pack trailer needs {TRAILER_SIZE} bytes, got {len(tail)}")
    index_offset, index_length, version, magic = _TRAILER.unpack_from(tail, len(tail) - TRAILER_SIZE)
    if magic != TRAILER_MAGIC:
        raise PackError(f"pack trailer magic is {magic!r}, not {TRAILER_MAGIC!r} (not a pack, or cut short)")
    if version != FORMAT_VERSION:
        raise PackError(f"pack format version {version} is not supported (this bkup reads {FORMAT_VERSION})")
    if index_offset < len(HEADER) or index_length < MIN_INDEX_LENGTH:
        raise PackError(f"pack trailer is corrupt: index_offset {index_offset}, index_length {index_length}")
    if pack_size is not None and index_offset + index_length + TRAILER_SIZE != pack_size:
        raise PackError(
            f"pack trailer places the index at {index_offset}+{index_length}, which does not end a pack of {pack_size} bytes"
        )
    return index_offset, index_length


def decode_index(key: bytes, pack_id: str, index_blob: bytes, *, index_offset: int | None = None) -> list[PackEntry]:
    """The entries of an encrypted index (the `index_length` bytes at `index_offset`), checked.

    Entries must be well-formed, in offset order, back to back from the end of
    HEADER, and (given `index_offset`) end exactly where the index starts.
    """
    if len(index_blob) < MIN_INDEX_LENGTH:
        raise PackError(f"pack {pack_id}: index of {len(index_blob)} bytes is too short")
    try:
        plain = _aead(key).decrypt(index_blob[:NONCE_SIZE], index_blob[NONCE_SIZE:], _index_aad(pack_id))
    except InvalidTag:
        raise PackError(
            f"pack {pack_id}: index fails authentication (damaged, another pack's index, or another key)"
        ) from None
    (count,) = _COUNT.unpack_from(plain, 0)
    if len(plain) != _COUNT.size + count * _ENTRY.size:
        raise PackError(f"pack {pack_id}: index counts {count} entries but holds {len(plain) - _COUNT.size} bytes")
    entries = [
        PackEntry(raw_id.hex(), offset, length, raw_len, flags)
        for raw_id, offset, length, raw_len, flags in _ENTRY.iter_unpack(memoryview(plain)[_COUNT.size :])
    ]
    try:
        end = _check_layout(entries)
    except PackError as e:
        raise PackError(f"pack {pack_id}: {e}") from None
    if index_offset is not None and end != index_offset:
        raise PackError(f"pack {pack_id}: blobs end at {end} but the index starts at {index_offset}")
    return entries


def _check_layout(entries: Sequence[PackEntry]) -> int:
    """Check entries lie back to back after HEADER, each well-formed and unique; return where they end."""
    pos = len(HEADER)
    seen: set[str] = set()
    for e in entries:
        _check_stored(e.id, e.flags, e.raw_len, e.length - BLOB_OVERHEAD)
        if e.offset != pos:
            raise PackError(f"chunk {e.id}: blob at offset {e.offset}, expected {pos} (blobs lie back to back)")
        if e.id in seen:
            raise PackError(f"chunk {e.id} appears twice")
        seen.add(e.id)
        pos += e.length
    return pos


class PackBuilder:
    """Bookkeeping for writing one pack: returns the bytes to append, in order, and records the index.

    Usage: write `begin()`, then `add(...)` for each chunk, then `finish()`.
    The builder does no I/O; storage moves the bytes.
    """

    def __init__(self, key: bytes, pack_id: str) -> None:
        self._aead = _aead(key)
        self._key = key
        self.pack_id = pack_id
        self._entries: list[PackEntry] = []
        self._ids: set[str] = set()
        self._size = 0
        self._state = "new"

    @property
    def entries(self) -> tuple[PackEntry, ...]:
        return tuple(self._entries)

    @property
    def size(self) -> int:
        """Bytes handed out so far (the pack's size once finished)."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._ids

    def begin(self) -> bytes:
        """The pack header, to write first."""
        if self._state != "new":
            raise RuntimeError("PackBuilder.begin() called twice")
        self._state = "open"
        self._size = len(HEADER)
        return HEADER

    def add(self, chunk_id: str, flags: int, raw_len: int, data: bytes) -> bytes:
        """Seal one chunk's stored data; return the blob to append. A pack holds each chunk once."""
        if self._state != "open":
            raise RuntimeError(f"PackBuilder.add() on a {self._state} builder")
        _check_stored(chunk_id, flags, raw_len, len(data))
        if chunk_id in self._ids:
            raise ValueError(f"chunk {chunk_id} is already in pack {self.pack_id}")
        nonce = os.urandom(NONCE_SIZE)
        blob = nonce + self._aead.encrypt(nonce, data, _blob_aad(chunk_id, flags))
        self._entries.append(PackEntry(chunk_id, self._size, len(blob), raw_len, flags))
        self._ids.add(chunk_id)
        self._size += len(blob)
        return blob

    def finish(self) -> bytes:
        """The encrypted index and trailer, to write last."""
        if self._state != "open":
            raise RuntimeError(f"PackBuilder.finish() on a {self._state} builder")
        self._state = "finished"
        tail = encode_index(self._key, self.pack_id, self._entries, self._size)
        self._size += len(tail)
        return tail

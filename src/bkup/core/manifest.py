"""The manifest format: JSON Lines records, zstd-compressed, cut into AES-256-GCM segments (docs/format.md §7).

A manifest is the storage-side record of what a run (or a prune) did to a
client's versions, so that the catalog can be rebuilt from storage alone.
This module only turns records into bytes and back; `bkup.server.manifests`
decides what the records are and where they go.

    manifest = magic "BKMAN001" | user_id u32 | segment*
    segment  = length u32 | nonce (12) | AES-256-GCM(ciphertext) | tag (16)

The segments' plaintexts, concatenated, are one zstd stream of UTF-8 JSON
lines: a header object first, then one object per record. Each segment is
bound to its place: AAD = ``bkup-manifest:<user_id>:<client_id>:<name>:<i>``
with ``:last`` appended on the final segment, so segments cannot be dropped,
reordered, truncated away or moved to another manifest.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bkup.errors import IntegrityError

MAGIC = b"BKMAN001"
FORMAT_VERSION = 1
# Plaintext (compressed) bytes per segment. The format allows up to 4 MiB (docs/format.md §7.1);
# segments of 4 MiB cost the server ~20 MB of short-lived copies per manifest, which its heap kept.
SEGMENT_SIZE = 2**20
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = len(MAGIC) + 4  # magic, user id
MAX_SEALED = 4 * 2**20 + NONCE_SIZE + TAG_SIZE  # the longest segment the format allows
_DECOMPRESS_PIECE = 256 * 1024
_U32 = struct.Struct(">I")
_encoder = msgspec.json.Encoder()


class ManifestError(IntegrityError):
    """A manifest that is damaged, truncated, or sealed for another user, client or name."""


def _aad(user_id: int, client_id: int, name: str, index: int, last: bool) -> bytes:
    return f"bkup-manifest:{user_id}:{client_id}:{name}:{index}{':last' if last else ''}".encode()


class ManifestEncoder:
    """Builds one manifest: `begin()`, `add(record)` for each record (header first), `finish()`.

    Every call returns the bytes to append to the object; at most about one
    segment is held in memory, and each segment is copied twice on its way
    out (into its ciphertext, then into the segment's bytes).
    """

    def __init__(self, key: bytes, user_id: int, client_id: int, name: str, *, segment_size: int = SEGMENT_SIZE) -> None:
        self._aead = AESGCM(key)
        self._ids = (user_id, client_id, name)
        self._segment_size = segment_size
        self._compressor = zstandard.ZstdCompressor(level=3).compressobj()
        self._pending = bytearray()
        self._index = 0
        self.records = 0

    def begin(self) -> bytes:
        return MAGIC + _U32.pack(self._ids[0])

    def add(self, record: Any) -> bytes:
        self.records += 1
        self._pending += self._compressor.compress(_encoder.encode(record) + b"\n")
        return self._seal_full(last=False)

    def finish(self) -> bytes:
        self._pending += self._compressor.flush()
        return self._seal_full(last=True)

    def _seal_full(self, *, last: bool) -> bytes:
        """Seal the pending segments that are full (with `last`: all of them, the final one last)."""
        out: list[bytes] = []
        while len(self._pending) > self._segment_size:
            out.append(self._seal(self._segment_size, last=False))
        if last:
            out.append(self._seal(len(self._pending), last=True))
        return b"".join(out)

    def _seal(self, n: int, *, last: bool) -> bytes:
        """The first `n` pending bytes as one segment, taken off the pending buffer."""
        nonce = os.urandom(NONCE_SIZE)
        with memoryview(self._pending)[:n] as plain:  # released before the buffer shrinks
            sealed = self._aead.encrypt(nonce, plain, _aad(*self._ids, self._index, last))
        del self._pending[:n]
        self._index += 1
        return b"".join((_U32.pack(NONCE_SIZE + len(sealed)), nonce, sealed))


def encode_manifest(key: bytes, user_id: int, client_id: int, name: str, records: list[Any]) -> bytes:
    """A whole manifest in memory (small manifests and tests)."""
    enc = ManifestEncoder(key, user_id, client_id, name)
    return enc.begin() + b"".join(enc.add(r) for r in records) + enc.finish()


def manifest_user(data: bytes) -> int:
    """The user id a manifest is sealed for, from its first HEADER_SIZE bytes (read before choosing the key)."""
    if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
        raise ManifestError("not a bkup manifest (bad magic)")
    return _U32.unpack_from(data, len(MAGIC))[0]


def decode_manifest(key: bytes, client_id: int, name: str, data: bytes) -> Iterator[dict[str, Any]]:
    """The records of a manifest held in memory (small manifests and tests); see `stream_manifest`."""
    view = memoryview(data)
    return stream_manifest(lambda _user_id: key, client_id, name, len(data), lambda start, n: view[start : start + n])


def stream_manifest(
    user_key: Callable[[int], bytes], client_id: int, name: str, size: int, read_at: Callable[[int, int], bytes | memoryview]
) -> Iterator[dict[str, Any]]:
    """The records of a manifest of `size` bytes, header first, read through `read_at(start, length)`.

    `user_key` gives the data key of the user the manifest names. One read
    per segment (with the next segment's length prefix), so at most one
    segment (≤ 4 MiB, the format's limit) and the records it holds are in
    memory, whatever the manifest's size. Raises ManifestError on any damage,
    possibly after some records; `read_at` and `user_key` raise what they raise.
    """
    where = f"manifest {client_id}/{name}"
    if size < HEADER_SIZE + 4:
        manifest_user(bytes(read_at(0, min(size, HEADER_SIZE))))  # bad magic, if that is what it is
        raise ManifestError(f"{where}: truncated before its first segment")
    head = bytes(read_at(0, HEADER_SIZE + 4))
    user_id = manifest_user(head)
    aead = AESGCM(user_key(user_id))
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    (length,) = _U32.unpack_from(head, HEADER_SIZE)
    pos = HEADER_SIZE + 4  # where the segment of `length` bytes starts
    index = 0
    buffer = b""
    while True:
        if length < NONCE_SIZE + TAG_SIZE or pos + length > size:
            raise ManifestError(f"{where}: segment {index} is truncated")
        if length > MAX_SEALED:
            raise ManifestError(f"{where}: segment {index} is longer than the format allows ({length} bytes)")
        end = pos + length
        last = end == size
        more = 0 if last else min(4, size - end)  # the next segment's length prefix
        block = memoryview(read_at(pos, length + more))
        try:
            plain = aead.decrypt(block[:NONCE_SIZE], block[NONCE_SIZE:length], _aad(user_id, client_id, name, index, last))
        except InvalidTag:
            raise ManifestError(f"{where}: segment {index} fails authentication (damaged, truncated, or another key)") from None
        index += 1
        for i in range(0, len(plain), _DECOMPRESS_PIECE):  # bounds the text of one piece, not of the segment
            try:
                buffer += decompressor.decompress(plain[i : i + _DECOMPRESS_PIECE])
            except zstandard.ZstdError as e:
                raise ManifestError(f"{where}: bad compressed data: {e}") from None
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield _decode_line(client_id, name, line)
        if last:
            break
        if more < 4:
            raise ManifestError(f"{where}: truncated after segment {index - 1}")
        (length,) = _U32.unpack_from(block, length)
        pos = end + 4
    if buffer:
        raise ManifestError(f"{where}: ends inside a record")


def _decode_line(client_id: int, name: str, line: bytes) -> dict[str, Any]:
    try:
        record = msgspec.json.decode(line)
    except msgspec.DecodeError as e:
        raise ManifestError(f"manifest {client_id}/{name}: bad record: {e}") from None
    if not isinstance(record, dict):
        raise ManifestError(f"manifest {client_id}/{name}: a record is not an object")
    return record

"""Packs in an object store: a streaming writer and a range-reading reader over `bkup.core.pack`.

The byte format is `bkup.core.pack`'s (docs/format.md); this module only
moves those bytes. A pack lives at `packs/<user_id>/<pack_id[:2]>/<pack_id>`
and becomes visible only when `PackWriter.finish` returns: the caller records
its chunks in the catalog after that, never before.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

from bkup.core.pack import HEADER, TRAILER_SIZE, PackBuilder, PackEntry, PackError, decode_index, open_blob, parse_trailer
from bkup.storage.objects import ObjectStore

__all__ = [
    "PackInfo",
    "PackReader",
    "PackWriter",
    "new_pack_id",
    "pack_key",
    "parse_pack_key",
]

PACKS_PREFIX = "packs"
# read_many merges blobs into one range request across gaps smaller than
# this (reading a little waste beats paying another S3 round trip)...
MERGE_GAP = 256 * 2**10
# ...up to this much per request, which bounds the reader's memory.
MAX_REQUEST = 16 * 2**20
# read_index fetches this much of the tail at once: for a pack of ~30 chunks
# (49 bytes per index entry) trailer and index come in one request.
TAIL_READ = 64 * 2**10

_PACK_ID = re.compile(r"[0-9a-f]{32}")
_PACK_KEY = re.compile(r"packs/(\d+)/([0-9a-f]{2})/([0-9a-f]{32})")


def new_pack_id() -> str:
    return secrets.token_hex(16)


def pack_key(user_id: int, pack_id: str) -> str:
    """The object key of a pack: `packs/<user_id>/<pack_id[:2]>/<pack_id>`."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
        raise ValueError(f"invalid user id {user_id!r}")
    if not isinstance(pack_id, str) or not _PACK_ID.fullmatch(pack_id):
        raise ValueError(f"invalid pack id {pack_id!r:.80} (32 lowercase hex characters)")
    return f"{PACKS_PREFIX}/{user_id}/{pack_id[:2]}/{pack_id}"


def parse_pack_key(key: str) -> tuple[int, str]:
    """(user_id, pack_id) of a key listed under `packs/`; ValueError if it is not a pack key."""
    m = _PACK_KEY.fullmatch(key)
    if not m or m.group(3)[:2] != m.group(2):
        raise ValueError(f"not a pack key: {key!r:.120}")
    return int(m.group(1)), m.group(3)


@dataclass(frozen=True, slots=True)
class PackInfo:
    """A pack that storage holds in full: what the catalog records."""

    pack_id: str
    user_id: int
    key: str  # object key
    size: int
    entries: tuple[PackEntry, ...]


class _Aborted(Exception):
    """Thrown into the store's write context to make it discard the object."""


class PackWriter:
    """Writes one pack, blob by blob, straight to storage; holds no more than one blob.

    The object is opened at the first `add` and published by `finish`; until
    then nobody can see it. `abort` (or leaving a `with` block without
    `finish`) leaves nothing behind. Not thread-safe: one writer per upload.
    """

    def __init__(self, store: ObjectStore, user_id: int, key: bytes, *, pack_id: str | None = None) -> None:
        self.pack_id = pack_id or new_pack_id()
        self.user_id = user_id
        self.object_key = pack_key(user_id, self.pack_id)
        self._store = store
        self._builder = PackBuilder(key, self.pack_id)
        self._context: AbstractContextManager[BinaryIO] | None = None
        self._file: BinaryIO | None = None
        self._state = "new"  # new → open → finished | aborted

    @property
    def entries(self) -> list[PackEntry]:
        return list(self._builder.entries)

    @property
    def size(self) -> int:
        """Bytes written so far (the pack's size once finished)."""
        return self._builder.size

    def __len__(self) -> int:
        return len(self._builder)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._builder

    def add(self, chunk_id: str, flags: int, raw_len: int, data: bytes) -> None:
        """Seal one chunk's stored bytes (a frame's data: zstd if flagged) and append them."""
        self._open()
        blob = self._builder.add(chunk_id, flags, raw_len, data)  # checks the input before any state change
        self._write(blob)

    def finish(self) -> PackInfo:
        """Write the index and trailer and publish the pack. An empty pack is allowed."""
        self._open()
        self._write(self._builder.finish())
        assert self._context is not None
        context, self._context, self._file = self._context, None, None
        self._state = "finished"
        try:
            context.__exit__(None, None, None)
        except BaseException:
            self._state = "aborted"  # the store discarded the object
            raise
        return PackInfo(self.pack_id, self.user_id, self.object_key, self.size, self._builder.entries)

    def abort(self) -> None:
        """Discard the pack; nothing is left in storage. Safe to call more than once."""
        if self._state == "finished":
            return
        self._state = "aborted"
        context, self._context, self._file = self._context, None, None
        if context is not None:
            exc = _Aborted(f"pack {self.pack_id} aborted")
            context.__exit__(_Aborted, exc, None)

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._state != "finished":
            self.abort()

    def _open(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise RuntimeError(f"pack {self.pack_id} is {self._state}")
        context = self._store.open_write(self.object_key)
        self._file = context.__enter__()
        self._context = context
        self._state = "open"
        self._write(self._builder.begin())

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except BaseException:
            self.abort()
            raise


class PackReader:
    """Reads blobs and indexes of packs with range requests; `key_for_user` gives data keys."""

    def __init__(self, store: ObjectStore, key_for_user: Callable[[int], bytes]) -> None:
        self._store = store
        self._key_for_user = key_for_user

    def read_stored(self, user_id: int, pack_id: str, entry: PackEntry) -> bytes:
        """The stored bytes of one chunk (still zstd if `entry.flags` says so), authenticated."""
        blob = self._store.get_range(pack_key(user_id, pack_id), entry.offset, entry.length)
        return _open(self._key_for_user(user_id), pack_id, entry, blob)

    def read_many(
        self, user_id: int, pack_id: str, entries: Iterable[PackEntry]
    ) -> Iterator[tuple[PackEntry, bytes]]:
        """(entry, stored bytes) for each entry, in the order given.

        Consecutive entries that lie in ascending order with gaps under
        MERGE_GAP are fetched with one range request of at most MAX_REQUEST
        bytes, so a caller that asks in pack order gets few requests. Holds at
        most one request's bytes.
        """
        key = pack_key(user_id, pack_id)
        data_key = self._key_for_user(user_id)
        for group in _coalesce(entries):
            start = group[0].offset
            end = max(e.offset + e.length for e in group)
            span = self._store.get_range(key, start, end - start)
            for entry in group:
                blob = span[entry.offset - start : entry.offset - start + entry.length]
                yield entry, _open(data_key, pack_id, entry, blob)

    def read_index(self, user_id: int, pack_id: str) -> list[PackEntry]:
        """The pack's entries from its own encrypted index (no catalog needed); raises PackError if damaged."""
        key = pack_key(user_id, pack_id)
        data_key = self._key_for_user(user_id)
        size = self._store.size(key)
        if size < len(HEADER) + TRAILER_SIZE:
            raise PackError(f"pack {pack_id}: {size} bytes is too short for a pack")
        tail_start = max(0, size - TAIL_READ)
        tail = self._store.get_range(key, tail_start, size - tail_start)
        if tail_start == 0 and not tail.startswith(HEADER):
            raise PackError(f"pack {pack_id}: does not start with {HEADER!r}")
        index_offset, index_length = parse_trailer(tail, pack_size=size)
        if index_offset >= tail_start:
            index = tail[index_offset - tail_start : index_offset - tail_start + index_length]
        else:
            index = self._store.get_range(key, index_offset, index_length)
        return decode_index(data_key, pack_id, index, index_offset=index_offset)


def _open(data_key: bytes, pack_id: str, entry: PackEntry, blob: bytes) -> bytes:
    try:
        return open_blob(data_key, entry, blob)
    except PackError as e:
        raise PackError(f"pack {pack_id}: {e}") from None


def _coalesce(entries: Iterable[PackEntry]) -> Iterator[Sequence[PackEntry]]:
    """Split entries (kept in order) into groups that one range request can serve."""
    group: list[PackEntry] = []
    start = end = 0
    for entry in entries:
        if group:
            new_end = max(end, entry.offset + entry.length)
            if entry.offset >= end and entry.offset - end < MERGE_GAP and new_end - start <= MAX_REQUEST:
                group.append(entry)
                end = new_end
                continue
            yield group
        group = [entry]
        start, end = entry.offset, entry.offset + entry.length
    if group:
        yield group

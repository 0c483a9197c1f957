"""Chunk upload: a frame stream verified, encrypted into one pack, stored, and only then recorded in the catalog."""

from __future__ import annotations

from collections.abc import Sequence

from bkup import protocol
from bkup.catalog import queries
from bkup.core.frames import Frame, decode_frame
from bkup.server.context import ServerContext
from bkup.storage.packs import PackWriter


class Ingest:
    """The server side of one `POST /chunks`.

    Write ordering is the whole consistency story: blobs go into a pack that
    is invisible until `finish` closes it; the catalog learns of its chunks
    only after storage has the whole pack. An aborted upload leaves nothing.
    """

    def __init__(self, ctx: ServerContext, user_id: int) -> None:
        self.ctx = ctx
        self.user_id = user_id
        self.writer: PackWriter | None = None
        self.seen: set[str] = set()
        self.received = 0
        self.duplicates = 0

    def add(self, frames: Sequence[Frame]) -> None:
        """Verify and store the frames the user does not hold yet (blocking: call from a worker thread)."""
        fresh = list(dict.fromkeys(f.id for f in frames if f.id not in self.seen))
        with self.ctx.catalog.session() as s:
            missing = set(queries.missing_chunks(s, self.user_id, fresh)) if fresh else set()
        for frame in frames:
            self.received += 1
            if frame.id in self.seen or frame.id not in missing:
                self.duplicates += 1
                continue
            decode_frame(frame)  # decompresses and checks BLAKE3 and length; raises ChunkMismatch
            if self.writer is None:
                self.writer = PackWriter(self.ctx.store, self.user_id, self.ctx.keys.user_key(self.user_id))
            self.writer.add(frame.id, frame.flags, frame.raw_len, frame.data)
            self.seen.add(frame.id)

    def finish(self) -> protocol.UploadResult:
        stored = 0
        size = 0
        if self.writer is not None and len(self.writer):
            info = self.writer.finish()
            self.writer = None
            with self.ctx.catalog.session() as s:
                queries.record_pack(s, self.user_id, info.pack_id, info.size, info.entries)
                s.commit()
            stored, size = len(info.entries), info.size
        return protocol.UploadResult(received=self.received, stored=stored, duplicates=self.duplicates, bytes_stored=size)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

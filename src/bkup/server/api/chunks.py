"""Chunks: which ids are missing, upload a frame stream, read a frame stream."""

from __future__ import annotations

import anyio
from litestar import Controller, Request, post
from litestar.response import Stream

from litestar.params import JSONBody

from bkup import protocol
from bkup.catalog import queries
from bkup.core.frames import Frame, FrameParser
from bkup.server import gc, reads
from bkup.server.api.deps import Caller, Ctx
from bkup.server.ingest import Ingest
from bkup.server.principal import require_agent

# Frames are handed to a worker thread in batches of about this size, so the
# event loop only parses while verification and encryption run off it.
HANDOFF_BYTES = 4 * 1024 * 1024


class ChunkController(Controller):
    path = "/chunks"

    @post("/missing", sync_to_thread=True, status_code=200)
    def missing(self, data: JSONBody[protocol.ChunkQuery], ctx: Ctx, principal: Caller) -> protocol.ChunkMissing:
        require_agent(principal)
        ids = reads.check_ids(data.ids)
        gc.touch(ctx, principal.user_id, chunk_ids=ids)  # re-announced chunks are safe from GC (server.gc)
        with ctx.catalog.session() as s:
            missing = queries.missing_chunks(s, principal.user_id, ids)
        ctx.metrics.observe_lookup(len(ids), len(missing))
        return protocol.ChunkMissing(missing=missing)

    @post("/", status_code=200, request_max_body_size=protocol.MAX_UPLOAD_BYTES + 1024 * 1024)
    async def upload(self, request: Request, ctx: Ctx, principal: Caller) -> protocol.UploadResult:
        require_agent(principal)
        ingest = Ingest(ctx, principal.user_id)
        parser = FrameParser()
        pending: list[Frame] = []
        pending_bytes = 0
        received = 0
        try:
            async for data in request.stream():
                received += len(data)
                for frame in parser.feed(data):
                    pending.append(frame)
                    pending_bytes += len(frame.data)
                if pending_bytes >= HANDOFF_BYTES:
                    await anyio.to_thread.run_sync(ingest.add, pending)
                    pending, pending_bytes = [], 0
            parser.close()  # raises TruncatedStream: nothing of a cut upload is recorded
            if pending:
                await anyio.to_thread.run_sync(ingest.add, pending)
            result = await anyio.to_thread.run_sync(ingest.finish)
            ctx.metrics.observe_upload(
                received_bytes=received, stored=result.stored, duplicates=result.duplicates, stored_bytes=result.bytes_stored
            )
            return result
        except BaseException:
            await anyio.to_thread.run_sync(ingest.abort)
            raise

    @post("/read", sync_to_thread=True, status_code=200, media_type=protocol.FRAME_MEDIA_TYPE)
    def read(self, data: JSONBody[protocol.ChunkRead], ctx: Ctx, principal: Caller) -> Stream:
        frames = reads.read_chunks(ctx, principal, data.client_id, data.ids)
        return Stream(frames, media_type=protocol.FRAME_MEDIA_TYPE)

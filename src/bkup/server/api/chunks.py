"""Chunks: which ids are missing, upload a frame stream, read a frame stream."""

from __future__ import annotations

import queue
import threading

import anyio
from litestar import Controller, Request, post
from litestar.response import Stream

from litestar.params import JSONBody

from bkup import protocol
from bkup.core.frames import Frame, FrameParser
from bkup.server import gc, reads
from bkup.server.api.deps import Caller, Ctx
from bkup.server.ingest import Ingest
from bkup.server.principal import require_agent

# Frames are handed to the upload's ingest thread in batches of about this
# size, so the event loop only reads and parses while verification,
# encryption and writes run off it; at most QUEUE_BATCHES batches wait.
HANDOFF_BYTES = 4 * 1024 * 1024
QUEUE_BATCHES = 2


class _IngestThread:
    """One thread per upload that runs `Ingest.add` on frame batches, in order, while the loop keeps reading.

    The first failure is kept and re-raised to the handler (at its next `put`
    or at `close`); later batches are then drained unprocessed so that `put`
    never blocks on a dead consumer. `stop` makes the thread exit without
    processing what is queued (the upload is being aborted).
    """

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.queue: queue.Queue[list[Frame] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bkup-ingest", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                batch = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if batch is None:
                return
            if self.error is None and not self.stopped.is_set():
                try:
                    self.ingest.add(batch)
                except BaseException as exc:  # re-raised in the handler
                    self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _put_blocking(self, item: list[Frame] | None) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    async def put(self, batch: list[Frame]) -> None:
        self._check()
        try:
            self.queue.put_nowait(batch)
        except queue.Full:
            await anyio.to_thread.run_sync(self._put_blocking, batch)

    async def close(self) -> None:
        """Every batch is handed over: wait until all are processed; raise what the thread failed with."""
        await anyio.to_thread.run_sync(self._put_blocking, None)
        await anyio.to_thread.run_sync(self.thread.join)
        self._check()

    def stop(self) -> None:
        """Blocking: make the thread exit after the batch in progress, and wait for it."""
        self.stopped.set()
        self.thread.join()


class ChunkController(Controller):
    path = "/chunks"

    @post("/missing", sync_to_thread=True, status_code=200)
    def missing(self, data: JSONBody[protocol.ChunkQuery], ctx: Ctx, principal: Caller) -> protocol.ChunkMissing:
        require_agent(principal)
        ids = reads.check_ids(data.ids)
        held = gc.touch(ctx, principal.user_id, chunk_ids=ids)  # re-announced chunks are safe from GC (server.gc)
        missing = [i for i in dict.fromkeys(ids) if i not in held]
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
        worker = _IngestThread(ingest)
        try:
            async for data in request.stream():
                received += len(data)
                for frame in parser.feed(data):
                    pending.append(frame)
                    pending_bytes += len(frame.data)
                if pending_bytes >= HANDOFF_BYTES:
                    await worker.put(pending)
                    pending, pending_bytes = [], 0
            parser.close()  # raises TruncatedStream: nothing of a cut upload is recorded
            if pending:
                await worker.put(pending)
            await worker.close()  # every frame verified and written (or its error raised here)
            result = await anyio.to_thread.run_sync(ingest.finish)
            ctx.metrics.observe_upload(
                received_bytes=received, stored=result.stored, duplicates=result.duplicates, stored_bytes=result.bytes_stored
            )
            return result
        except BaseException:
            with anyio.CancelScope(shield=True):  # also when the client went away: the pack must be discarded
                await anyio.to_thread.run_sync(worker.stop)
                await anyio.to_thread.run_sync(ingest.abort)
            raise

    @post("/read", sync_to_thread=True, status_code=200, media_type=protocol.FRAME_MEDIA_TYPE)
    def read(self, data: JSONBody[protocol.ChunkRead], ctx: Ctx, principal: Caller) -> Stream:
        frames = reads.read_chunks(ctx, principal, data.client_id, data.ids)
        return Stream(frames, media_type=protocol.FRAME_MEDIA_TYPE)

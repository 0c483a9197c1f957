"""The upload side of a backup run: which chunk ids this run sends, how many raw bytes wait, the upload threads.

UPLOADERS threads each take a whole group of new chunks read by the readers
(agent.backup): ask the server which it lacks, compress only those, upload
them as one frame stream, and hand the group's entries back as committable.
`buffer_bytes` bounds every raw chunk byte read and not yet uploaded, over
all threads (docs/performance.md).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bkup.agent.api import ApiClient
from bkup.agent.commits import Item
from bkup.core.frames import DEFAULT_LEVEL, HEADER_SIZE, encode_chunk

BUFFER_BYTES = 32 * 1024 * 1024  # all raw chunks read but not yet uploaded, over every thread
UPLOAD_BYTES = 32 * 1024 * 1024  # frame bytes in one upload request
UPLOADERS = 2  # threads that ask, compress and upload (each takes whole groups)


@dataclass(slots=True)
class Group:
    """New chunks and the entries read with them: uploaded together, then committable."""

    chunks: dict[str, bytes] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    size: int = 0


class Aborted(Exception):
    """Another pipeline thread failed; this one stops."""


class Uploader:
    """The run's chunk side: claims ids, bounds buffered bytes, and runs the upload threads.

    Each chunk id is claimed by exactly one group per run (`claim`); entries
    naming an id claimed elsewhere wait in the committer until that group is
    done. `reserve`/`release` keep every buffered raw byte (in readers' open
    groups, queued, or being uploaded) under `buffer_bytes`.
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        level: int = DEFAULT_LEVEL,
        buffer_bytes: int = BUFFER_BYTES,
        upload_bytes: int = UPLOAD_BYTES,
        threads: int = UPLOADERS,
    ) -> None:
        self.api = api
        self.level = level
        self.buffer_bytes = buffer_bytes
        self.group_bytes = max(1, buffer_bytes // 4)
        self.upload_bytes = upload_bytes
        self.claimed: set[str] = set()
        self.pending_bytes = 0
        self.max_pending_bytes = 0
        self.bytes_new = 0
        self.bytes_uploaded = 0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._groups: queue.Queue[Group | None] = queue.Queue(maxsize=threads)
        self.done: queue.Queue[tuple[list[str], list[Item]]] = queue.Queue()  # to the committing thread
        self.abort = threading.Event()
        self.failure: BaseException | None = None
        self._threads = [threading.Thread(target=self._work, name=f"bkup-upload-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def claim(self, cid: str) -> bool:
        """True if this caller is the first of the run to name `cid` (and so must upload or confirm it)."""
        with self._lock:
            if cid in self.claimed:
                return False
            self.claimed.add(cid)
            return True

    def forget(self, ids: list[str]) -> None:
        """The server lacks these after all (a commit was refused): claim and ask again next time."""
        with self._lock:
            self.claimed.difference_update(ids)

    def reserve(self, n: int, flush_own: Callable[[], None]) -> None:
        """Wait until `n` more raw bytes fit in the buffer; `flush_own` submits the caller's open group first."""
        with self._room:
            if self.pending_bytes and self.pending_bytes + n > self.buffer_bytes:
                self._room.release()
                try:
                    flush_own()  # never wait while holding an open group: that could deadlock the readers
                finally:
                    self._room.acquire()
                while self.pending_bytes and self.pending_bytes + n > self.buffer_bytes:
                    if self.abort.is_set():
                        raise Aborted()
                    self._room.wait(0.1)
            self.pending_bytes += n
            self.max_pending_bytes = max(self.max_pending_bytes, self.pending_bytes)

    def submit(self, group: Group) -> None:
        if not group.chunks:
            self.done.put(([], group.items))
            return
        put_or_abort(self._groups, group, self.abort)

    def close(self) -> None:
        """Let the upload threads finish the queued groups and stop; raise what one of them failed with."""
        for _ in self._threads:
            put_or_abort(self._groups, None, self.abort)
        for t in self._threads:
            while t.is_alive():
                t.join(0.1)
                if self.abort.is_set():
                    break
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """Stop after the requests in flight (the run failed or is over)."""
        self.abort.set()
        for t in self._threads:
            t.join()

    def _work(self) -> None:
        try:
            while not self.abort.is_set():
                try:
                    group = self._groups.get(timeout=0.1)
                except queue.Empty:
                    continue
                if group is None:
                    return
                self._upload(group)
                group = None  # its chunks are released: don't hold them while waiting for the next group
        except BaseException as exc:  # handed to the committing thread, which raises it
            with self._lock:
                if self.failure is None:
                    self.failure = exc
            self.abort.set()

    def _upload(self, group: Group) -> None:
        ids = list(group.chunks)
        missing = set(self.api.missing(ids))
        for cid in ids:
            if cid not in missing:
                del group.chunks[cid]  # present on the server: not needed any more
        batch: list = []
        batch_bytes = new = sent = 0
        for cid in ids:
            if cid not in missing:
                continue
            raw = group.chunks.pop(cid)  # the frame replaces it: free the raw bytes now, not after the upload
            frame = encode_chunk(raw, level=self.level, chunk_id=cid)
            new += len(raw)
            del raw
            size = HEADER_SIZE + len(frame.data)
            if batch and batch_bytes + size > self.upload_bytes:
                self.api.upload(batch)
                sent += batch_bytes
                batch, batch_bytes = [], 0
            batch.append(frame)
            batch_bytes += size
        if batch:
            self.api.upload(batch)
            sent += batch_bytes
        with self._room:
            self.bytes_new += new
            self.bytes_uploaded += sent
            self.pending_bytes -= group.size
            self._room.notify_all()
        self.done.put((ids, group.items))


def put_or_abort(q: queue.Queue, item: object, abort: threading.Event) -> None:
    while True:
        if abort.is_set():
            raise Aborted()
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue

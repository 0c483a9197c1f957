"""The upload side of a backup run: which chunk ids this run sends, how many chunk bytes wait, the upload threads.

UPLOADERS threads each take a whole group of new chunks read by the readers
(agent.backup): ask the server which it lacks, compress only those while
they are being sent as one frame stream, and hand the group's entries back
as committable. `buffer_bytes` bounds every chunk byte held, over all
threads: a chunk's raw bytes from its read until its frame is made, then
the frame's until its upload is answered (docs/performance.md).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bkup.agent.api import ApiClient
from bkup.agent.commits import Item
from bkup.core.frames import DEFAULT_LEVEL, HEADER_SIZE, Frame, FrameBatch, encode_chunks

BUFFER_BYTES = 40 * 1024 * 1024  # chunk bytes held (raw, or framed) until uploaded, over every thread
UPLOAD_BYTES = 32 * 1024 * 1024  # frame bytes in one upload request
UPLOADERS = 2  # threads that ask, compress and upload (each takes whole groups)
RELEASE_BYTES = 1024 * 1024  # an uploader gives buffer room back in steps of this much


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
    done. `reserve` and the uploaders' releases keep every buffered byte (raw
    in readers' open groups or queued, raw or framed while being uploaded)
    under `buffer_bytes`.
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

    def _release(self, n: int) -> None:
        """`n` buffered bytes are gone: make room for the readers."""
        if n:
            with self._room:
                self.pending_bytes -= n
                self._room.notify_all()

    def _compress(self, group: Group, ids: list[str]) -> Iterator[Frame]:
        """Frame these chunks of the group as the upload pulls them, small ones a batch at a time.

        Raw chunks are dropped as soon as their frames exist (`encode_chunks`);
        the buffer then holds each frame's bytes instead, until its upload is
        answered.
        """
        freed = new = 0
        for frame in encode_chunks(((cid, group.chunks.pop(cid)) for cid in ids), level=self.level):
            freed += frame.raw_len - _held(frame)
            new += frame.raw_len
            if freed >= RELEASE_BYTES:
                self._release(freed)
                freed = 0
            yield frame
        self._release(freed)
        with self._lock:
            self.bytes_new += new

    def _upload(self, group: Group) -> None:
        """Ask which chunks the server lacks, then compress them while they are being sent.

        The server verifies and stores the first frames while the next are
        compressed. A frame's room in the buffer is its own size, no longer
        its chunk's raw size until the upload is answered, so the readers wait
        less on data that compresses (docs/performance.md).
        """
        ids = list(group.chunks)
        missing = set(self.api.missing(ids))
        present = [cid for cid in ids if cid not in missing]
        self._release(sum(len(group.chunks.pop(cid)) for cid in present))  # the server has them
        todo = [cid for cid in ids if cid in missing]
        frames = self._compress(group, todo)
        carry = None
        while todo:
            batch = FrameBatch(frames, self.upload_bytes, carry)
            self.api.upload(batch)
            with self._lock:
                self.bytes_uploaded += batch.nbytes
            self._release(sum(_held(f) for f in batch.made))
            if batch.exhausted:
                break
            carry = batch.carry
        self.done.put((ids, group.items))


def _held(frame: Frame) -> int:
    """What a frame keeps of its chunk's room in the buffer: its size, or the raw size if that is less."""
    return min(frame.raw_len, HEADER_SIZE + len(frame.data))


def put_or_abort(q: queue.Queue, item: object, abort: threading.Event) -> None:
    while True:
        if abort.is_set():
            raise Aborted()
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue

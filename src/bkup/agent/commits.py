"""Committing a run's entries: in batches, once their chunks are confirmed, off the walking thread.

Each batch is sent by one commit thread while the walking thread goes on
walking and handing out work (a commit of 2,000 entries costs the server
tens of milliseconds; waiting for each one stalled the whole pipeline). At
most `IN_FLIGHT` batches are sent and not yet answered. Answers are applied
in the walking thread, in order (`poll`, `wait`): only then does the state
cache learn of the batch's entries, so the cache still follows the server,
never leads it.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from bkup import protocol
from bkup.agent.api import ApiClient, MissingChunksError
from bkup.agent.scanner import ScanEntry
from bkup.agent.state import CachedEntry, StateCache

log = logging.getLogger("bkup.agent")

BATCH_ENTRIES = protocol.MAX_ENTRIES_PER_BATCH  # entries in one commit request...
COMMIT_JSON_BYTES = 16 * 1024 * 1024  # ...or about this many bytes of its body
IN_FLIGHT = 2  # commit batches sent and not yet answered


@dataclass(slots=True)
class Item:
    """One entry to commit, what the state cache will remember of it, and the scan it came from."""

    entry: protocol.Entry
    cached: CachedEntry
    scan: ScanEntry


def _json_size(entry: protocol.Entry) -> int:
    return 256 + len(entry.path) + 67 * len(entry.chunks or ())


class Committer:
    """Sends entries in batches once all their chunks are confirmed; updates the state cache after each commit.

    Used from the walking thread only (the commit thread just sends). A
    failed commit is raised from the next `add`, `commit`, `poll` or `wait`.
    """

    def __init__(self, api: ApiClient, run_id: int, cache: StateCache, *, batch_size: int | None = None) -> None:
        self.api = api
        self.run_id = run_id
        self.cache = cache
        self.batch_size = batch_size or BATCH_ENTRIES
        self.confirmed: set[str] = set()  # ids uploaded or reported present during this run
        self.waiting: list[Item] = []  # name chunks another group has not confirmed yet
        self.ready: list[Item] = []
        self.refused: list[Item] = []  # the server lacked chunks: to read again
        self.refused_ids: list[str] = []
        self.changed_files = 0
        self._sent: deque[tuple[Future[protocol.CommitResult], list[Item]]] = deque()
        self._sender: ThreadPoolExecutor | None = None

    def add(self, item: Item) -> None:
        chunks = item.entry.chunks
        if chunks and not self.confirmed.issuperset(chunks):
            self.waiting.append(item)
            return
        self.ready.append(item)
        if len(self.ready) >= self.batch_size:
            self.commit()

    def group_done(self, ids: list[str], items: list[Item]) -> None:
        if ids:
            self.confirmed.update(ids)
            if self.waiting:
                waiting, self.waiting = self.waiting, []
                for item in waiting:
                    self.add(item)
        for item in items:
            self.add(item)

    def commit(self) -> None:
        """Send every ready entry (answers are applied by `poll` and `wait`)."""
        items, self.ready = self.ready, []
        batch: list[Item] = []
        size = 0
        for item in items:
            n = _json_size(item.entry)
            if batch and (len(batch) >= self.batch_size or size + n > COMMIT_JSON_BYTES):
                self._send(batch)
                batch, size = [], 0
            batch.append(item)
            size += n
        if batch:
            self._send(batch)
        self.poll()

    def flush(self) -> None:
        """Commit every ready entry and wait until the server has answered every batch."""
        self.commit()
        self.wait()

    def poll(self) -> None:
        """Apply the answers that have arrived, oldest first, without waiting."""
        while self._sent and self._sent[0][0].done():
            self._settle(*self._sent.popleft())

    def wait(self) -> None:
        """Apply every answer, waiting for those still in flight."""
        while self._sent:
            self._settle(*self._sent.popleft())

    def close(self) -> None:
        """Stop the commit thread after the request in flight (answers not applied are dropped)."""
        if self._sender is not None:
            self._sender.shutdown(wait=True, cancel_futures=True)
            self._sender = None
        self._sent.clear()

    def _send(self, batch: list[Item]) -> None:
        while len(self._sent) >= IN_FLIGHT:
            self._settle(*self._sent.popleft())
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bkup-commit")
        future = self._sender.submit(self.api.commit, self.run_id, [i.entry for i in batch])
        self._sent.append((future, batch))

    def _settle(self, future: Future[protocol.CommitResult], batch: list[Item]) -> None:
        try:
            future.result()
        except MissingChunksError as exc:
            # The whole batch was refused: set aside the entries naming a missing chunk, commit the rest.
            missing = set(exc.missing)
            log.warning("server lacks %d chunk(s) it reported present; re-reading the affected files", len(missing))
            self.refused_ids.extend(missing)
            self.confirmed.difference_update(missing)
            keep = []
            for item in batch:
                (self.refused if missing.intersection(item.entry.chunks or ()) else keep).append(item)
            if len(keep) == len(batch):
                raise  # the server named chunks none of these entries use: nothing sensible to retry
            if keep:
                self._send(keep)
            return
        # files_* stats count regular files only (not dirs, not symlinks).
        self.changed_files += sum(1 for i in batch if i.entry.kind == "file")
        self.cache.put_many((i.entry.path, i.cached) for i in batch)

"""Shipping the agent's warnings and errors to the server's log for its client, through a bounded local queue.

`ShipHandler` is a logging handler: every record at WARNING or above (and
every record of the `bkup.agent.report` logger, such as a pre-backup
command's output) goes into `LogQueue`, a small SQLite file in the state dir
(`logs.db`), so nothing is lost while the server is down or the agent
restarts. The queue holds at most `MAX_QUEUED` entries; past that the oldest
are dropped and counted, and the next batch starts with a note saying how
many. `LogShipper` sends the queue in batches (`POST /agent/logs`) from a
thread, with backoff while the server cannot be reached. Its own complaints
(logger `bkup.agent.logship`) stay local, or they would feed themselves, and
so do the setup page's (`bkup.agent.setup`), which show the setup code.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bkup import protocol
from bkup.agent.api import ApiClient
from bkup.agent.signals import Backoff
from bkup.errors import BkupError
from bkup.logsetup import SecretFilter

log = logging.getLogger("bkup.agent.logship")

QUEUE_FILE = "logs.db"
MAX_QUEUED = 10_000
BATCH = 500
FLUSH_S = 2.0  # how long a warning may wait for companions before it is sent
REPORT_LOGGER = "bkup.agent.report"  # info lines meant for the server's log too
LOCAL_LOGGERS = ("bkup.agent.logship", "bkup.agent.setup")  # never shipped: they would feed themselves, or show the setup code

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, level TEXT, message TEXT, run_seq INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LogQueue:
    """A bounded FIFO of log entries in SQLite; the oldest are dropped (and counted) when it is full. Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, max_entries: int = MAX_QUEUED) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, entry: protocol.LogEntry) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO queue (ts, level, message, run_seq) VALUES (?, ?, ?, ?)",
                    (entry.ts, entry.level, entry.message, entry.run_seq),
                )
                excess = self._count() - self.max_entries
                if excess > 0:
                    self._db.execute("DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT ?)", (excess,))
                    self._db.execute(
                        "INSERT INTO meta VALUES ('dropped', ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                        (excess,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _count(self) -> int:
        return self._db.execute("SELECT count(*) FROM queue").fetchone()[0]

    def __len__(self) -> int:
        with self._lock:
            return self._count()

    @property
    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
            return row[0] if row else 0

    def peek(self, limit: int = BATCH) -> tuple[int, int, list[protocol.LogEntry]]:
        """(last id, dropped count, entries): the oldest `limit` entries, after a note on the dropped ones."""
        dropped = self.dropped
        with self._lock:
            rows = self._db.execute("SELECT id, ts, level, message, run_seq FROM queue ORDER BY id LIMIT ?", (limit,)).fetchall()
        entries = [protocol.LogEntry(ts=ts, level=level, message=msg, run_seq=seq) for _, ts, level, msg, seq in rows]
        if dropped:
            note = f"{dropped} log line(s) dropped: the agent's local queue (at most {self.max_entries}) was full while the server could not be reached"
            entries.insert(0, protocol.LogEntry(ts=entries[0].ts if entries else _now(), level="warning", message=note))
        return (rows[-1][0] if rows else 0), dropped, entries

    def remove(self, up_to_id: int, dropped: int) -> None:
        """Forget what a successful `peek` returned."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM queue WHERE id <= ?", (up_to_id,))
            if dropped:
                self._db.execute("UPDATE meta SET value = max(0, value - ?) WHERE key = 'dropped'", (dropped,))
            self._db.execute("COMMIT")


class ShipHandler(logging.Handler):
    """Queues records for the server: WARNING and above, and the report logger's lines."""

    def __init__(self, queue: LogQueue, *, run_seq: Callable[[], int | None] = lambda: None, on_put: Callable[[], None] | None = None) -> None:
        super().__init__(logging.INFO)
        self.queue = queue
        self.run_seq = run_seq
        self.on_put = on_put
        self.addFilter(SecretFilter())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(LOCAL_LOGGERS):
            return False
        if record.levelno < logging.WARNING and record.name != REPORT_LOGGER:
            return False
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else "info"
            message = record.getMessage()
            if record.exc_text:
                message += "\n" + record.exc_text
            ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self.queue.put(protocol.LogEntry(ts=ts, level=level, message=message, run_seq=self.run_seq()))
            if self.on_put is not None and record.levelno >= logging.WARNING:
                self.on_put()
        except Exception:  # noqa: BLE001 - logging must never take the agent down
            self.handleError(record)


class LogShipper:
    """Sends the queue to the server in batches from a thread, retrying with backoff."""

    def __init__(
        self,
        queue: LogQueue,
        server: str,
        token: str,
        stop: threading.Event,
        *,
        retry_max_delay: float = 60.0,
        flush_s: float = FLUSH_S,
        transport: object = None,
    ) -> None:
        self.queue = queue
        self.stop = stop
        self.flush_s = flush_s
        self.backoff = Backoff(cap=retry_max_delay)
        self._api = ApiClient(server, token, transport=transport, timeout=20.0, retries=0)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bkup-logship", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Something new is queued: send soon (unless the server is failing: the backoff decides then)."""
        if self.backoff.failures == 0:
            self._wake.set()

    def server_back(self) -> None:
        """The server answers again: send what waited, now."""
        self.backoff.reset()
        self._wake.set()

    def send_once(self) -> bool:
        """Send everything queued; False if the server did not take it."""
        while True:
            last, dropped, entries = self.queue.peek()
            if not entries:
                return True
            try:
                self._api.send_logs(entries)
            except BkupError as exc:
                if self.backoff.failures == 0:
                    log.info("cannot ship %d log line(s) yet: %s", len(self.queue), exc)
                return False
            self.queue.remove(last, dropped)

    def close(self, timeout: float = 3.0) -> None:
        """Stop the thread, after one last attempt to send what is queued (bounded by `timeout`)."""
        self.stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._api.close()

    def _loop(self) -> None:
        while True:
            stopping = self.stop.is_set()
            if self.send_once():
                self.backoff.reset()
                delay = None
            else:
                delay = self.backoff.next_delay()
            if stopping:
                return
            self._wake.wait(delay)
            self._wake.clear()
            if delay is None:
                self.stop.wait(self.flush_s)  # let a burst of warnings gather into one request

"""Periodic server jobs that run once across replicas: a PostgreSQL advisory lock per job elects its runner.

Vocabulary:

- a **job** is a named function of the server context, run every `interval`
  seconds (`run_periodic(ctx, "gc", 21600, gc.collect)`);
- its **leader** is the one replica holding the job's advisory lock
  (`pg_try_advisory_lock` on a connection kept open for that purpose). The
  lock lives as long as that connection: a replica that dies or loses its
  database connection releases it, and another replica takes the job over at
  its next tick (so within one interval). On SQLite one server process is
  assumed, and it runs every job.

Jobs should still be safe to run twice (a leader that lost its connection
mid-job may overlap briefly with the next one); GC and the sweeps are.
Each job runs in its own daemon thread so a long GC does not delay the
missed-schedule check.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

if TYPE_CHECKING:
    from bkup.catalog.db import Catalog
    from bkup.server.context import ServerContext

log = logging.getLogger("bkup.server.leader")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for job `name`."""
    digest = hashlib.blake2b(f"bkup-job:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Leadership:
    """Which jobs this replica leads. Thread-safe; one dedicated database connection holds every lock."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._conn: Connection | None = None
        self._held: set[str] = set()
        self._lock = threading.Lock()

    @property
    def single_process(self) -> bool:
        return self.catalog.kind != "postgresql"

    def holds(self, name: str) -> bool:
        """True if this replica leads job `name` (trying to become its leader if nobody is)."""
        if self.single_process:
            return True
        with self._lock:
            try:
                conn = self._connection()
                # Proves the session (and so every lock it holds) is still alive.
                conn.execute(text("SELECT 1"))
                if name not in self._held:
                    if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}).scalar():
                        self._held.add(name)
                        log.info("this replica now runs job %s", name)
                return name in self._held
            except Exception as e:
                if self._held:
                    log.warning("lost the leader connection (%s): jobs %s go to another replica", e, sorted(self._held))
                self._drop()
                return False

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # Never back into the pool: a pooled connection would carry our locks to other work.
            conn.detach()
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def release(self) -> None:
        """Give up every lock (on shutdown), so another replica takes over at once."""
        with self._lock:
            if self._conn is not None and self._held:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
                except Exception:
                    pass
            self._drop()


@dataclass
class Job:
    name: str
    interval: float
    fn: Callable[[ServerContext], object]
    first_delay: float
    thread: threading.Thread | None = field(default=None, repr=False)


class Scheduler:
    """The periodic jobs of one server process; `start` with the app, `stop` with it."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.leadership = Leadership(ctx.catalog)
        self.jobs: dict[str, Job] = {}
        self._stop = threading.Event()
        self._started = False
        self._lock = threading.Lock()

    def add(self, name: str, interval: float, fn: Callable[[ServerContext], object], *, first_delay: float | None = None) -> None:
        if interval <= 0:
            log.info("job %s is off (interval %s)", name, interval)
            return
        with self._lock:
            if name in self.jobs:
                raise ValueError(f"job {name!r} is already scheduled")
            job = Job(name, float(interval), fn, float(interval if first_delay is None else first_delay))
            self.jobs[name] = job
            if self._started:
                self._launch(job)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stop.clear()
            for job in self.jobs.values():
                self._launch(job)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._started = False
            self._stop.set()
            threads = [j.thread for j in self.jobs.values() if j.thread is not None]
            for j in self.jobs.values():
                j.thread = None
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.leadership.release()

    def _launch(self, job: Job) -> None:
        job.thread = threading.Thread(target=self._loop, args=(job,), name=f"bkup-job-{job.name}", daemon=True)
        job.thread.start()

    def _loop(self, job: Job) -> None:
        due = time.monotonic() + job.first_delay
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += job.interval
            self.run_once(job.name)
            due = max(due, time.monotonic())  # a job that overran starts its next interval now

    def run_once(self, name: str) -> bool:
        """Run job `name` now if this replica leads it; True if it ran and succeeded."""
        job = self.jobs[name]
        metrics = self.ctx.metrics
        leads = self.leadership.holds(name)
        metrics.leader.labels(metrics.replica, name).set(1 if leads else 0)
        if not leads:
            return False
        start = time.monotonic()
        try:
            job.fn(self.ctx)
        except Exception:
            log.exception("job %s failed", name)
            metrics.observe_job(name, False, time.monotonic() - start)
            return False
        metrics.observe_job(name, True, time.monotonic() - start)
        return True


def run_periodic(
    ctx: ServerContext, name: str, interval: float, fn: Callable[[ServerContext], object], *, first_delay: float | None = None
) -> None:
    """Run `fn(ctx)` every `interval` seconds on exactly one replica (first after `first_delay`, default one interval).

    Call it from `server.jobs.start` (the app's startup); `interval <= 0` leaves the job off.
    """
    ctx.scheduler.add(name, interval, fn, first_delay=first_delay)

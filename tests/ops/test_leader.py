"""Periodic jobs run on one replica: PostgreSQL advisory locks elect a leader per job; SQLite runs them all."""

from __future__ import annotations

import base64
import os
import threading
import time

import pytest
from sqlalchemy import text

from bkup.catalog.db import Catalog
from bkup.server.context import open_context
from bkup.server.leader import Leadership, lock_key, run_periodic
from bkup.settings import Settings
from bkup.storage.objects import MemoryStore


def _ctx(tmp_path, url: str, name: str):
    settings = Settings(data_dir=str(tmp_path / name), config_dir=str(tmp_path / name),
                        master_key=base64.b64encode(os.urandom(32)).decode(), database_url=url)
    return open_context(settings, catalog=Catalog(url), store=MemoryStore(name))


def test_lock_keys_are_stable_signed_64_bit():
    assert lock_key("gc") == lock_key("gc") != lock_key("missed_schedules")
    assert -(2**63) <= lock_key("gc") < 2**63


def test_one_replica_leads_each_job_and_another_takes_over(pg_url):
    a, b = Leadership(Catalog(pg_url)), Leadership(Catalog(pg_url))
    a.catalog.upgrade()
    try:
        assert a.holds("gc") and a.holds("gc")  # re-entrant for its holder
        assert not b.holds("gc")
        assert b.holds("missed_schedules") and not a.holds("missed_schedules")  # per job
        a.release()  # shutdown (or a lost connection) frees the lock
        assert b.holds("gc")
        assert not a.holds("gc")
    finally:
        a.release()
        b.release()
        a.catalog.dispose()
        b.catalog.dispose()


def test_a_lost_leader_connection_hands_the_job_over(pg_url):
    a, b = Leadership(Catalog(pg_url)), Leadership(Catalog(pg_url))
    try:
        assert a.holds("gc") and not b.holds("gc")
        pid = a._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with b.catalog.engine.connect() as conn:  # the database connection dies under the leader
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            # Termination is asynchronous: wait until the backend (and its locks) are gone.
            # pg_stat_activity is a snapshot taken once per transaction, so each poll ends
            # its transaction; otherwise a backend seen once is seen until the deadline.
            deadline = time.monotonic() + 10
            while True:
                alive = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar()
                conn.rollback()
                if not alive:
                    break
                assert time.monotonic() < deadline, "the terminated backend did not go away"
                time.sleep(0.05)
        assert b.holds("gc")
        assert not a.holds("gc")  # it notices, reconnects, and does not run the job
    finally:
        a.release()
        b.release()


def test_the_job_runs_on_the_leader_only(tmp_path, pg_url):
    one, two = _ctx(tmp_path, pg_url, "one"), _ctx(tmp_path, pg_url, "two")
    ran: list[str] = []
    try:
        for name, ctx in (("one", one), ("two", two)):
            run_periodic(ctx, "job", 3600, lambda c, name=name: ran.append(name))
        assert one.scheduler.run_once("job") and not two.scheduler.run_once("job")
        assert one.scheduler.run_once("job")
        assert ran == ["one", "one"]
        one.scheduler.stop()  # releases the lock: the other replica takes over
        assert two.scheduler.run_once("job")
        assert ran == ["one", "one", "two"]
    finally:
        one.close()
        two.close()


def test_sqlite_runs_every_job_in_its_one_process(tmp_path):
    ctx = _ctx(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", "solo")
    done = threading.Event()
    failures: list[int] = []
    try:
        run_periodic(ctx, "tick", 0.05, lambda c: done.set(), first_delay=0)
        run_periodic(ctx, "broken", 0.05, lambda c: failures.append(1) or 1 / 0, first_delay=0)
        run_periodic(ctx, "off", 0, lambda c: pytest.fail("an interval of 0 is off"))
        ctx.scheduler.start()
        assert done.wait(5)
        deadline = time.monotonic() + 5
        while len(failures) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(failures) >= 2  # a failing job keeps its schedule
        m = ctx.metrics
        assert m.job_runs.labels(m.replica, "broken", "error")._value.get() >= 1
        assert m.job_last_success.labels(m.replica, "tick")._value.get() > 0
        assert "off" not in ctx.scheduler.jobs
    finally:
        ctx.close()
    assert all(j.thread is None for j in ctx.scheduler.jobs.values())

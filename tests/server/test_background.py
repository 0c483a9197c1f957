"""What a run's end sets off (manifest, prune) runs after `finish` answers, in order, and survives a normal stop."""

from __future__ import annotations

import threading

import pytest
from litestar.testing import TestClient
from retention_kit import fast_passwords, make_agent, make_ctx, make_settings  # noqa: F401

from bkup.catalog import queries
from bkup.catalog.db import Catalog
from bkup.core.retention import Policy
from bkup.server import policies
from bkup.server.accounts import admin_principal
from bkup.server.app import create_app
from bkup.server.background import SerialWorker

pytestmark = pytest.mark.usefixtures("fast_passwords")


def versions_of(catalog: Catalog, client_id: int, path: str) -> int:
    with catalog.session() as s:
        return len(queries.history(s, client_id, path))


def test_tasks_run_in_order_and_a_failing_one_does_not_stop_the_next(caplog):
    worker = SerialWorker("test-worker")
    done: list[int] = []

    def fail() -> None:
        raise RuntimeError("boom")

    for i in range(50):
        worker.submit(f"task {i}", (lambda i=i: done.append(i)) if i != 7 else fail)
    worker.wait()
    assert done == [i for i in range(50) if i != 7]
    assert "task 7 failed" in caplog.text and "boom" in caplog.text
    worker.close()
    worker.submit("after close", lambda: done.append(99))  # a closed worker runs it at once, in the caller
    assert done[-1] == 99


def test_close_finishes_what_is_queued():
    worker = SerialWorker("test-worker")
    gate = threading.Event()
    done: list[int] = []
    worker.submit("blocked", gate.wait)
    for i in range(3):
        worker.submit(f"task {i}", lambda i=i: done.append(i))
    assert done == []  # the worker is held at the first task
    gate.set()
    worker.close(wait=10)
    assert done == [0, 1, 2]


def test_finish_answers_before_the_manifest_and_prune_and_a_stop_still_writes_them(tmp_path):
    settings = make_settings(tmp_path)
    ctx = make_ctx(settings)
    gate = threading.Event()
    with TestClient(app=create_app(settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        me = admin_principal(ctx, "alice")
        policies.set_user_policy(ctx, me, me.user_id, Policy(keep_versions=1))
        alice.backup({"/f": b"one"})
        ctx.after_run.submit("held", gate.wait)  # the background thread is busy with something else
        run = alice.backup({"/f": b"two"}, finish=False)
        r = http.post(f"/api/v1/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)
        assert r.status_code == 200 and r.json()["status"] == "ok"  # answered while the background thread is held
        key = f"manifests/{alice.client_id}/{run['seq']}"
        assert not ctx.store.exists(key)
        assert versions_of(ctx.catalog, alice.client_id, "/f") == 2  # not pruned yet
    gate.set()
    ctx.close()  # a normal stop: what is queued is done first
    assert ctx.store.exists(key)
    catalog = Catalog(settings.effective_database_url)  # the stopped server's catalog
    assert versions_of(catalog, alice.client_id, "/f") == 1  # the run's prune ran
    catalog.dispose()

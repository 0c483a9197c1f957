"""Run manifests and catalog rebuild: drop the database, rebuild from storage, get the same listings and restores."""

from __future__ import annotations

import filecmp
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient
from retention_kit import all_listings, fast_passwords, make_agent, make_ctx, make_settings, open_test_store, rand  # noqa: F401
from sqlalchemy import text, update

from bkup.agent.api import ApiClient
from bkup.agent.restore import list_entries, restore_tree
from bkup.catalog.db import Catalog
from bkup.catalog.models import Client, Run, User, metadata
from bkup.core.retention import Policy
from bkup.errors import Conflict
from bkup.server import gc, manifests, policies
from bkup.server.accounts import admin_principal
from bkup.server.app import create_app
from bkup.server.check import check
from bkup.server.context import open_context
from bkup.server.rebuild import rebuild

pytestmark = pytest.mark.usefixtures("fast_passwords")
MiB = 2**20


class _Borrowed(httpx.BaseTransport):
    """The test client's in-process transport, lent to the agent's ApiClient (which closes what it is given)."""

    def __init__(self, http: TestClient) -> None:
        self._inner = http._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)


def api_for(http: TestClient, token: str) -> ApiClient:
    return ApiClient("http://testserver.local", token, transport=_Borrowed(http))


def restore_and_list(http, token, client_id, target: Path) -> tuple[list, object]:
    with api_for(http, token) as api:
        listing = [(e.path, e.kind, e.size, e.valid_from) for e in list_entries(api, client_id, "/home").entries]
        result = restore_tree(api, client_id, target)
    assert not result.errors
    return listing, result


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def drop_everything(url: str) -> None:
    cat = Catalog(url)
    with cat.engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE alembic_version"))
    cat.dispose()


@pytest.mark.parametrize("db, store", [("sqlite", "memory"), ("postgresql", "s3")])
def test_drop_the_database_and_rebuild_from_storage(request, tmp_path, db, store):
    settings = make_settings(tmp_path, gc_grace=0)
    url = f"sqlite:///{tmp_path}/first.db" if db == "sqlite" else request.getfixturevalue("pg_url")
    objects = open_test_store(store, request)
    ctx = make_ctx(settings, url, objects)
    with TestClient(app=create_app(settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice", admin=True)
        laptop = make_agent(ctx, http, "alice", "alice-laptop", create_user=False)
        bob = make_agent(ctx, http, "bob")
        base = {"/home/a.txt": b"first", "/home/big.bin": rand(3 * MiB, 1), "/home/empty": b"", "/home/sub/x": rand(5000, 2)}
        alice.backup(base)
        alice.backup({**base, "/home/a.txt": b"second"}, deleted=["/home/big.bin"])
        me = admin_principal(ctx, "alice")
        policies.set_user_policy(ctx, me, me.user_id, Policy(keep_versions=2))
        policies.set_client_policy(ctx, me, laptop.client_id, {"keep_days": 30})
        alice.backup({"/home/a.txt": b"third", "/home/sub/x": rand(5000, 3)}, status="partial")  # prunes /home/a.txt v1
        alice.backup({"/home/a.txt": b"fourth"}, status="failed")
        laptop.backup({"/home/doc": rand(100_000, 4)})
        bob.backup({"/home/bob.txt": b"bob"})
        abandoned = bob.backup({"/home/bob.txt": b"bob, later"}, finish=False)  # its agent goes silent
        assert manifests.sweep_runs(ctx, now=datetime.now(UTC) + timedelta(hours=2)).abandoned == 1
        gc.collect(ctx)
        before = {c: all_listings(ctx, c) for c in (alice.client_id, laptop.client_id, bob.client_id)}
        assert [seq for seq in before[alice.client_id]] == [1, 2, 3, 4]
        assert abandoned["seq"] == 2 and before[bob.client_id][2]  # the abandoned run's versions count
        listed, restored = restore_and_list(http, alice.token, alice.client_id, tmp_path / "before")
    ctx.close()

    if db == "sqlite":
        url = f"sqlite:///{tmp_path}/second.db"
    else:
        drop_everything(url)
    ctx2 = open_context(settings, catalog=Catalog(url), store=objects)
    report = rebuild(ctx2)
    assert report.warnings == []
    assert sorted((n, a) for n, _, a in report.users) == [("alice", False), ("bob", False)]
    assert report.clients == 3 and report.runs == 7 and report.removed >= 1
    after = {c: all_listings(ctx2, c) for c in before}
    assert after == before
    with ctx2.catalog.session() as s:  # policies come back from the manifests' headers
        assert s.get(User, me.user_id).policy == {"keep_versions": 2}
        assert s.get(Client, laptop.client_id).policy == {"keep_days": 30}
    with pytest.raises(Conflict, match="not empty"):
        rebuild(ctx2)

    password = dict((n, p) for n, p, _ in report.users)["alice"]
    with TestClient(app=create_app(settings, context=ctx2)) as http:
        token = http.post("/api/v1/auth/login", json={"user": "alice", "password": password}).json()["token"]
        listed2, restored2 = restore_and_list(http, token, alice.client_id, tmp_path / "after")
        # A new client gets an id past the rebuilt ones (PostgreSQL's sequences were moved).
        r = http.post("/api/v1/clients", json={"name": "new-pc"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201 and r.json()["id"] > bob.client_id
    assert listed2 == listed and (restored2.files, restored2.bytes) == (restored.files, restored.bytes)
    assert same_tree(tmp_path / "before", tmp_path / "after")
    assert check(ctx2, read_data=True).ok
    ctx2.close()


def test_the_sweep_writes_missing_manifests(tmp_path):
    settings = make_settings(tmp_path)
    ctx = make_ctx(settings)
    with TestClient(app=create_app(settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        run = alice.backup({"/f": b"x"})
    key = f"manifests/{alice.client_id}/{run['seq']}"
    assert ctx.store.exists(key)
    ctx.store.delete(key)  # as if the server died before writing it
    with ctx.catalog.session() as s:
        s.execute(update(Run).values(manifest_at=None))
        s.commit()
    report = manifests.sweep_runs(ctx, now=datetime.now(UTC) + timedelta(minutes=5))
    assert (report.written, report.failed) == (1, 0) and ctx.store.exists(key)
    header, *records = manifests.read_manifest(ctx, alice.client_id, str(run["seq"]))
    assert header["type"] == "run" and header["client"]["name"] == "alice-pc" and header["run"]["status"] == "ok"
    assert [(r["op"], r["path"], r["chunks"] is not None) for r in records] == [("open", "/f", True)]
    assert manifests.sweep_runs(ctx, now=datetime.now(UTC) + timedelta(minutes=5)).written == 0
    ctx.close()


def test_server_start_fails_silent_runs_and_writes_their_manifest(tmp_path):
    settings = make_settings(tmp_path)
    ctx = make_ctx(settings)
    with TestClient(app=create_app(settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        run = alice.backup({"/f": b"x"}, finish=False)
    with ctx.catalog.session() as s:  # the run went silent two hours ago, its agent 30 minutes ago
        s.execute(update(Run).values(last_activity=datetime.now(UTC) - timedelta(hours=2)))
        s.execute(update(Client).values(last_seen=datetime.now(UTC) - timedelta(minutes=30)))
        s.commit()
    assert manifests.sweep_runs(ctx).abandoned == 0  # a heartbeat within the hour: still working (one huge file?)
    with ctx.catalog.session() as s:
        s.execute(update(Client).values(last_seen=datetime.now(UTC) - timedelta(minutes=90)))
        s.commit()
    with TestClient(app=create_app(settings, context=ctx)):  # a server start
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not ctx.store.exists(f"manifests/{alice.client_id}/{run['seq']}") and datetime.now(UTC) < deadline:
            time.sleep(0.05)
    with ctx.catalog.session() as s:
        found = s.get(Run, run["id"])
        assert found.status == "failed" and "abandoned" in found.error and found.manifest_at is not None
    ctx.close()

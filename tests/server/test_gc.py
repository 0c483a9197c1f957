"""Garbage collection: frees what no version references, repacks, deletes packs only when safe, and never races a backup."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient
from retention_kit import chunks_of, fast_passwords, make_agent, make_ctx, make_settings, open_test_store, rand, store_bytes  # noqa: F401 - fast_passwords is a fixture
from sqlalchemy import select, text, update

from bkup.catalog import garbage, queries
from bkup.catalog.db import Catalog
from bkup.catalog.models import Chunk, Content, Pack
from bkup.core.hashing import chunk_id
from bkup.core.retention import Policy
from bkup.errors import Forbidden
from bkup.server import gc, policies, repack
from bkup.server.accounts import admin_principal
from bkup.server.app import create_app

MiB = 2**20

pytestmark = pytest.mark.usefixtures("fast_passwords")
BOTH_DATABASES = pytest.mark.parametrize("ctx", ["sqlite", "postgresql"], indirect=True)


def _ctx(request, tmp_path, db: str, store: str = "memory", **settings):
    url = None if db == "sqlite" else request.getfixturevalue("pg_url")
    return make_ctx(make_settings(tmp_path, **settings), url, open_test_store(store, request))


@pytest.fixture
def ctx(request, tmp_path):
    context = _ctx(request, tmp_path, getattr(request, "param", "sqlite"), gc_grace=0)
    yield context
    context.close()


@pytest.fixture
def http(ctx):
    with TestClient(app=create_app(ctx.settings, context=ctx)) as client:
        yield client


def chunk_ids(ctx) -> set[str]:
    with ctx.catalog.session() as s:
        return set(s.scalars(select(Chunk.id)))


def packs(ctx) -> dict[str, str]:
    with ctx.catalog.session() as s:
        return {p.id: p.state for p in s.scalars(select(Pack))}


@pytest.mark.parametrize("db, store", [("sqlite", "file"), ("postgresql", "memory")])
def test_deleting_a_100_mib_tree_frees_at_least_95_mib(request, tmp_path, db, store):
    ctx = _ctx(request, tmp_path, db, store, gc_grace=0)
    with TestClient(app=create_app(ctx.settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        tree = {f"/data/f{i:02d}": rand(4 * MiB, i) for i in range(25)}
        alice.backup({**tree, "/keep.txt": b"keep me" * 100})
        before = store_bytes(ctx.store)
        assert before >= 100 * MiB
        me = admin_principal(ctx, "alice")
        policies.set_user_policy(ctx, me, me.user_id, Policy(keep_deleted_days=0))
        alice.backup({"/keep.txt": b"keep me" * 100}, deleted=list(tree))  # the run's own prune removes the tree
        report = gc.collect(ctx)
        after = store_bytes(ctx.store)
        assert before - after >= 95 * MiB, (before, after, report)
        assert report.errors == []
        # What is left still restores.
        (keep,) = [e for e in http.get(f"/api/v1/clients/{alice.client_id}/files", headers=alice.auth).json()["entries"]
                   if e["path"] == "/keep.txt"]
        with ctx.catalog.session() as s:
            ids = queries.list_under(s, client_id=alice.client_id, user_id=me.user_id, path="/keep.txt", run_seq=2,
                                     after=None, limit=10, with_chunks=True)[0][1]
        assert b"".join(alice.read(ids).values()) == b"keep me" * 100 and keep["size"] == 700
    ctx.close()


def test_grace_period_protects_uploads_not_yet_committed(request, tmp_path):
    ctx = _ctx(request, tmp_path, "sqlite", gc_grace=3600)
    with TestClient(app=create_app(ctx.settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        orphan = rand(5000, 1)
        alice.upload([orphan])  # uploaded, never committed: garbage, but maybe a backup is about to commit it
        now = datetime.now(UTC)
        assert gc.collect(ctx, now=now).chunks_deleted == 0
        assert gc.collect(ctx, now=now + timedelta(minutes=59)).chunks_deleted == 0
        # Asking for it again (the agent re-announces it) restarts the clock.
        http.post("/api/v1/chunks/missing", json={"ids": [chunk_id(orphan)]}, headers=alice.agent)
        assert gc.collect(ctx, now=datetime.now(UTC) + timedelta(minutes=59)).chunks_deleted == 0
        report = gc.collect(ctx, now=datetime.now(UTC) + timedelta(hours=2))
        assert report.chunks_deleted == 1 and report.packs_retired == 1 and report.packs_deleted == 0
        assert report.packs_deleted == 0  # the pack waits for readers in flight
        later = gc.collect(ctx, now=datetime.now(UTC) + timedelta(hours=4))
        assert later.packs_deleted == 1 and store_bytes(ctx.store) == 0
    ctx.close()


@BOTH_DATABASES
def test_a_running_run_protects_what_it_uploaded(ctx, http):
    alice = make_agent(ctx, http, "alice")
    run = alice.backup({"/f": rand(3000, 2)}, finish=False)  # committed... by a run still running
    alice.upload([rand(3000, 3)])  # and a chunk it uploaded but has not committed yet
    assert gc.collect(ctx).chunks_deleted == 0
    assert gc.collect(ctx, now=datetime.now(UTC) + timedelta(hours=30)).chunks_deleted == 1  # protection ends after 24 h
    http.post(f"/api/v1/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)


@BOTH_DATABASES
def test_commit_after_gc_deleted_a_chunk_gets_409_and_recovers(ctx, http):
    alice = make_agent(ctx, http, "alice")
    data = rand(4000, 4)
    alice.upload([data])
    assert gc.collect(ctx).chunks_deleted == 1  # grace 0, no run running: gone
    run = http.post("/api/v1/runs", json={"trigger": "manual"}, headers=alice.agent).json()
    entry = {"path": "/f", "kind": "file", "size": len(data), "chunks": [chunk_id(data)]}
    r = http.post(f"/api/v1/runs/{run['id']}/versions", json={"entries": [entry]}, headers=alice.agent)
    assert r.status_code == 409 and r.json()["extra"]["missing"] == [chunk_id(data)]
    alice.upload([data])
    assert http.post(f"/api/v1/runs/{run['id']}/versions", json={"entries": [entry]}, headers=alice.agent).status_code == 200


def test_touch_wins_over_an_old_last_seen(ctx, http):
    alice = make_agent(ctx, http, "alice")
    data = rand(100, 5)
    alice.upload([data])
    with ctx.catalog.session() as s:
        s.execute(update(Chunk).values(last_seen=datetime.now(UTC) - timedelta(days=3)))
        s.commit()
    ctx2 = ctx  # the same database: a second replica would look the same
    gc.touch(ctx2, admin_principal(ctx, "alice").user_id, chunk_ids=[chunk_id(data)])
    with ctx.catalog.session() as s:
        assert s.scalars(select(Chunk.last_seen)).one() > datetime.now(UTC) - timedelta(minutes=1)


def test_a_commit_touches_what_it_names_and_a_bad_batch_touches_nothing(ctx, http):
    alice = make_agent(ctx, http, "alice")
    data = rand(100, 8)
    alice.upload([data])
    old = datetime.now(UTC) - timedelta(days=3)

    def age_all() -> None:
        with ctx.catalog.session() as s:
            s.execute(update(Chunk).values(last_seen=old))
            s.execute(update(Content).values(last_seen=old))
            s.commit()

    def fresh(model) -> list[bool]:
        with ctx.catalog.session() as s:
            return [t > old + timedelta(days=1) for t in s.scalars(select(model.last_seen))]

    run = http.post("/api/v1/runs", json={"trigger": "once"}, headers=alice.agent).json()
    good = {"path": "/f", "kind": "file", "size": len(data), "chunks": [chunk_id(data)]}
    assert http.post(f"/api/v1/runs/{run['id']}/versions", json={"entries": [good]}, headers=alice.agent).status_code == 200
    age_all()
    bad = {"path": "/g", "kind": "file", "size": 1, "chunks": ["not-an-id"]}
    r = http.post(f"/api/v1/runs/{run['id']}/versions", json={"entries": [good, bad]}, headers=alice.agent)
    assert r.status_code == 400 and "not a chunk id" in r.json()["detail"]
    assert fresh(Chunk) == [False] and fresh(Content) == [False]  # refused before anything was touched
    good2 = dict(good, mtime_ns=5)
    assert http.post(f"/api/v1/runs/{run['id']}/versions", json={"entries": [good2]}, headers=alice.agent).status_code == 200
    assert fresh(Chunk) == [True] and fresh(Content) == [True]


def test_unused_contents_go_too(ctx, http):
    alice = make_agent(ctx, http, "alice")
    me = admin_principal(ctx, "alice")
    policies.set_user_policy(ctx, me, me.user_id, Policy(keep_versions=1))
    alice.backup({"/f": b"one"})
    alice.backup({"/f": b"two"})
    report = gc.collect(ctx)
    assert report.contents_deleted == 1 and report.chunks_deleted == 1
    assert chunk_ids(ctx) == {chunk_id(b"two")}


def test_repack_moves_live_chunks_and_deletes_the_old_pack_later(request, tmp_path):
    ctx = _ctx(request, tmp_path, "sqlite", gc_grace=600)
    with TestClient(app=create_app(ctx.settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        me = admin_principal(ctx, "alice")
        keep, drop = rand(3 * MiB, 6), rand(3 * MiB, 7)  # one pack, half of which dies
        alice.backup({"/keep": keep, "/drop": drop})
        policies.set_user_policy(ctx, me, me.user_id, Policy(keep_versions=0))
        alice.backup({"/keep": keep}, deleted=["/drop"])
        (old,) = packs(ctx)
        later = datetime.now(UTC) + timedelta(hours=1)
        report = gc.collect(ctx, now=later)
        assert report.chunks_deleted >= 1 and report.packs_rewritten == 1 and report.packs_written == 1
        states = packs(ctx)
        assert states.pop(old) == "retired" and list(states.values()) == ["live"]
        ids = [chunk_id(c) for c in chunks_of(keep)]
        with ctx.catalog.session() as s:
            assert {s.get(Chunk, (me.user_id, c)).pack_id for c in ids} != {old}
        got = alice.read(ids)
        assert b"".join(got[c] for c in ids) == keep  # served from the new pack
        assert gc.collect(ctx, now=later + timedelta(minutes=5)).packs_deleted == 0  # readers in flight: wait
        assert gc.collect(ctx, now=later + timedelta(minutes=11)).packs_deleted == 1
        assert old not in packs(ctx) and store_bytes(ctx.store) < 3.2 * MiB
    ctx.close()


@BOTH_DATABASES
def test_small_packs_are_merged(ctx, http):
    alice = make_agent(ctx, http, "alice")
    files = {f"/small{i}": rand(10_000, 100 + i) for i in range(4)}
    for path, data in files.items():
        alice.backup({path: data})  # one small pack each
    assert len(packs(ctx)) == 4
    report = gc.collect(ctx)
    assert report.packs_rewritten == 4 and report.packs_written == 1 and report.packs_deleted == 4
    assert list(packs(ctx).values()) == ["live"]
    assert all(alice.read([chunk_id(d)])[chunk_id(d)] == d for d in files.values())
    assert gc.collect(ctx).packs_rewritten == 0  # one small pack alone stays as it is


def test_select_packs():
    U = garbage.PackUsage
    full = repack.needed_bytes(10, 50 * MiB)
    retire, rewrite = repack.select_packs(
        [U("dead", 100, 0, 0), U("full", full, 10, 50 * MiB), U("holey", 60 * MiB, 10, 40 * MiB),
         U("fine", 60 * MiB, 10, 55 * MiB)], 20)
    assert retire == ["dead"] and [u.id for u in rewrite] == ["holey"]
    small = repack.needed_bytes(1, 1000)
    assert repack.select_packs([U("s1", small, 1, 1000)], 20) == ([], [])
    assert [u.id for u in repack.select_packs([U("s1", small, 1, 1000), U("s2", small, 1, 1000)], 20)[1]] == ["s1", "s2"]


def test_a_retired_pack_that_is_pointed_into_is_never_deleted(ctx, http):
    alice = make_agent(ctx, http, "alice")
    alice.backup({"/f": b"data"})
    (pack_id,) = packs(ctx)
    with ctx.catalog.session() as s:  # simulate a bug or a race: retired while referenced
        s.execute(update(Pack).values(state="retired", delete_after=datetime.now(UTC) - timedelta(days=1)))
        s.commit()
    report = gc.collect(ctx)
    assert report.packs_deleted == 0 and "kept" in report.errors[0]
    assert packs(ctx) == {pack_id: "live"} and alice.read([chunk_id(b"data")])


def test_gc_needs_an_admin(ctx, http):
    make_agent(ctx, http, "alice")
    me = admin_principal(ctx, "alice")
    with pytest.raises(Forbidden):
        gc.collect(ctx, me.__class__(user_id=me.user_id, user_name="alice", is_admin=False))


def test_postgresql_gc_skips_rows_a_backup_holds(request, tmp_path):
    """GC's DELETE never waits for a backup's transaction: rows it holds are skipped (FOR UPDATE SKIP LOCKED)."""
    ctx = _ctx(request, tmp_path, "postgresql", gc_grace=0)
    with TestClient(app=create_app(ctx.settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        a, b = rand(100, 8), rand(100, 9)
        alice.upload([a, b])
        uid = admin_principal(ctx, "alice").user_id
        holder = ctx.catalog.session()
        holder.execute(update(Chunk).where(Chunk.id == chunk_id(a)).values(flags=Chunk.flags))  # row lock, open txn
        done = threading.Event()
        result = {}

        def collect():
            with ctx.catalog.session() as s:
                s.execute(text("SET lock_timeout = '5s'"))
                result["deleted"] = garbage.delete_chunks(s, uid, [chunk_id(a), chunk_id(b)], datetime.now(UTC) + timedelta(seconds=1))
                s.commit()
            done.set()

        t = threading.Thread(target=collect)
        t.start()
        assert done.wait(3), "GC waited for the backup's lock"
        t.join()
        holder.rollback()
        holder.close()
        assert [d.id for d in result["deleted"]] == [chunk_id(b)]
        assert chunk_ids(ctx) == {chunk_id(a)}
    ctx.close()


def test_upgrade_from_0001_keeps_rows_and_sets_last_seen(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path}/old.db")
    cat.upgrade("0001")
    with cat.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, password_hash, is_admin, created_at) VALUES (1, 'u', 'x', 0, '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO packs (id, user_id, size, n_chunks, created_at) VALUES ('" + "a" * 32 + "', 1, 100, 1, '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO chunks (user_id, id, pack_id, \"offset\", length, raw_len, flags, created_at) "
                          "VALUES (1, '" + "b" * 64 + "', '" + "a" * 32 + "', 8, 40, 12, 0, '2026-01-01 00:00:00')"))
    cat.upgrade()
    with cat.session() as s:
        chunk = s.scalars(select(Chunk)).one()
        assert chunk.last_seen == chunk.created_at == datetime(2026, 1, 1, tzinfo=UTC)
        assert s.scalars(select(Pack.state)).one() == "live"
    cat.dispose()

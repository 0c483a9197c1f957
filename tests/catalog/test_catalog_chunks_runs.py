"""Chunks, packs and runs: missing_chunks, record_pack, chunk_locations, seq allocation, resolve_run."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta

import pytest
from catalog_kit import FakeEntry, World, fake_chunk_id
from sqlalchemy import select

from bkup.catalog import queries
from bkup.catalog.db import Catalog
from bkup.catalog.models import Chunk, Log, Pack, Run
from bkup.errors import NotFound, UsageError


def test_missing_chunks_keeps_order_drops_duplicates_and_scopes_by_user(catalog: Catalog, world: World) -> None:
    alice, bob = world.user(), world.user()
    a, b = world.chunks(alice, ["a", "b"])
    x, y, z = (fake_chunk_id(s) for s in "xyz")
    with catalog.session() as s:
        assert queries.missing_chunks(s, alice, [z, a, x, z, b, y, x]) == [z, x, y]
        assert queries.missing_chunks(s, alice, []) == []
        # Bob never learns what Alice holds.
        assert queries.missing_chunks(s, bob, [a, b]) == [a, b]


def test_touch_answers_what_it_found_and_writes_only_stale_rows(catalog: Catalog, world: World) -> None:
    """garbage.touch: the raw length of every chunk held (the callers' existence check), scoped by user;
    rows seen within `refresh` are left alone, older ones get `last_seen = now`."""
    from bkup.catalog import garbage

    alice, bob = world.user(), world.user()
    fresh, old = world.chunks(alice, ["fresh"], raw_len=7) + world.chunks(alice, ["old"], raw_len=9)
    bobs = world.chunks(bob, ["bob"])[0]
    long_ago = datetime.now(UTC) - timedelta(days=3)
    with catalog.session() as s:
        s.execute(Chunk.__table__.update().where(Chunk.id == old).values(last_seen=long_ago))
        seen_fresh = s.scalars(select(Chunk.last_seen).where(Chunk.id == fresh)).one()
        s.commit()
    now = datetime.now(UTC)
    absent = fake_chunk_id("absent")
    ids = [absent, old, fresh, old, bobs] + [fake_chunk_id(f"n{i}") for i in range(600)]  # beyond one IN list
    with catalog.session() as s:
        held = garbage.touch(s, alice, chunk_ids=ids, now=now, refresh=timedelta(minutes=5))
        s.commit()
    assert held == {fresh: 7, old: 9}
    with catalog.session() as s:
        times = dict(s.execute(select(Chunk.id, Chunk.last_seen).where(Chunk.user_id == alice)).all())
    assert times == {fresh: seen_fresh, old: now}


def test_touch_does_not_answer_for_a_stale_chunk_gc_deleted_before_the_touch_wrote(catalog: Catalog, world: World) -> None:
    """GC may delete a stale chunk between the touch's lookup and its UPDATE (on SQLite nothing is
    locked in between): the touch then does not name it, so the caller sees it missing."""
    from sqlalchemy import event

    from bkup.catalog import garbage
    from bkup.catalog.models import id_to_db

    alice = world.user()
    doomed, kept = world.chunks(alice, ["doomed", "kept"])
    with catalog.session() as s:
        s.execute(Chunk.__table__.update().values(last_seen=datetime.now(UTC) - timedelta(days=3)))
        s.commit()

    struck = []

    def gc_strikes(conn, cursor, statement, parameters, context, executemany):
        if not struck and statement.lstrip().upper().startswith("UPDATE CHUNKS"):
            struck.append(statement)
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            cursor.execute(f"DELETE FROM chunks WHERE id = {mark}", (id_to_db(doomed),))

    event.listen(catalog.engine, "before_cursor_execute", gc_strikes)
    try:
        with catalog.session() as s:
            held = garbage.touch(s, alice, chunk_ids=[doomed, kept], now=datetime.now(UTC), refresh=timedelta(minutes=5))
            s.commit()
    finally:
        event.remove(catalog.engine, "before_cursor_execute", gc_strikes)
    assert struck, "the touch never wrote"
    assert held == {kept: 100}


def test_record_pack_is_idempotent_and_first_pack_wins(catalog: Catalog, world: World) -> None:
    user = world.user()
    ids = [fake_chunk_id(str(i)) for i in range(3)]
    entries = [FakeEntry(cid, offset=i * 10, length=10, raw_len=20, flags=1) for i, cid in enumerate(ids)]
    with catalog.session() as s:
        assert queries.record_pack(s, user, "p1", 30, entries) == 3
        s.commit()
        assert queries.record_pack(s, user, "p1", 30, entries) == 0  # same pack again
        s.commit()
        extra = FakeEntry(fake_chunk_id("new"), offset=99, length=5, raw_len=5)
        assert queries.record_pack(s, user, "p2", 40, [FakeEntry(ids[0], 0, 10, 20, 1), extra, extra]) == 1
        s.commit()
        assert queries.record_pack(s, user, "p3", 0, []) == 0
        s.commit()
        assert s.scalar(select(Pack.n_chunks).where(Pack.id == "p2")) == 2
        locs = queries.chunk_locations(s, user, [ids[0], extra.id, fake_chunk_id("absent")])
    assert locs[ids[0]] == queries.ChunkLocation(ids[0], "p1", 0, 10, 20, 1)
    assert locs[extra.id].pack_id == "p2" and locs[extra.id].offset == 99
    assert fake_chunk_id("absent") not in locs


def test_record_pack_counts_only_new_rows_over_many_statements(catalog: Catalog, world: World) -> None:
    # More rows than one INSERT takes on SQLite (queries.SQLITE_ROWS_PER_INSERT), some already held,
    # some twice in the pack: each held or repeated row is skipped, and only the new ones counted.
    user = world.user()
    held = world.chunks(user, [f"held{i}" for i in range(0, 1200, 3)], raw_len=5)
    ids = [fake_chunk_id(f"held{i}") if i % 3 == 0 else fake_chunk_id(f"new{i}") for i in range(1200)]
    assert set(held) <= set(ids)
    entries = [FakeEntry(cid, offset=i, length=1, raw_len=9) for i, cid in enumerate(ids + ids[1:50])]
    with catalog.session() as s:
        assert queries.record_pack(s, user, "big", 1249, entries) == 800
        s.commit()
        locs = queries.chunk_locations(s, user, ids)
    assert len(locs) == 1200
    assert {loc.pack_id for cid, loc in locs.items() if cid not in held} == {"big"}
    assert locs[ids[1199]].offset == 1199 and locs[ids[0]].raw_len == 5


def test_chunk_locations_beyond_one_in_list(catalog: Catalog, world: World) -> None:
    user = world.user()
    ids = world.chunks(user, [f"c{i}" for i in range(1300)], raw_len=7)
    with catalog.session() as s:
        locs = queries.chunk_locations(s, user, ids + ids[:10])
        assert queries.missing_chunks(s, user, ids) == []
    assert len(locs) == 1300 and locs[ids[1299]].offset == 1299 * 7


def test_concurrent_uploads_of_the_same_chunks_both_succeed(catalog: Catalog, world: World) -> None:
    user = world.user()
    ids = [fake_chunk_id(f"shared{i}") for i in range(200)]
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def upload(order: list[str]) -> None:
        try:
            entries = [FakeEntry(cid, offset=i, length=1, raw_len=1) for i, cid in enumerate(order)]
            with catalog.session() as s:
                barrier.wait()
                results.append(queries.record_pack(s, user, secrets.token_hex(16), len(order), entries))
                s.commit()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(order,)) for order in (ids, ids[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(results) == 200
    with catalog.session() as s:
        assert len(s.scalars(select(Chunk.id).where(Chunk.user_id == user)).all()) == 200


def test_run_seqs_count_per_client(catalog: Catalog, world: World) -> None:
    user = world.user()
    c1, c2 = world.client(user), world.client(user)
    assert [world.start(c1) for _ in range(3)] == [1, 2, 3]
    assert world.start(c2) == 1
    with catalog.session() as s:
        run = s.scalars(select(Run).where(Run.client_id == c1, Run.seq == 3)).one()
        assert run.status == "running" and run.trigger == "manual" and run.files_seen == 0
        assert run.started_at.tzinfo is not None
        with pytest.raises(NotFound):
            queries.start_run(s, 999_999, "manual", datetime.now(UTC))


def test_concurrent_run_starts_get_distinct_seqs(catalog: Catalog, world: World) -> None:
    client = world.client(world.user())
    seqs: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def starter() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                seqs.append(world.start(client))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=starter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(seqs) == list(range(1, 21))


def test_resolve_run(catalog: Catalog, world: World) -> None:
    client = world.client(world.user())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with catalog.session() as s:
        assert queries.resolve_run(s, client) is None
        for i in range(3):
            queries.start_run(s, client, "schedule", t0 + timedelta(days=i))
        s.commit()
        assert queries.resolve_run(s, client) == 3
        assert queries.resolve_run(s, client, run=2) == 2
        with pytest.raises(NotFound, match="client has no run 7"):
            queries.resolve_run(s, client, run=7)
        assert queries.resolve_run(s, client, at=t0) == 1
        assert queries.resolve_run(s, client, at=t0 + timedelta(days=1, hours=5)) == 2
        assert queries.resolve_run(s, client, at=t0 + timedelta(days=30)) == 3
        assert queries.resolve_run(s, client, at=datetime(2026, 1, 2, 0, 30)) == 2  # naive: UTC
        with pytest.raises(NotFound, match="no backup at or before"):
            queries.resolve_run(s, client, at=t0 - timedelta(seconds=1))
        with pytest.raises(UsageError):
            queries.resolve_run(s, client, run=1, at=t0)


def test_add_log(catalog: Catalog, world: World) -> None:
    client = world.client(world.user())
    with catalog.session() as s:
        run = queries.start_run(s, client, "manual", datetime.now(UTC))
        queries.add_log(s, client, "info", "pg_dump: ok", run_id=run.id)
        queries.add_log(s, client, "error", "disk full", ts=datetime(2026, 2, 3, tzinfo=UTC))
        s.commit()
    with catalog.session() as s:
        logs = s.scalars(select(Log).where(Log.client_id == client).order_by(Log.ts)).all()
    assert [(l.level, l.message, l.run_id is not None) for l in logs] == [  # noqa: E741
        ("error", "disk full", False),
        ("info", "pg_dump: ok", True),
    ]
    assert all(l.ts.tzinfo is not None for l in logs)  # noqa: E741

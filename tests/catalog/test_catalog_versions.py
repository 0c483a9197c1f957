"""Versions: committing and closing (the SCD rules), as-of reads, paging in byte order, history, speed, plans."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from catalog_kit import World, fake_chunk_id
from sqlalchemy import event, func, select

from bkup import protocol
from bkup.catalog import commits, history, queries
from bkup.catalog.db import Catalog
from bkup.catalog.models import Content, Version
from bkup.core import hashing
from bkup.errors import Conflict, UsageError


@pytest.fixture
def setup(catalog: Catalog, world: World):
    user = world.user()
    client = world.client(user)
    return user, client


def _all_versions(catalog: Catalog, client: int) -> list[tuple]:
    with catalog.session() as s:
        rows = s.scalars(select(Version).where(Version.client_id == client).order_by(Version.path, Version.valid_from))
        return [(v.path, v.valid_from, v.valid_to, v.size) for v in rows]


def _tree(catalog: Catalog, client: int, user: int, seq: int) -> dict[str, int]:
    with catalog.session() as s:
        rows = queries.list_under(s, client_id=client, user_id=user, path="/", run_seq=seq, after=None, limit=10_000, with_chunks=False)
    return {v.path: v.size for v, _ in rows}


def test_new_unchanged_changed(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    a, b = world.chunks(user, ["a", "b"])
    r1 = world.start(client)
    batch = [world.dir("/d"), world.file("/d/f", [a], 100), world.file("/d/e", [], 0), world.link("/d/l", "f")]
    assert world.commit(client, user, r1, batch) == (4, 0)
    r2 = world.start(client)
    assert world.commit(client, user, r2, batch) == (0, 4)
    changed = [world.file("/d/f", [a, b], 200, mtime_ns=2), world.link("/d/l", "e")]
    assert world.commit(client, user, r2 + 0, changed) == (2, 0)
    assert _all_versions(catalog, client) == [
        ("/d", 1, None, 0),
        ("/d/e", 1, None, 0),
        ("/d/f", 1, 2, 100),
        ("/d/f", 2, None, 200),
        ("/d/l", 1, 2, 1),
        ("/d/l", 2, None, 1),
    ]
    with catalog.session() as s:
        v = queries.get_version(s, client, "/d/f", r2)
        assert v.content_id == hashing.content_id([a, b]) and v.parent == "/d" and v.name == "f"
        empty = queries.get_version(s, client, "/d/e", r2)
        assert empty.content_id == hashing.EMPTY_CONTENT_ID
        content = s.get(Content, (user, v.content_id))
        assert content.n_chunks == 2 and content.size == 200 and queries.split_chunk_ids(content.chunk_ids) == [a, b]


def test_only_metadata_changes_open_a_version_too(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    (a,) = world.chunks(user, ["a"])
    r1 = world.start(client)
    world.commit(client, user, r1, [world.file("/f", [a], 100)])
    r2 = world.start(client)
    changed = protocol.Entry(path="/f", kind="file", size=100, mtime_ns=1, mode=0o600, chunks=[a])
    assert world.commit(client, user, r2, [changed]) == (1, 0)
    assert [(p, f, t) for p, f, t, _ in _all_versions(catalog, client)] == [("/f", 1, 2), ("/f", 2, None)]


def test_same_run_replaces_instead_of_zero_length_periods(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    a, b = world.chunks(user, ["a", "b"])
    r1 = world.start(client)
    world.commit(client, user, r1, [world.file("/f", [a], 100)])
    r2 = world.start(client)
    world.commit(client, user, r2, [world.file("/f", [b], 100, mtime_ns=2)])
    assert world.commit(client, user, r2, [world.file("/f", [a, b], 200, mtime_ns=3)]) == (1, 0)
    assert _all_versions(catalog, client) == [("/f", 1, 2, 100), ("/f", 2, None, 200)]
    # A path the run created and then deleted leaves no trace at all.
    world.commit(client, user, r2, [world.file("/tmp1", [a], 100)])
    assert world.close(client, r2, ["/tmp1"]) == 1
    assert [p for p, *_ in _all_versions(catalog, client)] == ["/f", "/f"]


def test_duplicate_paths_in_one_batch_last_wins(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    a, b = world.chunks(user, ["a", "b"])
    r1 = world.start(client)
    batch = [world.file("/f", [a], 100), world.file("/f/", [b], 100, mtime_ns=9)]
    assert world.commit(client, user, r1, batch) == (1, 0)
    with catalog.session() as s:
        assert queries.get_version(s, client, "/f", r1).mtime_ns == 9


def test_deleted_then_recreated(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    (a,) = world.chunks(user, ["a"])
    r1 = world.start(client)
    world.commit(client, user, r1, [world.dir("/d"), world.file("/d/f", [a], 100)])
    r2 = world.start(client)
    assert world.close(client, r2, ["/d/f", "/d/f", "/never/was"]) == 1
    r3 = world.start(client)
    assert world.close(client, r3, ["/d/f"]) == 0  # already gone
    assert world.commit(client, user, r3, [world.file("/d/f", [a], 100)]) == (1, 0)
    assert [(p, f, t) for p, f, t, _ in _all_versions(catalog, client)] == [
        ("/d", 1, None),
        ("/d/f", 1, 2),
        ("/d/f", 3, None),
    ]
    with catalog.session() as s:
        assert queries.get_version(s, client, "/d/f", r2) is None
        assert queries.get_version(s, client, "/d/f", r3).valid_from == 3
        assert [v.valid_from for v in queries.history(s, client, "/d/f")] == [3, 1]


def test_missing_chunks_refuse_the_whole_batch(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    (a,) = world.chunks(user, ["a"])
    other_user = world.user()
    (theirs,) = world.chunks(other_user, ["theirs"])
    x, y = fake_chunk_id("x"), fake_chunk_id("y")
    r1 = world.start(client)
    batch = [world.file("/ok", [a], 100), world.file("/bad", [y, a, x, y], 400), world.file("/t", [theirs], 100)]
    with pytest.raises(commits.MissingChunksError) as info:
        world.commit(client, user, r1, batch)
    assert info.value.missing == [y, x, theirs]
    assert isinstance(info.value, Conflict)
    assert _all_versions(catalog, client) == []
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Content)) == 0


def test_size_must_equal_the_chunks(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    (a,) = world.chunks(user, ["a"], raw_len=100)
    r1 = world.start(client)
    with pytest.raises(UsageError, match="size 101"):
        world.commit(client, user, r1, [world.file("/f", [a], 101)])
    with pytest.raises(UsageError, match="size 5"):
        world.commit(client, user, r1, [world.file("/empty", [], 5)])
    assert _all_versions(catalog, client) == []


@pytest.mark.parametrize(
    "path", ["relative", "", "/a/../b", "/a/./b", "/a//b", "/a/\0b", "/bad\\escape", "/\\x41", "/a\udc80"]
)
def test_bad_paths_are_refused(catalog: Catalog, world: World, setup, path: str) -> None:
    user, client = setup
    r1 = world.start(client)
    with pytest.raises(UsageError, match="bad path"):
        world.commit(client, user, r1, [world.dir("/fine"), world.dir(path)])
    with pytest.raises(UsageError, match="bad path"):
        world.close(client, r1, [path])
    assert _all_versions(catalog, client) == []


def test_entry_shapes_are_checked(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    (a,) = world.chunks(user, ["a"])
    r1 = world.start(client)
    bad = [
        protocol.Entry(path="/f", kind="file", size=0),  # no chunk list
        protocol.Entry(path="/f", kind="file", size=100, chunks=[a], link_target="x"),
        protocol.Entry(path="/f", kind="file", size=100, chunks=[a.upper()]),
        protocol.Entry(path="/l", kind="symlink"),
        protocol.Entry(path="/l", kind="symlink", link_target="x", chunks=[]),
        protocol.Entry(path="/l", kind="symlink", link_target="nul\0byte"),
        protocol.Entry(path="/l", kind="symlink", link_target="lone \udc80 surrogate"),
        protocol.Entry(path="/d", kind="dir", chunks=[]),
        protocol.Entry(path="/d", kind="dir", link_target="x"),
        protocol.Entry(path="/d", kind="dir", size=-1),
    ]
    for entry in bad:
        with pytest.raises(UsageError):
            world.commit(client, user, r1, [entry])
    assert _all_versions(catalog, client) == []


def test_an_older_run_cannot_overwrite_a_newer_one(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    r1 = world.start(client)
    r2 = world.start(client)
    world.commit(client, user, r2, [world.dir("/d")])
    with pytest.raises(Conflict, match="run 2"):
        world.commit(client, user, r1, [world.dir("/d", mtime_ns=5)])
    with pytest.raises(Conflict, match="run 2"):
        world.close(client, r1, ["/d"])
    assert _all_versions(catalog, client) == [("/d", 2, None, 0)]


def test_trees_as_of_three_runs(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    a, b, c = world.chunks(user, ["a", "b", "c"])
    r1 = world.start(client)
    world.commit(client, user, r1, [world.dir("/etc"), world.file("/etc/a", [a], 100), world.file("/etc/b", [b], 100)])
    r2 = world.start(client)
    world.commit(client, user, r2, [world.file("/etc/a", [a, c], 200, mtime_ns=2), world.file("/etc/c", [c], 100)])
    world.close(client, r2, ["/etc/b"])
    r3 = world.start(client)
    world.commit(client, user, r3, [world.file("/etc/b", [b], 100, mtime_ns=3)])
    world.close(client, r3, ["/etc/c"])
    assert _tree(catalog, client, user, r1) == {"/etc": 0, "/etc/a": 100, "/etc/b": 100}
    assert _tree(catalog, client, user, r2) == {"/etc": 0, "/etc/a": 200, "/etc/c": 100}
    assert _tree(catalog, client, user, r3) == {"/etc": 0, "/etc/a": 200, "/etc/b": 100}
    with catalog.session() as s:
        assert [v.name for v in queries.list_children(s, client, "/etc", r1)] == ["a", "b"]
        assert [v.name for v in queries.list_children(s, client, "/etc", r2)] == ["a", "c"]
        assert [(v.name, v.size) for v in queries.list_children(s, client, "/etc", r3)] == [("a", 200), ("b", 100)]
        assert [v.path for v in queries.list_children(s, client, "/", r3)] == ["/etc"]
        assert [v.valid_from for v in queries.history(s, client, "/etc/a")] == [2, 1]
        assert [(v.valid_from, v.valid_to) for v in queries.history(s, client, "/etc/b")] == [(3, None), (1, 2)]
        rows = queries.list_under(s, client_id=client, user_id=user, path="/etc", run_seq=r2, after=None, limit=10, with_chunks=True)
    assert [(v.path, chunks) for v, chunks in rows] == [("/etc", None), ("/etc/a", [a, c]), ("/etc/c", [c])]


def test_root_is_its_own_entry_not_its_own_child(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    r1 = world.start(client)
    world.commit(client, user, r1, [world.dir("/"), world.dir("/a")])
    with catalog.session() as s:
        assert [v.path for v in queries.list_children(s, client, "/", r1)] == ["/a"]
        root = queries.get_version(s, client, "/", r1)
        assert (root.parent, root.name) == ("", "")


ODD_NAMES = [
    "plain", "with space", " lead", "trail ", "Capital", "capital", "under_score", "per%cent", "%", "_", "__",
    "back\\\\slash", "\\\\", "raw \\xff byte", "\\xfe\\xff", "é", "e\u0301", "日本語", "emoji🎉", "z", "~tilde", "0",
    "a-b", "a.b", "a+b", "a b", "[x]", "*", "?", "'quote'", '"dq"', "tab\tname", "new\nline",
]


def _odd_paths() -> list[str]:
    paths = []
    for i, top in enumerate(ODD_NAMES[:10]):
        paths.append("/" + top)
        for j, name in enumerate(ODD_NAMES):
            paths.append(f"/{top}/{name}{i}{j}")
    # Siblings that share a prefix with a subtree without being in it.
    paths += ["/plain0", "/plain-x", "/plain.x", "/plain/", "/per%cen", "/per%cent0"]
    return sorted(set(p.rstrip("/") or "/" for p in paths))


def test_list_under_pages_in_byte_order(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    paths = _odd_paths()
    extra = [f"/many/{i:04d} {ODD_NAMES[i % len(ODD_NAMES)]}" for i in range(1000 - len(paths))]
    everything = sorted(set(paths + extra + ["/many"]))
    assert len(everything) >= 1000
    r1 = world.start(client)
    entries = [world.dir(p) for p in everything]
    for i in range(0, len(entries), 400):
        world.commit(client, user, r1, entries[i : i + 400])

    def walk(prefix: str, limit: int) -> list[str]:
        seen: list[str] = []
        after = None
        with world.catalog.session() as s:
            while True:
                rows = queries.list_under(s, client_id=client, user_id=user, path=prefix, run_seq=r1, after=after, limit=limit, with_chunks=False)
                seen += [v.path for v, _ in rows]
                if len(rows) < limit:
                    return seen
                after = rows[-1][0].path

    assert walk("/", 37) == everything  # each once, in Python (code point = UTF-8 byte) order
    for prefix in ("/plain", "/per%cent", "/%", "/_", "/\\\\", "/many", "/with space", "/é"):
        expected = [p for p in everything if p == prefix or p.startswith(prefix + "/")]
        assert walk(prefix, 7) == expected, prefix
    assert walk("/nothing", 5) == []
    with world.catalog.session() as s:
        kids = queries.list_children(s, client, "/plain", r1)
    assert [v.name for v in kids] == sorted(p.rsplit("/", 1)[1] for p in everything if p.startswith("/plain/"))


def test_list_under_edges(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    r1 = world.start(client)
    all_paths = ["/", "/a", "/a b", "/a-", "/a/x", "/a/x/deep", "/a/y", "/a0", "/b"]
    world.commit(client, user, r1, [world.dir(p) for p in all_paths])

    def page(path: str, after: str | None = None, limit: int = 100) -> list[str]:
        with catalog.session() as s:
            rows = queries.list_under(s, client_id=client, user_id=user, path=path, run_seq=r1, after=after, limit=limit, with_chunks=False)
        return [v.path for v, _ in rows]

    assert page("/") == all_paths
    assert page("/", after="/") == all_paths[1:]
    assert page("/a") == ["/a", "/a/x", "/a/x/deep", "/a/y"]
    assert page("/a", after="/") == ["/a", "/a/x", "/a/x/deep", "/a/y"]
    assert page("/a", after="/a") == ["/a/x", "/a/x/deep", "/a/y"]
    assert page("/a", after="/a b") == ["/a/x", "/a/x/deep", "/a/y"]
    assert page("/a", after="/a/x") == ["/a/x/deep", "/a/y"]
    assert page("/a", after="/a/y") == []
    assert page("/a", limit=1) == ["/a"]
    assert page("/a", limit=2) == ["/a", "/a/x"]
    assert page("/a", limit=0) == []
    assert page("/a/x/deep") == ["/a/x/deep"]
    assert page("/c") == []
    for bad in ("/a\0", "/a\udcff"):
        with pytest.raises(UsageError):
            page("/a", after=bad)


def test_commit_speed(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    n, batch = 10_000, protocol.MAX_ENTRIES_PER_BATCH
    ids = world.chunks(user, [f"c{i}" for i in range(n)], raw_len=10)
    entries = [world.dir(f"/data/d{i:03d}") for i in range(100)]
    entries += [world.file(f"/data/d{i % 100:03d}/f{i:05d}", [ids[i]], 10) for i in range(n - 100)]
    r1 = world.start(client)
    t0 = time.perf_counter()
    results = [world.commit(client, user, r1, entries[i : i + batch]) for i in range(0, n, batch)]
    elapsed = time.perf_counter() - t0
    r2 = world.start(client)
    t1 = time.perf_counter()
    again = [world.commit(client, user, r2, entries[i : i + batch]) for i in range(0, n, batch)]
    elapsed_unchanged = time.perf_counter() - t1
    print(f"\n[{catalog.kind}] commit {n} new entries in batches of {batch}: {elapsed:.2f} s; unchanged: {elapsed_unchanged:.2f} s")
    assert sum(c for c, _ in results) == n and sum(u for _, u in again) == n
    assert elapsed < 10


def _statements(catalog: Catalog, fn) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(catalog.engine, "before_cursor_execute", capture)
    try:
        fn()
    finally:
        event.remove(catalog.engine, "before_cursor_execute", capture)
    return seen


def _plan(catalog: Catalog, statement: str, parameters: object) -> str:
    with catalog.engine.connect() as conn:
        if catalog.kind == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return "\n".join(str(r[-1]) for r in rows)
        conn.exec_driver_sql("SET enable_seqscan = off")  # tiny test tables: ask which index *can* serve
        return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters).all())


def _current_statement(catalog: Catalog, client: int, paths: list[str]) -> list[tuple[str, object]]:
    """The statement `commits._current_versions` runs on the DBAPI cursor (no engine event sees it)."""
    dialect = catalog.engine.dialect
    return [(queries.id_list_statement(dialect, commits.current_versions_sql(dialect), len(paths)), (client, *paths))]


def test_queries_use_the_indexes(catalog: Catalog, world: World, setup) -> None:
    user, client = setup
    r1 = world.start(client)
    dirs = [f"/d{k}" for k in range(20)]
    world.commit(client, user, r1, [world.dir(d) for d in dirs] + [world.dir(f"{d}/{i}") for d in dirs for i in range(100)])
    if catalog.kind == "postgresql":
        with catalog.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    with catalog.session() as s:
        children = _statements(catalog, lambda: queries.list_children(s, client, "/d3", r1))
        current = _current_statement(catalog, client, ["/d3/1", "/d4/2"])
        under = _statements(
            catalog,
            lambda: queries.list_under(s, client_id=client, user_id=user, path="/d3", run_seq=r1, after="/d3/3", limit=10, with_chunks=True),
        )
        one = _statements(catalog, lambda: queries.get_version(s, client, "/d3/1", r1))
        # A commit batch looks up 500 paths at a time: with no statistics SQLite once scanned every
        # current version through (client_id, valid_to) instead (the catalog now hints the index).
        many = _current_statement(catalog, client, [f"/d3/{i}" for i in range(100)] * 5)
        found = commits._current_versions(s, client, ["/d3/1", "/d4/2", "/nowhere"])
        assert sorted(found) == ["/d3/1", "/d4/2"] and found["/d3/1"].kind == "dir" and found["/d3/1"].valid_from == r1
        opened = _statements(catalog, lambda: list(history.opened_by(s, client, user, r1)))
        closed = _statements(catalog, lambda: history.closed_by(s, client, r1))
    named = [("children", children), ("current", current), ("under", under), ("one", one), ("many", many), ("opened", opened), ("closed", closed)]
    plans = {name: _plan(catalog, *stmts[-1]) for name, stmts in named}
    print(plans)
    if catalog.kind == "postgresql":
        assert "path = ANY" in plans["current"].split("Index Cond")[1]
    assert "ix_versions_client_id_parent_valid_from" in plans["children"]
    assert "uq_versions_client_id_path_current" in plans["current"]
    assert "ix_versions_client_id_path_valid_from" in plans["under"]
    assert "pk_contents" in plans["under"] or "sqlite_autoindex_contents" in plans["under"]
    assert "versions_client_id_path" in plans["one"]
    if catalog.kind == "sqlite":
        # Paging reads the index in path order; one directory's children are sorted by name (small).
        assert "TEMP B-TREE" not in plans["under"] and "path>? AND path<?" in plans["under"]
        assert "uq_versions_client_id_path_current" in plans["many"]
        # What one run opened or closed, not every version of the client in path order.
        assert "ix_versions_client_id_valid_from (client_id=? AND valid_from=?)" in plans["opened"]
        # ... and not sorted: a first run's sort held every row, chunk lists included (the manifest).
        assert "TEMP B-TREE" not in plans["opened"]
        assert "ix_versions_client_id_valid_to (client_id=? AND valid_to=?)" in plans["closed"]

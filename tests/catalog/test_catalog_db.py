"""Catalog engine and schema: migrations to head equal the models, pragmas, URLs, timestamps, big integers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from bkup.catalog.db import MIGRATIONS_DIR, Catalog
from bkup.catalog.models import Client, User, Version, metadata
from bkup.errors import ConfigError


def test_upgrade_empty_database_matches_models(db_url: str) -> None:
    cat = Catalog(db_url)
    try:
        assert cat.current_revision() is None
        cat.upgrade()
        cat.upgrade()  # idempotent: every server start calls it
        head = ScriptDirectory.from_config(cat.alembic_config()).get_current_head()
        assert cat.current_revision() == head
        with cat.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
            assert diffs == []
            names = set(inspect(conn).get_table_names())
        assert set(metadata.tables) <= names
        assert "user" not in names
    finally:
        cat.dispose()


def test_schema_details_the_diff_cannot_see(catalog: Catalog) -> None:
    """Byte-order collation of path columns, the partial unique index, BIGINT sizes."""
    with catalog.engine.connect() as conn:
        insp = inspect(conn)
        cols = {c["name"]: c for c in insp.get_columns("versions")}
        indexes = {i["name"]: i for i in insp.get_indexes("versions")}
        if catalog.kind == "postgresql":
            collations = dict(
                conn.execute(
                    text(
                        "SELECT column_name, collation_name FROM information_schema.columns "
                        "WHERE table_name = 'versions' AND column_name IN ('path', 'parent', 'name')"
                    )
                ).all()
            )
            assert collations == {"path": "C", "parent": "C", "name": "C"}
            indexdef = conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_versions_client_id_path_current'")
            ).scalar_one()
        else:
            indexdef = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'uq_versions_client_id_path_current'")
            ).scalar_one()
    assert "UNIQUE" in indexdef.upper() and "valid_to IS NULL" in indexdef.replace("(", "").replace(")", "")
    assert indexes["uq_versions_client_id_path_current"]["column_names"] == ["client_id", "path"]
    for name in ("size", "mtime_ns", "uid", "gid"):
        assert "BIGINT" in str(cols[name]["type"]).upper()


def test_migrations_ship_as_package_files() -> None:
    """env.py is a module of a package and revisions match the package-data glob `versions/*.py`."""
    assert (MIGRATIONS_DIR / "__init__.py").is_file()
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    revisions = list((MIGRATIONS_DIR / "versions").glob("0*.py"))
    assert revisions, "no revisions"
    assert "import sqlmodel" in (MIGRATIONS_DIR / "script.py.mako").read_text()


def test_postgresql_url_means_psycopg3() -> None:
    for url in ("postgresql://u:secret@db.example:5432/bkup", "postgres://u:secret@db.example/bkup"):
        cat = Catalog(url)
        assert cat.kind == "postgresql"
        assert cat.engine.url.drivername == "postgresql+psycopg"
        assert "secret" not in repr(cat)
        cat.dispose()


def test_unreachable_database_is_a_config_error_with_masked_password() -> None:
    cat = Catalog("postgresql://bob:s3cret@127.0.0.1:1/nothing")
    with pytest.raises(ConfigError) as info:
        cat.upgrade()
    msg = str(info.value)
    assert "cannot open the database at" in msg and "s3cret" not in msg and "***" in msg
    cat.dispose()


def test_unusable_sqlite_location_is_a_config_error(tmp_path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create the folder"):
        Catalog(f"sqlite:///{tmp_path}/file/sub/bkup.db")
    (tmp_path / "dir.db").mkdir()
    cat = Catalog(f"sqlite:///{tmp_path}/dir.db")
    with pytest.raises(ConfigError, match="cannot open the database"):
        cat.upgrade()
    cat.dispose()


def test_pool_reconnects_after_the_server_dropped_connections(pg_url: str) -> None:
    import psycopg

    cat = Catalog(pg_url)
    cat.upgrade()
    with cat.session() as s:
        assert s.execute(text("SELECT 1")).scalar() == 1
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url.replace("+psycopg", "").rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [dbname])
    with cat.session() as s:  # pre-ping notices the dead connection and opens a new one
        assert s.execute(text("SELECT 1")).scalar() == 1
    cat.dispose()


def test_unsupported_or_malformed_url() -> None:
    with pytest.raises(ConfigError):
        Catalog("mysql://x@y/z")
    with pytest.raises(ConfigError):
        Catalog("not a url")


def test_sqlite_pragmas_and_folder(tmp_path) -> None:
    path = tmp_path / "deep" / "er" / "bkup.db"
    cat = Catalog(f"sqlite:///{path}")
    with cat.engine.connect() as conn:
        get = lambda p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()  # noqa: E731
        assert get("journal_mode") == "wal"
        assert get("foreign_keys") == 1
        assert get("busy_timeout") == 30000
        assert get("synchronous") == 1  # NORMAL
    assert path.parent.is_dir()
    cat.dispose()


def test_timestamps_are_aware_utc(catalog: Catalog) -> None:
    t = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with catalog.session() as s:
        u = User(name="tz", password_hash="x", created_at=t)
        s.add(u)
        s.commit()
        uid = u.id
    with catalog.session() as s:
        back = s.get(User, uid)
        assert back.created_at.tzinfo is not None and back.created_at.utcoffset() == timedelta(0)
        assert back.created_at == t
        assert back.created_at.hour == 7


def test_naive_timestamps_are_refused(catalog: Catalog) -> None:
    with catalog.session() as s:
        s.add(User(name="naive", password_hash="x", created_at=datetime(2026, 1, 1)))
        with pytest.raises(Exception, match="naive datetime"):
            s.commit()


def test_big_integers_round_trip(catalog: Catalog) -> None:
    with catalog.session() as s:
        u = User(name="big", password_hash="x")
        s.add(u)
        s.flush()
        c = Client(user_id=u.id, name="big")
        s.add(c)
        s.flush()
        v = Version(
            client_id=c.id, path="/f", parent="/", name="f", kind="file", size=5 * 2**40,
            mtime_ns=1_764_000_000_123_456_789, uid=2**32 - 2, gid=2**32 - 2, valid_from=1,
        )
        s.add(v)
        s.commit()
        vid = v.id
    with catalog.session() as s:
        back = s.get(Version, vid)
        assert (back.size, back.mtime_ns, back.uid) == (5 * 2**40, 1_764_000_000_123_456_789, 2**32 - 2)


def test_deleting_a_user_removes_its_rows(catalog: Catalog) -> None:
    with catalog.session() as s:
        u = User(name="gone", password_hash="x")
        s.add(u)
        s.flush()
        s.add(Client(user_id=u.id, name="gone-client"))
        s.commit()
        s.delete(u)
        s.commit()
        assert s.execute(text("SELECT count(*) FROM clients")).scalar() == 0


def test_upgrade_to_compact_catalog_keeps_every_row_and_downgrades_back(db_url: str) -> None:
    """0005 turns hex chunk and content ids into 32 raw bytes (and, on SQLite, their rows' times into integers):
    rows, lookups, times and the partial index survive, and a downgrade gives the old spelling back."""
    from bkup.catalog import queries
    from bkup.catalog.models import Chunk, Content

    a, b, c = "0a" * 32, "b1" * 32, "fe" * 32
    file_v1, file_v2 = "1c" * 32, "2d" * 32
    cat = Catalog(db_url)
    try:
        cat.upgrade("0004")
        t = "2026-01-01 00:00:00"
        with cat.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, name, password_hash, is_admin, created_at) VALUES (1, 'u', 'x', :f, :t)"), {"f": False, "t": t})
            conn.execute(text("INSERT INTO clients (id, user_id, name, created_at) VALUES (1, 1, 'c', :t)"), {"t": t})
            conn.execute(text("INSERT INTO packs (id, user_id, size, n_chunks, created_at, state) VALUES (:p, 1, 100, 3, :t, 'live')"), {"p": "9" * 32, "t": t})
            for n, cid in enumerate((a, b, c)):
                conn.execute(text('INSERT INTO chunks (user_id, id, pack_id, "offset", length, raw_len, flags, created_at, last_seen) '
                                  "VALUES (1, :id, :p, :o, 10, 4, 0, :t, :t)"), {"id": cid, "p": "9" * 32, "o": 8 + 10 * n, "t": t})
            for content, chunks in ((file_v1, a + b), (file_v2, c)):
                conn.execute(text("INSERT INTO contents (user_id, id, size, n_chunks, chunk_ids, created_at, last_seen) "
                                  "VALUES (1, :id, :size, :n, :blob, :t, :t)"),
                             {"id": content, "size": 4 * len(chunks) // 64, "n": len(chunks) // 64, "blob": bytes.fromhex(chunks), "t": t})
            for path, parent, name, kind, content, vf, vt in (
                ("/d", "/", "d", "dir", None, 1, None),
                ("/d/f", "/d", "f", "file", file_v1, 1, 2),
                ("/d/f", "/d", "f", "file", file_v2, 2, None),
            ):
                conn.execute(text("INSERT INTO versions (client_id, path, parent, name, kind, size, mtime_ns, mode, uid, gid, content_id, valid_from, valid_to) "
                                  "VALUES (1, :path, :parent, :name, :kind, 0, 0, 0, 0, 0, :content, :vf, :vt)"),
                             {"path": path, "parent": parent, "name": name, "kind": kind, "content": content, "vf": vf, "vt": vt})
        cat.upgrade()
        if cat.kind == "sqlite":  # the rebuilt tables' old pages went back to the file system
            with cat.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
        length = "octet_length" if cat.kind == "postgresql" else "length"
        if cat.kind == "sqlite":
            with cat.engine.connect() as conn:
                assert conn.execute(text("SELECT DISTINCT typeof(last_seen) || typeof(created_at) FROM contents")).scalars().all() == ["integerinteger"]
        with cat.engine.connect() as conn:
            assert conn.execute(text(f"SELECT DISTINCT {length}(id) FROM chunks")).scalars().all() == [32]
            assert conn.execute(text(f"SELECT DISTINCT {length}(content_id) FROM versions WHERE content_id IS NOT NULL")).scalars().all() == [32]
        with cat.session() as s:
            assert sorted(s.scalars(select(Chunk.id))) == [a, b, c]
            assert {x.id: bytes(x.chunk_ids).hex() for x in s.scalars(select(Content))} == {file_v1: a + b, file_v2: c}
            assert {(x.created_at, x.last_seen) for x in s.scalars(select(Chunk))} == {(datetime(2026, 1, 1, tzinfo=UTC),) * 2}
            assert [v.content_id for v in queries.history(s, 1, "/d/f")] == [file_v2, file_v1]  # newest first
            assert queries.get_version(s, 1, "/d", 2).content_id is None
            assert queries.chunk_locations(s, 1, [c, a, "77" * 32])[a].offset == 8
            assert queries.missing_chunks(s, 1, [a, "77" * 32]) == ["77" * 32]
        # Still one current version per path: the partial unique index came through the table rebuild.
        with pytest.raises(Exception, match="(?i)unique"):
            with cat.engine.begin() as conn:
                conn.execute(text("INSERT INTO versions (client_id, path, parent, name, kind, size, mtime_ns, mode, uid, gid, valid_from) "
                                  "VALUES (1, '/d/f', '/d', 'f', 'dir', 0, 0, 0, 0, 0, 3)"))
        from alembic import command

        cfg = cat.alembic_config()
        with cat.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004")
        with cat.engine.connect() as conn:
            assert sorted(conn.execute(text("SELECT id FROM chunks")).scalars()) == [a, b, c]
            assert sorted(conn.execute(text("SELECT content_id FROM versions WHERE content_id IS NOT NULL")).scalars()) == [file_v1, file_v2]
            assert {str(t)[:19] for t in conn.execute(text("SELECT last_seen FROM chunks")).scalars()} == {t}
    finally:
        cat.dispose()

"""Catalog fixtures: every test runs on SQLite (a temp file) and on PostgreSQL (a fresh database)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from bkup import protocol
from bkup.catalog import commits, queries
from bkup.catalog.db import Catalog
from bkup.catalog.models import Client, User


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/catalog/bkup.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def catalog(db_url: str) -> Iterator[Catalog]:
    cat = Catalog(db_url)
    cat.upgrade()
    yield cat
    cat.dispose()


@dataclass(frozen=True)
class FakeEntry:
    """A PackEntry look-alike for record_pack."""

    id: str
    offset: int
    length: int
    raw_len: int
    flags: int = 0


def fake_chunk_id(label: str) -> str:
    return hashlib.blake2b(label.encode(), digest_size=32).hexdigest()


class World:
    """Small builders for users, clients, chunks and entries, all committed."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def user(self, name: str | None = None) -> int:
        with self.catalog.session() as s:
            u = User(name=name or "u-" + secrets.token_hex(4), password_hash="x")
            s.add(u)
            s.commit()
            return u.id

    def client(self, user_id: int, name: str | None = None) -> int:
        with self.catalog.session() as s:
            c = Client(user_id=user_id, name=name or "c-" + secrets.token_hex(4))
            s.add(c)
            s.commit()
            return c.id

    def chunks(self, user_id: int, labels: list[str], raw_len: int = 100, pack_id: str | None = None) -> list[str]:
        """Record one pack holding a chunk per label (raw_len bytes each); returns the ids."""
        ids = [fake_chunk_id(label) for label in labels]
        entries = [FakeEntry(cid, offset=i * raw_len, length=raw_len + 28, raw_len=raw_len) for i, cid in enumerate(ids)]
        with self.catalog.session() as s:
            queries.record_pack(s, user_id, pack_id or secrets.token_hex(16), raw_len * len(ids), entries)
            s.commit()
        return ids

    def start(self, client_id: int) -> int:
        with self.catalog.session() as s:
            run = queries.start_run(s, client_id, "manual", datetime.now(UTC))
            s.commit()
            return run.seq

    @staticmethod
    def file(path: str, chunks: list[str], size: int, mtime_ns: int = 1, **kw) -> protocol.Entry:
        return protocol.Entry(path=path, kind="file", size=size, mtime_ns=mtime_ns, mode=0o644, chunks=chunks, **kw)

    @staticmethod
    def dir(path: str, mtime_ns: int = 1) -> protocol.Entry:
        return protocol.Entry(path=path, kind="dir", mtime_ns=mtime_ns, mode=0o755)

    @staticmethod
    def link(path: str, target: str) -> protocol.Entry:
        return protocol.Entry(path=path, kind="symlink", size=len(target), link_target=target, mode=0o777)

    def commit(self, client_id: int, user_id: int, seq: int, entries: list[protocol.Entry]) -> tuple[int, int]:
        with self.catalog.session() as s:
            result = commits.commit_entries(s, client_id=client_id, user_id=user_id, run_seq=seq, entries=entries)
            s.commit()
            return result

    def close(self, client_id: int, seq: int, paths: list[str]) -> int:
        with self.catalog.session() as s:
            n = commits.close_paths(s, client_id=client_id, run_seq=seq, paths=paths)
            s.commit()
            return n


@pytest.fixture
def world(catalog: Catalog) -> World:
    return World(catalog)

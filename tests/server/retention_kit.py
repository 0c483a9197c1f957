"""Helpers for the retention, GC, check and rebuild tests: contexts on any catalog/store, an agent over the API, listings.

`Agent` drives the backup data path over HTTP the way the real agent does
(start a run, ask which chunks are missing, upload them in frame streams,
commit entries, report deletions, finish), so the GC protocol's touches are
exercised. `listing` and `read_back` are what a restore sees.
"""

from __future__ import annotations

import base64
import io
import os
import random
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from litestar.testing import TestClient
from sqlalchemy import select

from bkup.catalog import queries
from bkup.catalog.db import Catalog
from bkup.catalog.models import Client, Run
from bkup.core.chunker import iter_chunks
from bkup.core.frames import FrameParser, decode_frame, encode_chunk, end_marker, stream_header
from bkup.core.hashing import chunk_id
from bkup.core.paths import parent_of
from bkup.server import accounts
from bkup.server.context import ServerContext, open_context
from bkup.settings import Settings
from bkup.storage.objects import MemoryStore, ObjectStore, open_store

API = "/api/v1"
MAX_REQUEST = 24 * 2**20


def make_settings(tmp_path, **changes) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"), config_dir=str(tmp_path / "config"),
        master_key=base64.b64encode(os.urandom(32)).decode(), gc_interval=0, **changes,
    )


_TEMPLATE: dict[str, Path] = {}


def _sqlite_template() -> Path:
    """A migrated empty SQLite catalog, made once per session: copying it beats running the migrations per test."""
    if "db" not in _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="bkup-template-"))
        cat = Catalog(f"sqlite:///{folder / 'catalog.db'}")
        cat.upgrade()
        cat.dispose()
        _TEMPLATE["db"] = folder / "catalog.db"
    return _TEMPLATE["db"]


def make_ctx(settings: Settings, db_url: str | None = None, store: ObjectStore | None = None) -> ServerContext:
    """A context on a fresh catalog (SQLite in the data dir unless `db_url`) and store (memory unless given)."""
    if db_url is None:
        target = Path(settings.data_dir) / "catalog.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_sqlite_template(), target)
    catalog = Catalog(db_url or settings.effective_database_url)
    return open_context(settings, catalog=catalog, store=store or MemoryStore(), migrate=db_url is not None)


@pytest.fixture
def fast_passwords(monkeypatch):
    """Argon2 at its cheapest: these tests log in a lot and test no password security."""
    from argon2 import PasswordHasher

    from bkup.server import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def open_test_store(kind: str, request) -> ObjectStore:
    """memory, file (under tmp_path) or s3 (moto)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        return open_store((request.getfixturevalue("tmp_path") / "store").as_uri())
    endpoint = request.getfixturevalue("moto_endpoint")
    return open_store(request.getfixturevalue("s3_url"), s3_endpoint_url=endpoint)


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def chunks_of(data: bytes) -> list[bytes]:
    return list(iter_chunks(io.BytesIO(data)))


@dataclass
class Agent:
    """One client's agent, over the in-process HTTP API."""

    http: TestClient
    name: str
    token: str  # user API token
    client_id: int
    agent_token: str
    ctx: ServerContext
    runs: list[int] = field(default_factory=list)

    @property
    def agent(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.agent_token}"}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _post(self, path: str, **kw):
        r = self.http.post(API + path, **kw)
        assert r.status_code < 300, (path, r.status_code, r.text)
        return r.json()

    def upload(self, chunks: Iterable[bytes]) -> None:
        body, n = [stream_header()], 0
        size = 0
        for c in chunks:
            frame = encode_chunk(c).to_bytes()
            if size + len(frame) > MAX_REQUEST and n:
                self._post("/chunks", content=b"".join(body) + end_marker(n), headers=self.agent)
                body, n, size = [stream_header()], 0, 0
            body.append(frame)
            n, size = n + 1, size + len(frame)
        if n:
            self._post("/chunks", content=b"".join(body) + end_marker(n), headers=self.agent)

    def backup(self, files: dict[str, bytes], deleted: Iterable[str] = (), *, status: str = "ok", finish: bool = True,
               pack_per_file: bool = False) -> dict:
        """One run: the files (and their parent directories) committed, `deleted` paths closed.

        New chunks go up in requests of up to 24 MiB (one pack each), or one
        request per file with `pack_per_file`.
        """
        run = self._post("/runs", json={"trigger": "manual"}, headers=self.agent)
        entries, dirs, batch = [], set(), {}
        for path, data in sorted(files.items()):
            pieces = chunks_of(data)
            ids = [chunk_id(c) for c in pieces]
            chunks = dict(zip(ids, pieces))
            missing: set[str] = set()
            for i in range(0, len(ids), 4096):
                missing |= set(self._post("/chunks/missing", json={"ids": ids[i:i + 4096]}, headers=self.agent)["missing"])
            batch.update((c, chunks[c]) for c in missing if c not in batch)
            if pack_per_file and batch:
                self.upload(batch.values())
                batch = {}
            entries.append({"path": path, "kind": "file", "size": len(data), "mtime_ns": 1_700_000_000_000_000_000 + len(data),
                            "mode": 0o644, "uid": 1000, "gid": 1000, "chunks": ids})
            p = parent_of(path)
            while p != "/" and p not in dirs:
                dirs.add(p)
                p = parent_of(p)
        if batch:
            self.upload(batch.values())
        entries += [{"path": d, "kind": "dir", "mode": 0o755, "mtime_ns": 1} for d in sorted(dirs)]
        for i in range(0, len(entries), 2000):
            self._post(f"/runs/{run['id']}/versions", json={"entries": entries[i:i + 2000]}, headers=self.agent)
        if deleted:
            self._post(f"/runs/{run['id']}/deletions", json={"paths": sorted(deleted)}, headers=self.agent)
        if finish:
            run = self._post(f"/runs/{run['id']}/finish", json={"status": status, "stats": {"files_seen": len(files)}}, headers=self.agent)
            self.ctx.after_run.wait()  # its manifest and prune, done after the answer
        self.runs.append(run["seq"])
        return run

    def read(self, ids: list[str]) -> dict[str, bytes]:
        """Chunks by id through POST /chunks/read, each verified (BLAKE3) by decode_frame."""
        out: dict[str, bytes] = {}
        for i in range(0, len(ids), 512):
            r = self.http.post(f"{API}/chunks/read", json={"client_id": self.client_id, "ids": ids[i:i + 512]}, headers=self.auth)
            assert r.status_code == 200, r.text
            parser = FrameParser()
            frames = parser.feed(r.content)
            parser.close()
            out.update((f.id, decode_frame(f)) for f in frames)
        return out


def make_agent(ctx: ServerContext, http: TestClient, user: str, client: str | None = None, *, admin: bool = False, create_user: bool = True) -> Agent:
    password = "password-" + user
    if create_user:
        accounts.create_user(ctx, user, password, is_admin=admin)
    r = http.post(f"{API}/auth/login", json={"user": user, "password": password})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    r = http.post(f"{API}/clients", json={"name": client or f"{user}-pc"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    return Agent(http, user, token, r.json()["id"], r.json()["token"], ctx)


def run_seqs(ctx: ServerContext, client_id: int) -> list[int]:
    with ctx.catalog.session() as s:
        return sorted(s.scalars(select(Run.seq).where(Run.client_id == client_id)))


def listing(ctx: ServerContext, client_id: int, run_seq: int) -> list[tuple]:
    """Everything a restore as of run `run_seq` sees (without catalog ids)."""
    with ctx.catalog.session() as s:
        user_id = s.get(Client, client_id).user_id
        rows = queries.list_under(s, client_id=client_id, user_id=user_id, path="/", run_seq=run_seq, after=None,
                                  limit=10**9, with_chunks=True)
    return [(v.path, v.kind, v.size, v.mtime_ns, v.mode, v.content_id, v.link_target, v.valid_from, v.valid_to,
             tuple(c) if c is not None else None) for v, c in rows]


def all_listings(ctx: ServerContext, client_id: int) -> dict[int, list[tuple]]:
    return {seq: listing(ctx, client_id, seq) for seq in run_seqs(ctx, client_id)}


def store_bytes(store: ObjectStore, prefix: str = "packs") -> int:
    return sum(store.size(k) for k in store.list(prefix))

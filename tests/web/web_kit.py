"""Web UI fixtures: the app in-process on a temp SQLite catalog and an in-memory store, signed-in browsers, seeded backups."""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from litestar.testing import TestClient

from bkup.catalog.db import Catalog
from bkup.core.frames import encode_chunk, end_marker, stream_header
from bkup.core.hashing import chunk_id
from bkup.server import accounts
from bkup.server.app import create_app
from bkup.server.context import ServerContext, open_context
from bkup.settings import Settings
from bkup.storage.objects import MemoryStore

API = "/api/v1"
CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
T0 = 1_700_000_000_000_000_000


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing():
    """Argon2 at its cheapest: these tests check pages, not hashing cost."""
    from argon2 import PasswordHasher

    from bkup.server import security

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
        yield


@pytest.fixture(scope="session")
def migrated_catalog(tmp_path_factory) -> Path:
    """An empty catalog at the newest schema, migrated once and copied by each world."""
    path = tmp_path_factory.mktemp("template") / "catalog.db"
    catalog = Catalog(f"sqlite:///{path}")
    catalog.upgrade()
    catalog.dispose()
    return path


@dataclass
class World:
    """One running server in-process: settings, context, the started app, and the users seeded so far."""

    settings: Settings
    ctx: ServerContext
    app: object
    seeded: dict = field(default_factory=dict)

    def user(self, name: str, *, admin: bool = False) -> Seeded:
        if name not in self.seeded:
            self.seeded[name] = seed(self.ctx, self.app, name, admin=admin)
        return self.seeded[name]


@contextmanager
def open_world(tmp: Path, migrated: Path, database_url: str = "") -> Iterator[World]:
    """A world on SQLite (a copy of the migrated template) or, given its URL, on an empty PostgreSQL database."""
    settings = Settings(
        data_dir=str(tmp / "data"), config_dir=str(tmp / "config"), master_key=base64.b64encode(os.urandom(32)).decode(),
        database_url=database_url,
    )
    Path(settings.data_dir).mkdir(parents=True)
    if not database_url:
        shutil.copyfile(migrated, Path(settings.data_dir) / "catalog.db")
    catalog = Catalog(settings.effective_database_url)
    ctx = open_context(settings, catalog=catalog, store=MemoryStore(), migrate=bool(database_url))
    try:
        app = create_app(settings, context=ctx)
        with TestClient(app=app):  # the lifespan runs once; requests go through `client(app)`
            yield World(settings=settings, ctx=ctx, app=app)
    finally:
        ctx.close()


@pytest.fixture
def world(tmp_path, migrated_catalog) -> Iterator[World]:
    """A fresh server per test (modules of read-only tests override this with a module-scoped one)."""
    with open_world(tmp_path, migrated_catalog) as w:
        yield w


@pytest.fixture
def settings(world) -> Settings:
    return world.settings


@pytest.fixture
def ctx(world) -> ServerContext:
    return world.ctx


@pytest.fixture
def app(world):
    return world.app


def client(app) -> TestClient:
    """A new cookie jar on a running app (no second startup: the world did that)."""
    return TestClient(app=app)


@pytest.fixture
def browser_factory(app):
    """New cookie jars on the same app: one per signed-in person."""
    return lambda: client(app)


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def login(web: TestClient, name: str, password: str):
    r = web.get("/login")
    assert r.status_code == 200
    return web.post("/login", data={"user": name, "password": password, "csrf_token": csrf_of(r.text), "next": "/"})


def post_form(web: TestClient, page: str, action: str, data: dict | None = None, **kw):
    """Submit a form as a browser would: take the CSRF token from `page`, post to `action`."""
    token = csrf_of(web.get(page).text)
    return web.post(action, data={**(data or {}), "csrf_token": token}, **kw)


# --- seeded backups -----------------------------------------------------------------------------------


def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Seeded:
    name: str
    password: str
    user_id: int
    client_id: int
    agent_token: str
    files: dict  # (path, run) -> bytes

    @property
    def agent(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.agent_token}"}


def _upload(api: TestClient, agent: dict, chunks: list[bytes]) -> None:
    body = stream_header() + b"".join(encode_chunk(c).to_bytes() for c in chunks) + end_marker(len(chunks))
    r = api.post(f"{API}/chunks", content=body, headers=agent)
    assert r.status_code == 200, r.text


def _file(path: str, chunks: list[bytes], mtime_ns: int) -> dict:
    return {"path": path, "kind": "file", "size": sum(map(len, chunks)), "mtime_ns": mtime_ns, "mode": 0o644,
            "uid": 1000, "gid": 1000, "chunks": [chunk_id(c) for c in chunks]}


def _dir(path: str) -> dict:
    return {"path": path, "kind": "dir", "mtime_ns": T0, "mode": 0o755, "uid": 1000, "gid": 1000}


def _run(api: TestClient, agent: dict, entries: list[dict], deleted: list[str] = (), status: str = "ok", error: str | None = None) -> int:
    r = api.post(f"{API}/runs", json={"trigger": "manual"}, headers=agent)
    assert r.status_code == 201, r.text
    run = r.json()
    if entries:
        r = api.post(f"{API}/runs/{run['id']}/versions", json={"entries": entries}, headers=agent)
        assert r.status_code == 200, r.text
    if deleted:
        r = api.post(f"{API}/runs/{run['id']}/deletions", json={"paths": list(deleted)}, headers=agent)
        assert r.status_code == 200, r.text
    stats = {"files_seen": len(entries), "files_changed": len(entries), "bytes_uploaded": 1000 * run["seq"]}
    r = api.post(f"{API}/runs/{run['id']}/finish", json={"status": status, "stats": stats, "error": error}, headers=agent)
    assert r.status_code == 200, r.text
    return run["seq"]


def seed(ctx: ServerContext, app, name: str, *, admin: bool = False) -> Seeded:
    """A user with one client and two runs: run 1 adds a.txt, big.bin, b.txt; run 2 changes a.txt, deletes b.txt, adds c.txt."""
    password = "password-" + name
    user = accounts.create_user(ctx, name, password, is_admin=admin)
    api = client(app)
    created = accounts.create_client(ctx, accounts.admin_principal(ctx, name), f"{name}-pc")
    agent = {"Authorization": f"Bearer {created.token}"}
    a1, a2 = b"version one of a\n" * 10, b"version TWO of a\n" * 12
    big = [data(300_000, 1), data(300_000, 1), data(123_457, 2)]  # a repeated chunk, as in a sparse file
    b, c = b"bee", b""
    home = f"/home/{name}"
    _upload(api, agent, [a1, a2, *big, b])
    seq1 = _run(api, agent, [
        _dir("/home"), _dir(home), _dir(f"{home}/docs"), _dir(f"{home}/docs/sub"),
        _file(f"{home}/docs/a.txt", [a1], T0), _file(f"{home}/docs/sub/big.bin", big, T0),
        _file(f"{home}/docs/b.txt", [b], T0),
        {"path": f"{home}/docs/link", "kind": "symlink", "mtime_ns": T0, "link_target": "a.txt", "mode": 0o777},
    ])
    seq2 = _run(api, agent, [_file(f"{home}/docs/a.txt", [a2], T0 + 10**9), _file(f"{home}/docs/c.txt", [], T0)],
                deleted=[f"{home}/docs/b.txt"], status="partial", error="1 file could not be read: /home/x/locked")
    files = {
        (f"{home}/docs/a.txt", seq1): a1, (f"{home}/docs/a.txt", seq2): a2, (f"{home}/docs/b.txt", seq1): b,
        (f"{home}/docs/c.txt", seq2): c, (f"{home}/docs/sub/big.bin", seq2): b"".join(big),
    }
    return Seeded(name=name, password=password, user_id=user.id, client_id=created.id, agent_token=created.token, files=files)


@pytest.fixture
def alice(world) -> Seeded:
    return world.user("alice")


@pytest.fixture
def bob(world) -> Seeded:
    return world.user("bob")


@pytest.fixture
def root(world) -> Seeded:
    return world.user("root", admin=True)


@pytest.fixture
def as_alice(browser_factory, alice) -> TestClient:
    web = browser_factory()
    assert login(web, alice.name, alice.password).status_code == 200
    return web


@pytest.fixture
def as_root(browser_factory, root) -> TestClient:
    web = browser_factory()
    assert login(web, root.name, root.password).status_code == 200
    return web

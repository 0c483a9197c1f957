"""Helpers of tests/security: an in-process world of two users, an admin and their agents, and the authorization matrix as data.

`MATRIX` is the documented answer of every /api/v1 route to every caller on
objects of user A and user B. The test enumerates the app's own route table,
so a new route without a row fails; `matrix_markdown()` renders the table
that docs/security.md carries (the docs test compares the two).
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
CALLERS = ("anon", "A", "B", "admin", "agentA", "agentB")
TARGETS = ("A", "B")


# --- the documented matrix ------------------------------------------------------------------------
#
# Each row: (method, route as in the app's route table, who may, expected per caller).
# Per caller either one outcome (routes without an owned object) or "onA/onB" (the object
# in the path or body belongs to user A or user B). "2xx" is success; 401 no or bad token;
# 403 the caller's kind may never do this; 404 the object is not the caller's to see (the
# same answer as for an id that does not exist: no guessable-id leaks).

_OWNER_ADMIN_AGENT = {"anon": "401", "A": "2xx/404", "B": "404/2xx", "admin": "2xx/2xx", "agentA": "2xx/404", "agentB": "404/2xx"}
_OWNER_ADMIN = {"anon": "401", "A": "2xx/404", "B": "404/2xx", "admin": "2xx/2xx", "agentA": "403/403", "agentB": "403/403"}
_AGENT_ONLY = {"anon": "401", "A": "403", "B": "403", "admin": "403", "agentA": "2xx", "agentB": "2xx"}
_AGENT_OWN_RUN = {"anon": "401", "A": "403/403", "B": "403/403", "admin": "403/403", "agentA": "2xx/404", "agentB": "404/2xx"}
_ADMIN_ONLY = {"anon": "401", "A": "403", "B": "403", "admin": "2xx", "agentA": "403", "agentB": "403"}
_ANY_USER = {"anon": "401", "A": "2xx", "B": "2xx", "admin": "2xx", "agentA": "403", "agentB": "403"}
_USER_SELF_403 = {"anon": "401", "A": "2xx/403", "B": "403/2xx", "admin": "2xx/2xx", "agentA": "403/403", "agentB": "403/403"}
_USER_SELF_404 = {"anon": "401", "A": "2xx/404", "B": "404/2xx", "admin": "2xx/2xx", "agentA": "403/403", "agentB": "403/403"}
_ANYONE = {c: "2xx" for c in CALLERS}


@dataclass(frozen=True)
class Row:
    method: str
    route: str
    who: str  # in words, for the docs
    expect: dict[str, str]


MATRIX: tuple[Row, ...] = (
    Row("POST", "/auth/login", "anyone (with a user's password)", _ANYONE),
    Row("GET", "/users", "admin", _ADMIN_ONLY),
    Row("POST", "/users", "admin", _ADMIN_ONLY),
    Row("GET", "/clients", "user (own) / admin (all) / agent (itself)",
        {"anon": "401", "A": "2xx", "B": "2xx", "admin": "2xx", "agentA": "2xx", "agentB": "2xx"}),
    # The object is the owner named in the body: only an admin creates clients for someone else.
    Row("POST", "/clients", "user (for themself) / admin (for anyone)",
        {"anon": "401", "A": "2xx/403", "B": "403/2xx", "admin": "2xx/2xx", "agentA": "403/403", "agentB": "403/403"}),
    Row("GET", "/clients/{client_id:int}", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("POST", "/clients/{client_id:int}/token", "owner / admin", _OWNER_ADMIN),
    Row("GET", "/clients/{client_id:int}/runs", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/clients/{client_id:int}/tree", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/clients/{client_id:int}/summary", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/clients/{client_id:int}/files", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/clients/{client_id:int}/history", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/clients/{client_id:int}/status", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/clients/{client_id:int}/config", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("PUT", "/clients/{client_id:int}/config", "owner / admin", _OWNER_ADMIN),
    Row("POST", "/clients/{client_id:int}/backup-now", "owner / admin", _OWNER_ADMIN),
    Row("GET", "/clients/{client_id:int}/logs", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/clients/{client_id:int}/policy", "owner / admin", _OWNER_ADMIN),
    Row("PUT", "/clients/{client_id:int}/policy", "owner / admin", _OWNER_ADMIN),
    Row("GET", "/agent/me", "agent", _AGENT_ONLY),
    Row("GET", "/agent/config", "agent", _AGENT_ONLY),
    Row("POST", "/agent/heartbeat", "agent", _AGENT_ONLY),
    Row("GET", "/agent/poll", "agent", _AGENT_ONLY),
    Row("POST", "/agent/logs", "agent", _AGENT_ONLY),
    Row("POST", "/runs", "agent", _AGENT_ONLY),
    Row("POST", "/runs/{run_id:int}/versions", "its agent (a running run of its client)", _AGENT_OWN_RUN),
    Row("POST", "/runs/{run_id:int}/deletions", "its agent (a running run of its client)", _AGENT_OWN_RUN),
    Row("POST", "/runs/{run_id:int}/finish", "its agent (a running run of its client)", _AGENT_OWN_RUN),
    Row("POST", "/chunks/missing", "agent (its user's chunks only)", _AGENT_ONLY),
    Row("POST", "/chunks", "agent (into its user's packs)", _AGENT_ONLY),
    Row("POST", "/chunks/read", "owner / admin / its agent", _OWNER_ADMIN_AGENT),
    Row("GET", "/users/{user_id:int}/policy", "that user / admin", _USER_SELF_403),
    Row("PUT", "/users/{user_id:int}/policy", "that user / admin", _USER_SELF_403),
    Row("GET", "/users/{user_id:int}/alerts", "that user / admin", _USER_SELF_404),
    Row("PUT", "/users/{user_id:int}/alerts", "that user / admin", _USER_SELF_404),
    Row("POST", "/alerts/test", "user (own webhook) / admin (+ global)", _ANY_USER),
)


def expected(row: Row, caller: str, target: str | None) -> str:
    cell = row.expect[caller]
    if "/" not in cell:
        return cell
    on_a, on_b = cell.split("/")
    return on_a if target == "A" else on_b


def row_targets(row: Row) -> tuple[str | None, ...]:
    return TARGETS if any("/" in v for v in row.expect.values()) else (None,)


def cells() -> Iterator[tuple[Row, str, str | None]]:
    for row in MATRIX:
        for caller, target in itertools.product(CALLERS, row_targets(row)):
            yield row, caller, target


def outcome(status: int) -> str:
    return "2xx" if 200 <= status < 300 else str(status)


def matrix_markdown() -> str:
    """The matrix as docs/security.md shows it (A = user A's objects, B = user B's)."""
    head = "| Route | Who may | anonymous | user A | user B | admin | agent of A | agent of B |"
    lines = [head, "|" + "---|" * 8]
    for row in MATRIX:
        route = row.route.replace(":int", "")
        cells_ = [row.expect[c].replace("2xx", "ok") for c in CALLERS]
        lines.append(f"| `{row.method} {route}` | {row.who} | " + " | ".join(cells_) + " |")
    return "\n".join(lines) + "\n"


# --- an in-process world -------------------------------------------------------------------------

_TEMPLATE: dict[str, Path] = {}


def _sqlite_template() -> Path:
    if "db" not in _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="bkup-sec-template-"))
        cat = Catalog(f"sqlite:///{folder / 'catalog.db'}")
        cat.upgrade()
        cat.dispose()
        _TEMPLATE["db"] = folder / "catalog.db"
    return _TEMPLATE["db"]


def cheap_passwords() -> None:
    """Argon2 at its cheapest: these tests log in a lot and test no password strength."""
    from argon2 import PasswordHasher

    from bkup.server import security

    security._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def make_settings(folder: Path, **changes: Any) -> Settings:
    return Settings(
        data_dir=str(folder / "data"), config_dir=str(folder / "config"),
        master_key=base64.b64encode(os.urandom(32)).decode(), gc_interval=0, **changes,
    )


@dataclass
class Party:
    name: str
    user_id: int
    token: str
    client_id: int
    agent_token: str
    run_id: int = 0
    chunk: str = ""  # a chunk id this user holds


@dataclass
class World:
    http: TestClient
    ctx: ServerContext
    parties: dict[str, Party] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def headers(self, caller: str) -> dict[str, str]:
        if caller == "anon":
            return {}
        if caller.startswith("agent"):
            return {"Authorization": f"Bearer {self.parties[caller[5:]].agent_token}"}
        return {"Authorization": f"Bearer {self.parties[caller].token}"}

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"


def _login(http: TestClient, name: str) -> str:
    r = http.post(f"{API}/auth/login", json={"user": name, "password": "password-" + name})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def _party(ctx: ServerContext, http: TestClient, name: str, *, admin: bool = False, seed: int = 0) -> Party:
    user = accounts.create_user(ctx, name, "password-" + name, is_admin=admin)
    token = _login(http, name)
    r = http.post(f"{API}/clients", json={"name": f"{name}-pc"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    p = Party(name, user.id, token, r.json()["id"], r.json()["token"])
    if admin:
        return p
    agent = {"Authorization": f"Bearer {p.agent_token}"}
    data = f"the data of {name} {seed}".encode()
    body = stream_header() + encode_chunk(data).to_bytes() + end_marker(1)
    assert http.post(f"{API}/chunks", content=body, headers=agent).status_code == 200
    p.chunk = chunk_id(data)
    run = http.post(f"{API}/runs", json={"trigger": "manual"}, headers=agent).json()
    entries = [{"path": "/home", "kind": "dir", "mode": 0o755},
               {"path": "/home/f.txt", "kind": "file", "size": len(data), "mode": 0o644, "chunks": [p.chunk]}]
    assert http.post(f"{API}/runs/{run['id']}/versions", json={"entries": entries}, headers=agent).status_code == 200
    http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=agent)
    # A second run stays open: the object of the /runs/{id}/... rows.
    p.run_id = http.post(f"{API}/runs", json={"trigger": "manual"}, headers=agent).json()["id"]
    return p


@contextmanager
def world(folder: Path) -> Iterator[World]:
    """Users A and B, each with one client, one committed run, one chunk and one open run; an admin with a client."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = make_settings(folder)
    target = Path(settings.data_dir) / "catalog.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_sqlite_template(), target)
    ctx = open_context(settings, catalog=Catalog(settings.effective_database_url), store=MemoryStore(), migrate=False)
    try:
        with TestClient(app=create_app(settings, context=ctx)) as http:
            w = World(http, ctx)
            w.parties["A"] = _party(ctx, http, "usera", seed=1)
            w.parties["B"] = _party(ctx, http, "userb", seed=2)
            w.parties["admin"] = _party(ctx, http, "root", admin=True)
            yield w
    finally:
        ctx.close()


# --- one request per cell --------------------------------------------------------------------------

Request = tuple[str, str, dict[str, Any]]  # method, url, httpx keyword arguments


def request_for(w: World, row: Row, target: str | None) -> Request:
    """A well-formed request of `row` on the object of `target`: only who asks decides the answer."""
    obj = w.parties[target] if target else w.parties["A"]
    route = row.route.replace("{client_id:int}", str(obj.client_id)).replace("{user_id:int}", str(obj.user_id))
    route = route.replace("{run_id:int}", str(obj.run_id))
    url = API + route
    body: dict[str, Any] = {}
    key = (row.method, row.route)
    if key == ("POST", "/auth/login"):
        body = {"json": {"user": "usera", "password": "password-usera"}}
    elif key == ("POST", "/users"):
        body = {"json": {"name": w.unique("newuser"), "password": "a-long-password"}}
    elif key == ("POST", "/clients"):
        body = {"json": {"name": w.unique("newpc"), "user": obj.name}}
    elif key == ("GET", "/clients/{client_id:int}/history"):
        url += "?path=/home/f.txt"
    elif key == ("PUT", "/clients/{client_id:int}/config"):
        body = {"json": {"paths": ["/srv"], "schedule": "every 1d"}}
    elif key in (("PUT", "/clients/{client_id:int}/policy"), ("PUT", "/users/{user_id:int}/policy")):
        body = {"json": {"keep_versions": 5}}
    elif key == ("PUT", "/users/{user_id:int}/alerts"):
        body = {"json": {"webhook": None}}
    elif key == ("POST", "/agent/heartbeat"):
        body = {"json": {"agent_version": "0", "hostname": "h", "os": "linux", "state": "idle"}}
    elif key == ("GET", "/agent/poll"):
        url += "?timeout=0"
    elif key == ("POST", "/agent/logs"):
        body = {"json": {"entries": [{"ts": "2026-01-01T00:00:00", "level": "info", "message": "hi"}]}}
    elif key == ("POST", "/runs"):
        body = {"json": {"trigger": "manual"}}
    elif key == ("POST", "/runs/{run_id:int}/versions"):
        body = {"json": {"entries": [{"path": "/new", "kind": "dir", "mode": 0o755}]}}
    elif key == ("POST", "/runs/{run_id:int}/deletions"):
        body = {"json": {"paths": ["/gone"]}}
    elif key == ("POST", "/runs/{run_id:int}/finish"):
        body = {"json": {"status": "ok", "stats": {}}}
    elif key == ("POST", "/chunks/missing"):
        body = {"json": {"ids": [w.parties["A"].chunk]}}
    elif key == ("POST", "/chunks"):
        data = os.urandom(64)
        body = {"content": stream_header() + encode_chunk(data).to_bytes() + end_marker(1)}
    elif key == ("POST", "/chunks/read"):
        body = {"json": {"client_id": obj.client_id, "ids": [obj.chunk]}}
    return row.method, url, body


def send(w: World, caller: str, req: Request):
    method, url, kw = req
    return w.http.request(method, url, headers=w.headers(caller), **kw)


def api_routes(app) -> set[tuple[str, str]]:
    """(method, path below /api/v1) of every route the app serves."""
    out = set()
    for r in app.routes:
        if not r.path.startswith(API):
            continue
        for m in getattr(r, "methods", set()) - {"OPTIONS", "HEAD"}:
            out.add((m, r.path[len(API):] or "/"))
    return out



# --- a real server on a loopback socket, in a thread --------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app, **uvicorn_kw: Any) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port; yields the base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on", **uvicorn_kw)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    scheme = "https" if uvicorn_kw.get("ssl_certfile") else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def live_world(folder: Path) -> Iterator[tuple[World, str]]:
    """`world()`, also served on a real socket (same context)."""
    with world(folder) as w, serve_in_thread(w.http.app) as url:
        yield w, url


# --- an object store that fails on purpose (borg's failing reader, for storage) -------------------


class FailingStore:
    """Wraps an ObjectStore: writes fail once `write_budget` bytes are spent (a full disk), reads fail while `fail_reads`.

    Failures are the StorageError a real store raises for ENOSPC / EIO
    (FsspecStore translates OSError the same way), raised in the middle of a
    write so the wrapped store must discard what it had started.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.url = getattr(inner, "url", "failing://")
        self.write_budget: int | None = None
        self.fail_reads = False
        self.faults = 0

    def describe(self) -> str:
        return self.inner.describe()

    def _full(self, key: str):
        from bkup.errors import StorageError

        self.faults += 1
        return StorageError(f"cannot write {key!r} in {self.url}: OSError: [Errno 28] No space left on device")

    def _spend(self, key: str, n: int) -> None:
        if self.write_budget is None:
            return
        if n > self.write_budget:
            self.write_budget = 0
            raise self._full(key)
        self.write_budget -= n

    def _read_check(self, key: str) -> None:
        if self.fail_reads:
            from bkup.errors import StorageError

            self.faults += 1
            raise StorageError(f"cannot read {key!r} in {self.url}: OSError: [Errno 5] Input/output error")

    def put(self, key: str, data: bytes) -> None:
        self._spend(key, len(data))
        self.inner.put(key, data)

    @contextmanager
    def open_write(self, key: str):
        outer = self

        class Writer(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, data) -> int:
                n = memoryview(data).nbytes
                outer._spend(key, n)
                return w.write(data)

        with self.inner.open_write(key) as w:
            yield Writer()

    def get(self, key: str) -> bytes:
        self._read_check(key)
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._read_check(key)
        return self.inner.get_range(key, start, length)

    def size(self, key: str) -> int:
        self._read_check(key)
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = ""):
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


@contextmanager
def world_on(folder: Path, store) -> Iterator[World]:
    """`world()` on a given object store (file, S3, a FailingStore around one)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = make_settings(folder)
    target = Path(settings.data_dir) / "catalog.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_sqlite_template(), target)
    ctx = open_context(settings, catalog=Catalog(settings.effective_database_url), store=store, migrate=False)
    try:
        with TestClient(app=create_app(settings, context=ctx)) as http:
            w = World(http, ctx)
            w.parties["A"] = _party(ctx, http, "usera", seed=1)
            yield w
    finally:
        ctx.close()

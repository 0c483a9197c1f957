"""`bkup prune`, `bkup check` and `bkup catalog rebuild` on the server's own database and storage."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from litestar.testing import TestClient
from typer.testing import CliRunner

from bkup.catalog import queries
from bkup.cli import main
from bkup.core.frames import encode_chunk, end_marker, stream_header
from bkup.core.hashing import chunk_id
from bkup.core.retention import Policy
from bkup.errors import BkupError
from bkup.server import accounts, policies
from bkup.server.app import create_app
from bkup.server.context import open_context
from bkup.settings import load_settings

main._register()
runner = CliRunner()
API = "/api/v1"


@pytest.fixture(autouse=True)
def fast_passwords(monkeypatch):
    """Argon2 at its cheapest: these tests test no password security."""
    from argon2 import PasswordHasher

    from bkup.server import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
    e.update(BKUP_DATA_DIR=str(tmp_path / "data"), BKUP_CONFIG_DIR=str(tmp_path / "config"),
             BKUP_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(), BKUP_GC_GRACE="0", COLUMNS="200")
    return e


def invoke(env, *args, code: int = 0):
    """In-process; a BkupError counts with the exit code `main()` gives it."""
    result = runner.invoke(main.app, list(args), env=env)
    got = result.exception.exit_code if isinstance(result.exception, BkupError) else result.exit_code
    assert got == code, (result.output, result.exception)
    return result


@pytest.fixture
def world(env):
    """alice-pc with three versions of /f (and /g once); alice's policy keeps 1 version, set after the runs."""
    settings = load_settings(env=env)
    ctx = open_context(settings)
    try:
        accounts.create_user(ctx, "alice", "password-alice")
        with TestClient(app=create_app(settings, context=ctx)) as http:
            token = http.post(f"{API}/auth/login", json={"user": "alice", "password": "password-alice"}).json()["token"]
            created = http.post(f"{API}/clients", json={"name": "alice-pc"}, headers={"Authorization": f"Bearer {token}"}).json()
            agent = {"Authorization": f"Bearer {created['token']}"}
            for i in range(3):
                body = os.urandom(50_000 + i)
                frames = stream_header() + encode_chunk(body).to_bytes() + end_marker(1)
                assert http.post(f"{API}/chunks", content=frames, headers=agent).status_code == 200
                run = http.post(f"{API}/runs", json={"trigger": "manual"}, headers=agent).json()
                entries = [{"path": "/f", "kind": "file", "size": len(body), "chunks": [chunk_id(body)]}, {"path": "/g", "kind": "dir"}]
                assert http.post(f"{API}/runs/{run['id']}/versions", json={"entries": entries}, headers=agent).status_code == 200
                http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=agent)
        ctx.after_run.wait()  # the runs' manifests, which the rebuild below reads
        me = accounts.admin_principal(ctx, "alice")
        policies.set_user_policy(ctx, me, me.user_id, Policy(keep_versions=1))
        yield ctx, created["id"]
    finally:
        ctx.close()


def versions(ctx, client_id) -> int:
    with ctx.catalog.session() as s:
        return len(queries.history(s, client_id, "/f"))


def test_unknown_user_or_client_touches_nothing_then_rebuild(env, world, tmp_path):
    ctx, client_id = world
    proc = subprocess.run([sys.executable, "-m", "bkup", "prune", "--user", "nobody"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "error: no user 'nobody'" in proc.stderr
    result = invoke(env, "prune", "--client", "nothing", code=1)
    assert "no client 'nothing'" in str(result.exception)
    assert versions(ctx, client_id) == 3
    assert not [k for k in ctx.store.list("manifests") if "prune-" in k]

    store = (tmp_path / "data" / "store").as_uri()
    target = f"sqlite:///{tmp_path}/rebuilt.db"
    out = invoke(env, "catalog", "rebuild", "--storage-url", store, "--database-url", target).stdout
    assert "rebuilt: 1 user(s)" in out and "1 client(s), 3 run(s)" in out and "user alice: new password" in out
    result = invoke(env, "catalog", "rebuild", "--storage-url", store, "--database-url", target, code=1)
    assert "not empty" in str(result.exception)
    rebuilt = open_context(load_settings(env=env, database_url=target, storage_url=store))
    try:
        assert versions(rebuilt, client_id) == 3
    finally:
        rebuilt.close()


def test_dry_run_prune_then_check(env, world, tmp_path):
    ctx, client_id = world
    assert "no problems" in invoke(env, "check").stdout
    assert "no problems" in invoke(env, "check", "--read-data-subset", "50").stdout
    invoke(env, "check", "--read-data", "--read-data-subset", "5", code=2)

    text = invoke(env, "prune", "--dry-run").stdout
    assert "client alice-pc (user alice): keep the current version of every path; the 1 newest version of each path" in text
    assert "  remove /f [file, run 1," in text and "  remove /f [file, run 2," in text
    assert "would remove 2 version(s); would free 2 chunk(s)" in text and "dry run: nothing was changed" in text
    assert versions(ctx, client_id) == 3
    plan = json.loads(invoke(env, "prune", "--dry-run", "--json").stdout)
    assert plan["dry_run"] is True and plan["removed"] == 2 and plan["freed_chunks"] == 2
    done = json.loads(invoke(env, "prune", "--json").stdout)
    assert done["dry_run"] is False and done["removed"] == 2
    assert done["clients"][0]["removals"] == plan["clients"][0]["removals"]
    assert done["gc"]["chunks_deleted"] == 2 and done["gc"]["packs_deleted"] == 2
    assert versions(ctx, client_id) == 1
    assert "removed 0 version(s)" in invoke(env, "prune").stdout

    (pack,) = [p for p in (tmp_path / "data" / "store" / "packs").rglob("*") if p.is_file()]
    pack.unlink()
    out = invoke(env, "check", code=3).stdout
    assert "missing_pack" in out and "affected files:" in out and "alice-pc:/f (run 3-now)" in out
    report = json.loads(invoke(env, "check", "--read-data", "--json", code=3).stdout)
    assert report["ok"] is False and report["affected"][0]["path"] == "/f"

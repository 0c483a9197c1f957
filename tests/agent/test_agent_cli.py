"""`bkup agent`, `login`, `ls`, `restore` through typer against a live server: options, token resolution, output."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime

import pytest
import typer
from agent_helpers import make_tree, restored, snapshot
from typer.testing import CliRunner

from bkup.agent.api import ApiClient
from bkup.cli import agent as agent_cli
from bkup.cli import login as login_cli
from bkup.cli import ls as ls_cli
from bkup.cli import restore as restore_cli
from bkup.errors import AuthError, NotFound, UsageError


def make_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(agent_cli.app, name="agent")
    app.command("login")(login_cli.login)
    app.command("ls")(ls_cli.ls)
    app.command("restore")(restore_cli.restore)
    return app


@pytest.fixture
def cli(tmp_path):
    app = make_app()
    env = {"BKUP_CONFIG_DIR": str(tmp_path / "config"), "BKUP_STATE_DIR": str(tmp_path / "state"),
           "BKUP_SERVER": "", "BKUP_TOKEN": "", "BKUP_CONFIG": ""}
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env_extra: dict | None = None, ok: bool = True):
        result = runner.invoke(app, list(args), input=input, env={**env, **(env_extra or {})})
        if ok and result.exit_code != 0:
            raise AssertionError(f"exit {result.exit_code}: {result.output}\n{result.exception!r}")
        return result

    return run


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    make_tree(root)
    return root


def test_agent_once_json_then_ls_and_restore_with_the_agent_token(cli, account, src, tmp_path):
    out = cli("agent", "--server", account.server, "--token", account.agent_token, "--path", str(src), "--once", "--json")
    first = json.loads(out.stdout)
    assert first["run"] == 1 and first["status"] == "ok"
    assert first["files_changed"] == 8 and first["bytes_uploaded"] > 0
    assert {"files_deleted", "bytes_scanned", "bytes_new", "files_seen", "dirs_seen", "errors", "warnings"} <= set(first)
    ident = tmp_path / "state" / "agent.json"
    assert stat.S_IMODE(os.stat(ident).st_mode) == 0o600

    # The stored agent token serves ls and restore on this machine: no --token needed.
    docs = str(src.resolve() / "docs")
    listing = json.loads(cli("ls", "--server", account.server, "--client", account.client_name, docs, "--json").stdout)
    a = next(e for e in listing if e["name"] == "a.txt")
    assert (a["kind"], a["size"], a["mode"]) == ("file", 6000, 0o644) and a["mtime"].startswith("2020-09-13T12:26:40.123456")
    assert {e["name"] for e in listing} == {"a.txt", "copy.bin", "deep"}

    one = json.loads(cli("ls", "--server", account.server, "--client", account.client_name, docs + "/a.txt", "--json").stdout)
    assert [e["name"] for e in one] == ["a.txt"]

    text = cli("ls", "--server", account.server, "--client", account.client_name, docs).stdout
    assert "a.txt" in text and "deep/" in text and "-rw-r--r--" in text

    target = tmp_path / "restore"
    out = cli("restore", "--server", account.server, "--client", account.client_name, "--target", str(target), "--json")
    summary = json.loads(out.stdout)
    assert summary["files"] == 8 and summary["errors"] == []
    assert snapshot(restored(target, src)) == snapshot(src)

    again = cli("agent", "--server", account.server, "--path", str(src), "--once", "--json")
    assert json.loads(again.stdout)["files_changed"] == 0


def test_agent_registers_with_user_and_password_and_reuses_its_token(cli, account, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_text("x")
    out = cli("agent", "--server", account.server, "--user", account.user, "--password-stdin", "--name", "box1",
              "--path", str(src), "--once", "--json", input=account.password + "\n")
    assert json.loads(out.stdout)["files_changed"] == 1
    ident = json.loads((tmp_path / "state" / "agent.json").read_text())
    assert ident["client_name"] == "box1" and ident["server"] == account.server

    # Same state dir: the stored token is reused, no password read.
    out = cli("agent", "--server", account.server, "--user", account.user, "--password-stdin", "--name", "box1",
              "--path", str(src), "--once", "--json", input="not-read\n")
    assert json.loads(out.stdout)["run"] == 2

    # A reinstalled machine (empty state dir) takes its client back: new token, the old one is revoked.
    other_state = tmp_path / "state2"
    out = cli("agent", "--server", account.server, "--user", account.user, "--password-stdin", "--name", "box1",
              "--path", str(src), "--once", "--json", "--state-dir", str(other_state), input=account.password + "\n")
    assert json.loads(out.stdout)["run"] == 3
    with ApiClient(account.server, ident["token"]) as old, pytest.raises(AuthError):
        old.me()
    # ... and the first state dir now says so clearly.
    r = cli("agent", "--server", account.server, "--path", str(src), "--once", ok=False)
    assert isinstance(r.exception, AuthError) and "register again" in str(r.exception)


def test_wrong_password_and_usage_errors(cli, account, tmp_path):
    r = cli("agent", "--server", account.server, "--user", account.user, "--password-stdin", "--path", str(tmp_path),
            "--once", input="wrong-password\n", ok=False)
    assert isinstance(r.exception, AuthError) and "wrong user name or password" in str(r.exception)
    r = cli("agent", "--server", account.server, "--user", account.user, "--path", str(tmp_path), "--once", ok=False)
    assert isinstance(r.exception, UsageError) and "--password-stdin" in str(r.exception)
    r = cli("agent", "--server", account.server, "--path", str(tmp_path), "--once", ok=False)
    assert isinstance(r.exception, UsageError) and "--token" in str(r.exception)
    r = cli("agent", "--token", account.agent_token, "--path", str(tmp_path), "--once", ok=False)
    assert isinstance(r.exception, UsageError) and "--server" in str(r.exception)
    r = cli("agent", "--server", account.server, "--token", account.user_token, "--path", str(tmp_path), "--once", ok=False)
    assert isinstance(r.exception, UsageError) and "not an agent token" in str(r.exception)


def test_login_stores_a_private_token_that_ls_and_restore_use(cli, account, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_text("v1")
    cli("agent", "--server", account.server, "--token", account.agent_token, "--path", str(src), "--once",
        "--state-dir", str(tmp_path / "agent-state"))
    between = datetime.now()  # local time, as a user types it
    (src / "f").write_text("version 2")
    cli("agent", "--server", account.server, "--token", account.agent_token, "--path", str(src), "--once",
        "--state-dir", str(tmp_path / "agent-state"))

    # No agent identity in this state dir, no token: a clear error.
    r = cli("ls", "--server", account.server, "--client", account.client_name, ok=False)
    assert isinstance(r.exception, AuthError) and "bkup login" in str(r.exception)

    out = cli("login", "--server", account.server, "--user", account.user, "--password-stdin", input=account.password + "\n")
    assert account.user in out.stdout
    creds = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600

    path = str(src.resolve())
    listing = json.loads(cli("ls", "--server", account.server, "--client", account.client_name, path, "--json").stdout)
    assert [(e["name"], e["size"]) for e in listing] == [("f", 9)]
    old = json.loads(cli("ls", "--server", account.server, "--client", account.client_name, path, "--run", "1", "--json").stdout)
    assert [(e["name"], e["size"]) for e in old] == [("f", 2)]
    at = json.loads(cli("ls", "--server", account.server, "--client", account.client_name, path,
                        "--at", between.isoformat(), "--json").stdout)
    assert [(e["name"], e["size"]) for e in at] == [("f", 2)]

    target = tmp_path / "t"
    cli("restore", "--server", account.server, "--client", account.client_name, "--run", "1", "--path", path, "--target", str(target))
    assert (restored(target, src) / "f").read_text() == "v1"

    r = cli("restore", "--server", account.server, "--client", account.client_name, "--run", "1", "--at", "2026-01-01",
            "--target", str(tmp_path / "t2"), ok=False)
    assert isinstance(r.exception, UsageError)
    r = cli("ls", "--server", account.server, "--client", account.client_name, "--at", "2000-01-01", ok=False)
    assert isinstance(r.exception, NotFound)
    r = cli("ls", "--server", account.server, "--client", "nope", ok=False)
    assert isinstance(r.exception, NotFound) and "nope" in str(r.exception)
    r = cli("ls", "--server", account.server, "--client", account.client_name, "--at", "yesterday", ok=False)
    assert isinstance(r.exception, UsageError)

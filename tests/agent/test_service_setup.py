"""The setup page of an unconfigured agent (a real subprocess), and the unconfigured agent without it."""

from __future__ import annotations

import re
import socket

import httpx
import pytest
from service_helpers import Agents, runs, wait_for

from bkup.agent.api import ApiClient


@pytest.fixture
def agents(tmp_path):
    a = Agents(tmp_path)
    yield a
    a.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_setup_page_registers_once_then_shows_only_status(agents, account, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello")
    port = _free_port()
    agent = agents.start("--setup-ui-listen", f"127.0.0.1:{port}", env={"BKUP_SETUP_UI": "true"})
    code = wait_for(lambda: re.search(r"setup code ([A-Z0-9]{4}-[A-Z0-9]{4})", agent.log()), 30, "the setup code in the log").group(1)
    assert f"http://127.0.0.1:{port}/" in agent.log()
    page = f"http://127.0.0.1:{port}"
    form = httpx.get(page + "/", timeout=10)
    assert form.status_code == 200 and 'name="code"' in form.text and 'name="password"' in form.text
    assert "frame-ancestors" in form.headers["content-security-policy"] or form.headers["x-frame-options"] == "DENY"

    fields = {"server": account.server, "user": account.user, "password": account.password, "name": "setup-pc",
              "paths": str(src)}
    wrong = httpx.post(page + "/setup", data={**fields, "code": "AAAA-AAAA"}, timeout=10)
    assert wrong.status_code == 403 and "Wrong setup code" in wrong.text
    ok = httpx.post(page + "/setup", data={**fields, "code": code.lower()}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert "setup-pc" in ok.text and 'name="password"' not in ok.text

    with ApiClient(account.server, account.user_token) as user:
        client = user.list_clients(name="setup-pc")[0]
        assert user.client_config(client.id).paths == [str(src)]
        first = wait_for(lambda: [r for r in runs(user, client.id) if r.status != "running"], 30, "the first backup")[0]
        assert first.trigger == "setup" and first.status == "ok"

    # From now on: status only, and no new credentials, not even with the (used) code.
    again = httpx.post(page + "/setup", data={**fields, "code": code, "server": "http://evil.example"}, timeout=10)
    assert again.status_code == 409 and "no new credentials" in again.text
    shown = httpx.get(page + "/", timeout=10).text
    assert 'name="code"' not in shown and "setup-pc" in shown
    status = httpx.get(page + "/status", timeout=10).json()
    assert status["configured"] is True and status["client"] == "setup-pc"
    assert "password" not in str(status).lower() and "token" not in str(status).lower()
    rc, _ = agent.stop()
    assert rc == 0


def test_unconfigured_agent_without_setup_page_exits_2_naming_the_settings(agents):
    agent = agents.start("--no-setup-ui")
    assert agent.proc.wait(60) == 2
    text = agent.log()
    for setting in ("BKUP_SERVER", "BKUP_TOKEN", "BKUP_USER", "BKUP_PASSWORD", "BKUP_PATHS"):
        assert setting in text, text

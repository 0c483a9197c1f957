"""The agent as a service (a real subprocess against a live server): continuous backup from file events, idle, SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from service_helpers import Agents, local_tree, logs, runs, server_tree, wait_for


@pytest.fixture
def agents(tmp_path):
    a = Agents(tmp_path)
    yield a
    a.cleanup()


def test_file_events_keep_the_server_tree_equal_to_the_folder(agents, account, tmp_path):
    src = tmp_path / "src"
    (src / "docs" / "old").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a1")
    (src / "docs" / "old" / "x.txt").write_text("x")
    (src / "b.txt").write_text("b")
    missing = tmp_path / "not-there"
    with account.user_api() as user, account.agent_api() as api:
        user.put_client_config(account.client_id, _config(paths=[str(src), str(missing)], exclude=["*.tmp"]))
        agent = agents.start("--server", account.server, "--token", account.agent_token)
        first = wait_for(lambda: _settled(api, account.client_id), 20, "the start-up full scan")[0]
        assert first.trigger == "schedule"
        wait_for(lambda: server_tree(api, account.client_id, src) == local_tree(src), 10, "the first backup")

        # Create, modify, rename (file and directory), delete, chmod, and an excluded file.
        (src / "new.txt").write_text("new")
        (src / "docs" / "a.txt").write_text("a2 longer")
        os.rename(src / "b.txt", src / "docs" / "b-renamed.txt")
        os.rename(src / "docs" / "old", src / "docs" / "moved")
        (src / "docs" / "moved" / "inside.txt").write_text("in")
        (src / "deep" / "er").mkdir(parents=True)
        (src / "deep" / "er" / "f.bin").write_bytes(os.urandom(300_000))
        (src / "scratch.tmp").write_text("not backed up")
        shutil.rmtree(src / "deep" / "er")
        (src / "gone.txt").write_text("soon gone")
        (src / "gone.txt").unlink()
        os.chmod(src / "new.txt", 0o600)
        last_change = time.monotonic()

        expected = local_tree(src, skip=lambda rel: rel.endswith(".tmp"))
        wait_for(lambda: server_tree(api, account.client_id, src) == expected, 10, "the server's tree to equal the folder")
        assert time.monotonic() - last_change < 10
        later = runs(api, account.client_id)
        assert {r.trigger for r in later[1:]} == {"watch"}
        assert all(r.status == "ok" for r in later[1:]), later  # watch runs never look at the missing path

        # The missing monitored path: a warning in the client's log on the server; the rest was backed up.
        wait_for(lambda: any(str(missing) in e.message and e.level == "warning" for e in logs(api, account.client_id)), 10,
                 "the missing path's warning on the server")
        first = runs(api, account.client_id)[0]
        assert first.status == "partial" and str(missing) in (first.error or "")

        # Idle: the agent's own reads (and its state dir) wake nothing.
        settled = len(wait_for(lambda: _settled(api, account.client_id), 10, "runs to settle"))
        time.sleep(1.5)
        assert len(runs(api, account.client_id)) == settled

        status = json.loads(agent.log_path.parent.joinpath("agent-state", "status.json").read_text())
        assert status["state"] == "idle" and status["watching"] == [str(src.resolve())]

        rc, took = agent.stop()
        assert rc == 0 and took < 5, agent.log()
        assert agent.status()["state"] == "stopped"
        assert all(r.status != "running" for r in runs(api, account.client_id))


def _settled(api, client_id):
    rs = runs(api, client_id)
    return rs if rs and all(r.status != "running" for r in rs) else None


def _config(**kw):
    from bkup import protocol

    return protocol.ClientConfig(**kw)

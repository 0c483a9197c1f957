"""Pre-backup commands, "backup now", configuration changes and SIGTERM, with the agent as a real subprocess."""

from __future__ import annotations

import shlex
import sys
import time

import pytest
from service_helpers import Agents, logs, runs, server_tree, wait_for

from bkup import protocol
from bkup.core.paths import fs_to_wire


@pytest.fixture
def agents(tmp_path):
    a = Agents(tmp_path)
    yield a
    a.cleanup()


def _finished(api, client_id, n):
    rs = runs(api, client_id)
    return rs if len(rs) >= n and all(r.status != "running" for r in rs) else None


def test_commands_backup_now_and_a_config_change_without_restart(agents, account, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("k")
    dump = src / "db.sql"
    commands = [
        # Writes a dump into the monitored folder: it must be in the same run's backup.
        protocol.PreCommand(command=f"{sys.executable} -c \"open({str(dump)!r}, 'w').write('dump')\"", timeout_s=30),
        protocol.PreCommand(command="echo boom-output >&2; exit 3", shell=True, timeout_s=30),
        protocol.PreCommand(command="sleep 30", timeout_s=1),
    ]
    with account.user_api() as user, account.agent_api() as api:
        user.put_client_config(account.client_id, protocol.ClientConfig(paths=[str(src)], commands=commands, watch=False))
        agent = agents.start("--server", account.server, "--token", account.agent_token)
        first = wait_for(lambda: _finished(api, account.client_id, 1), 20, "the start-up run")[0]

        assert first.status == "partial"
        assert "exit 3" in first.error and "killed at its timeout" in first.error
        at_first = server_tree(api, account.client_id, src, run=first.seq)
        assert fs_to_wire(str(dump.resolve()).encode()) in at_first
        started, finished = _times(first)
        assert finished - started < 10  # the hanging command was killed after 1 s

        messages = wait_for(lambda: _messages(api, account.client_id, "boom-output"), 10, "the failing command's output")
        assert messages[0].level == "error" and messages[0].run_seq == first.seq and "exit 3" in messages[0].message
        assert _messages(api, account.client_id, "killed at its timeout")

        # "Backup now" starts a run within 5 s.
        t0 = time.monotonic()
        user.backup_now(account.client_id)
        wait_for(lambda: len(runs(api, account.client_id)) >= 2, 5, "the run asked for with backup-now")
        assert time.monotonic() - t0 < 5
        second = wait_for(lambda: _finished(api, account.client_id, 2), 15, "the manual run to finish")[1]
        assert second.trigger == "manual"

        # A new configuration on the server is used by the next run, without a restart: no more commands, and
        # the dump is excluded now, so the full scan its new scope calls for records it as gone.
        user.put_client_config(account.client_id, protocol.ClientConfig(paths=[str(src)], exclude=["*.sql"], watch=False))
        third = wait_for(lambda: _finished(api, account.client_id, 3), 15, "the run after the configuration change")[2]
        assert third.status == "ok" and third.error is None
        tree = server_tree(api, account.client_id, src)
        assert list(tree) == [fs_to_wire(str((src / "keep.txt").resolve()).encode())]
        assert agent.status()["config_version"] == 2

        rc, took = agent.stop()
        assert rc == 0 and took < 5


def test_sigterm_during_a_hanging_command_ends_the_run_cleanly(agents, account, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    hang = protocol.PreCommand(command="sleep 60", timeout_s=600)
    with account.user_api() as user, account.agent_api() as api:
        user.put_client_config(account.client_id, protocol.ClientConfig(paths=[str(src)], commands=[hang]))
        agent = agents.start("--server", account.server, "--token", account.agent_token)
        wait_for(lambda: agent.status().get("state") == "running", 20, "the run to start")
        time.sleep(0.3)
        rc, took = agent.stop()
        assert rc == 0 and took < 5, agent.log()
        run = runs(api, account.client_id)[0]
        assert run.status == "failed" and "stopping" in run.error
        assert agent.status()["state"] == "stopped"


def test_no_server_commands_refuses_them_with_a_warning(agents, account, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    marker = tmp_path / "ran"
    cmd = protocol.PreCommand(command=f"touch {shlex.quote(str(marker))}")
    with account.user_api() as user, account.agent_api() as api:
        user.put_client_config(account.client_id, protocol.ClientConfig(paths=[str(src)], commands=[cmd], watch=False))
        agent = agents.start("--server", account.server, "--token", account.agent_token, "--no-server-commands")
        run = wait_for(lambda: _finished(api, account.client_id, 1), 20, "the start-up run")[0]
        assert run.status == "ok" and not marker.exists()
        wait_for(lambda: _messages(api, account.client_id, "--no-server-commands"), 10, "the warning on the server")
        agent.stop()


def _messages(api, client_id, text):
    return [e for e in logs(api, client_id) if text in e.message]


def _times(run):
    from datetime import datetime

    return datetime.fromisoformat(run.started_at).timestamp(), datetime.fromisoformat(run.finished_at).timestamp()

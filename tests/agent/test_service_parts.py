"""The service's parts on their own: watcher, commands, log queue, configuration guard, status, dirty-path runs."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import httpx
import msgspec
import pytest
from agent_helpers import backup
from service_helpers import wait_for

from bkup import protocol
from bkup.agent.api import ApiClient
from bkup.agent.commands import OUTPUT_LIMIT, RunCancelled, run_command
from bkup.agent.config import ConfigKeeper, LocalDefaults, check_config
from bkup.agent.logship import LogQueue, ShipHandler
from bkup.agent.signals import Backoff
from bkup.agent.status import StatusFile, describe, read_status
from bkup.agent.watcher import Watcher
from bkup.core.paths import fs_to_wire
from bkup.errors import ServerError
from bkup.settings import load_settings

# --- watcher ---------------------------------------------------------------------------------------


@pytest.fixture
def watcher():
    w = Watcher(quiet_period=0.3, max_delay=1.0)
    yield w
    w.stop()


def _batch(w: Watcher, timeout: float = 5) -> list[bytes]:
    return wait_for(lambda: w.take(), timeout, "a batch of dirty paths")


def test_watcher_coalesces_changes_and_ignores_reads_and_excluded_paths(watcher, tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "old.txt").write_text("old")
    state = root / ".state"
    state.mkdir()
    w = Watcher(quiet_period=0.3, max_delay=1.0, skip=[os.fsencode(state)])
    try:
        assert w.update([os.fsencode(root)], ["*.tmp", "cache/"]) == []
        time.sleep(0.2)
        # Reading (what a backup does), listing, stat: no event.
        for _ in range(3):
            (root / "sub" / "old.txt").read_bytes()
            os.listdir(root / "sub")
        (root / "x.tmp").write_text("excluded")
        (root / "cache").mkdir()
        (root / "cache" / "blob").write_text("excluded, below an excluded dir")
        (state / "state.db").write_text("the agent's own")
        time.sleep(0.6)
        assert w.take(force=True) == []

        (root / "a.txt").write_text("a")
        (root / "sub" / "old.txt").write_text("changed")
        os.rename(root / "a.txt", root / "sub" / "b.txt")
        assert w.take() == []  # not quiet yet
        got = _batch(w)
        r = os.fsencode(root)
        assert set(got) == {r + b"/a.txt", r + b"/sub/old.txt", r + b"/sub/b.txt"}
        assert w.take(force=True) == []
    finally:
        w.stop()


def test_watcher_max_delay_overflow_and_put_back(watcher, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    watcher.update([os.fsencode(root)])
    time.sleep(0.1)
    # Events that never pause still give a batch after max_delay.
    t0 = time.monotonic()
    got: list[bytes] = []
    while not got and time.monotonic() - t0 < 5:
        (root / "busy").write_text(str(time.monotonic()))
        time.sleep(0.05)
        got = watcher.take()
    assert got == [os.fsencode(root / "busy")] and 0.9 < time.monotonic() - t0 < 3

    watcher.put_back([b"/x/y"])
    assert watcher.ready_in() == 0 and watcher.take() == [b"/x/y"]

    # A kernel queue overflow asks for a full scan and drops what was pending.
    (root / "f").write_text("f")
    wait_for(lambda: watcher.pending, 5, "an event")
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    watcher._observer._inotify_fd.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
    # (watchdog < 7: seen at once, through the hook; watchdog >= 7: an event from its dispatch thread)
    wait_for(watcher.take_overflow, 5, "the overflow to be reported")
    assert watcher.take_overflow() is False
    assert watcher.pending == 0

    small = Watcher(quiet_period=0.3, max_delay=1.0, max_dirty=3)
    try:
        small.update([os.fsencode(root)])
        time.sleep(0.1)
        for i in range(5):
            (root / f"many-{i}").write_text("m")
        wait_for(lambda: small.take_overflow(), 5, "too many paths to become a full scan")
    finally:
        small.stop()


def test_watcher_picks_up_a_root_created_later(watcher, tmp_path):
    root = tmp_path / "later"
    assert watcher.update([os.fsencode(root)]) == [] and watcher.watched == []
    root.mkdir()
    watcher.update([os.fsencode(root)])
    assert watcher.watched == [os.fsencode(root)]
    (root / "f").write_text("f")
    assert _batch(watcher) == [os.fsencode(root / "f")]


# --- commands ------------------------------------------------------------------------------------------


def test_command_without_shell_is_not_expanded_and_output_is_captured():
    r = run_command(protocol.PreCommand(command="echo '$HOME' `x` ; exit 1"))
    assert r.ok and r.output == "$HOME `x` ; exit 1"
    r = run_command(protocol.PreCommand(command="echo out; echo err >&2; exit 4", shell=True))
    assert not r.ok and r.exit_code == 4 and r.output.splitlines() == ["out", "err"]
    assert r.summary().endswith("exit 4")
    r = run_command(protocol.PreCommand(command="/no/such/program --x"))
    assert not r.ok and "cannot start" in r.summary()
    env = run_command(protocol.PreCommand(command="env"))
    assert "BKUP_TOKEN" not in env.output


def test_command_output_is_bounded_keeping_head_and_tail():
    r = run_command(protocol.PreCommand(command="seq 1 100000", timeout_s=30))
    assert r.ok and len(r.output) < OUTPUT_LIMIT + 100
    assert r.output.startswith("1\n2\n3\n") and r.output.endswith("99999\n100000") and "left out" in r.output


def test_hanging_command_group_is_killed_at_its_timeout(tmp_path):
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    r = run_command(protocol.PreCommand(command=f"sleep 60 & echo $! > {pidfile}; wait", shell=True, timeout_s=1))
    assert r.timed_out and not r.ok and "timeout" in r.summary()
    assert time.monotonic() - t0 < 5
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), 5, "the background child to be killed with the group")


def test_stop_cancels_a_running_command():
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(RunCancelled):
        run_command(protocol.PreCommand(command="sleep 60", timeout_s=600), stop=stop)
    assert time.monotonic() - t0 < 4


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# --- log queue ---------------------------------------------------------------------------------------------


def test_log_queue_is_bounded_and_says_how_many_it_dropped(tmp_path):
    q = LogQueue(tmp_path / "logs.db", max_entries=5)
    for i in range(8):
        q.put(protocol.LogEntry(ts=f"2026-01-01T00:00:0{i}Z", level="warning", message=f"m{i}"))
    assert len(q) == 5 and q.dropped == 3
    last, dropped, entries = q.peek(limit=2)
    assert "3 log line(s) dropped" in entries[0].message and [e.message for e in entries[1:]] == ["m3", "m4"]
    q.remove(last, dropped)
    _, dropped, entries = q.peek()
    assert dropped == 0 and [e.message for e in entries] == ["m5", "m6", "m7"]
    q.close()
    again = LogQueue(tmp_path / "logs.db", max_entries=5)  # survives a restart
    assert len(again) == 3


def test_ship_handler_takes_warnings_and_report_lines_scrubbed(tmp_path):
    q = LogQueue(tmp_path / "logs.db")
    handler = ShipHandler(q, run_seq=lambda: 7)
    logger = logging.getLogger("bkup.agent.test-ship")
    report = logging.getLogger("bkup.agent.report")
    local = logging.getLogger("bkup.agent.logship")
    for lg in (logger, report, local):
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        logger.info("not shipped")
        logger.warning("cannot read /x: token=bkup_a_secretsecret")
        report.info("command ok")
        local.warning("about shipping itself")
    finally:
        for lg in (logger, report, local):
            lg.removeHandler(handler)
    _, _, entries = q.peek()
    assert [(e.level, e.run_seq) for e in entries] == [("warning", 7), ("info", 7)]
    assert "secretsecret" not in entries[0].message and entries[1].message == "command ok"


# --- configuration guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"paths": ["relative/dir"]}, "paths[0]"),
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "every 5s"}, "schedule"),
        ({"exclude": ["[z-a]"]}, "exclude"),
        ({"commands": [{"command": "true", "timeout_s": -5}]}, "commands[0].timeout_s"),
        ({"commands": [{"command": " "}]}, "commands[0].command"),
        ({"bandwidth_limit_kbps": 0}, "bandwidth_limit_kbps"),
    ],
)
def test_agent_refuses_a_bad_config_from_the_server_and_keeps_the_last_good(tmp_path, caplog, bad, field):
    keeper = ConfigKeeper(LocalDefaults(paths=("/local",)), tmp_path)
    assert keeper.offer(protocol.ClientConfig(paths=["/srv"], exclude=["*.tmp"], include=["keep.tmp"], version=1))
    good = keeper.current
    assert good.paths == ("/srv",) and good.patterns == ("*.tmp", "!keep.tmp") and good.paths_from_server
    fake = msgspec.convert({"paths": ["/srv"], **bad, "version": 2}, protocol.ClientConfig)
    with caplog.at_level(logging.WARNING, logger="bkup.agent.config"):
        assert keeper.offer(fake) is False
    assert keeper.current is good and keeper.seen_version == 2 and keeper.problem.startswith(field)
    assert any("refused" in r.getMessage() and field in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match=field.replace("[", r"\[").replace("]", r"\]")):
        check_config(fake)
    # The last good configuration survives a restart of the agent.
    assert ConfigKeeper(LocalDefaults(), tmp_path).current.paths == ("/srv",)


def test_local_paths_until_the_server_names_some(tmp_path):
    keeper = ConfigKeeper(LocalDefaults(paths=("/local",), exclude=("*.o",)))
    keeper.offer(protocol.ClientConfig(schedule="0 3 * * *"))
    assert keeper.current.paths == ("/local",) and keeper.current.patterns == ("*.o",)
    keeper.offer(protocol.ClientConfig(paths=["/srv/"], version=1))
    assert keeper.current.paths == ("/srv",) and keeper.current.patterns == ()


def test_agent_config_ignores_fields_a_newer_server_adds():
    body = {"paths": ["/x"], "version": 3, "future_field": True}
    transport = httpx.MockTransport(lambda req: httpx.Response(200, json=body))
    with ApiClient("http://server.test", "t", transport=transport) as api:
        assert api.agent_config().paths == ["/x"]
    bad = httpx.MockTransport(lambda req: httpx.Response(200, json={"paths": "not a list"}))
    with ApiClient("http://server.test", "t", transport=bad) as api, pytest.raises(ServerError):
        api.agent_config()


# --- status, backoff, settings ---------------------------------------------------------------------------


def test_status_file_and_its_reading(tmp_path):
    assert read_status(tmp_path) is None
    sf = StatusFile(tmp_path)
    sf.update(state="idle", client="pc", server="http://s", last_run={"seq": 3, "trigger": "watch", "status": "ok"})
    st = read_status(tmp_path)
    assert st["running"] is True and st["pid"] == os.getpid()
    assert "agent running" in describe(st) and "last run: 3 (watch) ok" in describe(st)
    data = json.loads((tmp_path / "status.json").read_text())
    data["pid"] = 2**22 + 12345  # no such process
    (tmp_path / "status.json").write_text(json.dumps(data))
    assert read_status(tmp_path)["running"] is False


def test_backoff_grows_with_jitter_up_to_its_cap():
    b = Backoff(base=1, cap=8, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b = Backoff(base=1, cap=8, rng=lambda: 0.0)
    assert [b.next_delay() for _ in range(4)] == [0.5, 1, 2, 4]
    b.reset()
    assert b.next_delay() == 0.5


def test_agent_settings_from_the_environment():
    s = load_settings(env={"BKUP_PATHS": "/a:/b,/c", "BKUP_EXCLUDE": "*.tmp,cache/", "BKUP_QUIET_PERIOD": "0.5",
                           "BKUP_MAX_DELAY": "2m", "BKUP_SETUP_UI": "false", "BKUP_PASSWORD": "pw", "BKUP_CONFIG": ""})
    assert s.paths == ("/a", "/b", "/c") and s.exclude == ("*.tmp", "cache/")
    assert (s.quiet_period, s.max_delay, s.setup_ui) == (0.5, 120.0, False)
    assert s.masked()["password"] == "***"


# --- dirty-path runs -----------------------------------------------------------------------------------------


def test_dirty_path_run_walks_only_those_paths_and_detects_deletions_only_there(api, account, state_dir, tmp_path):
    src = tmp_path / "src"
    for d in ("a", "b"):
        (src / d).mkdir(parents=True)
        (src / d / "f.txt").write_text(d)
    (src / "a" / "g.txt").write_text("g")
    full = backup(api, account.client_id, state_dir, [src])
    assert full.stats.files_changed == 3

    # Changes in both folders, but only a/ is reported dirty.
    (src / "a" / "f.txt").write_text("a, changed")
    (src / "a" / "g.txt").unlink()
    (src / "a" / "new").mkdir()
    (src / "a" / "new" / "n.txt").write_text("n")
    (src / "b" / "f.txt").unlink()
    r = os.fsencode(src.resolve())
    dirty = [r + b"/a/f.txt", r + b"/a/g.txt", r + b"/a/new", r + b"/elsewhere/../a/new/n.txt", b"/outside/the/roots"]
    watch = backup(api, account.client_id, state_dir, [src], trigger="watch", only=dirty)
    assert watch.run.trigger == "watch" and watch.run.status == "ok"
    assert (watch.stats.files_changed, watch.stats.files_deleted) == (2, 1)
    assert watch.stats.files_seen == 2  # a/f.txt and a/new/n.txt: nothing else was looked at
    current = {v.path for page in api.files(account.client_id, fs_to_wire(r)) for v in page.entries}
    assert fs_to_wire(r + b"/b/f.txt") in current  # not dirty: its deletion waits for a full scan
    assert fs_to_wire(r + b"/a/g.txt") not in current and fs_to_wire(r + b"/a/new/n.txt") in current

    # A dirty root that vanished is not a deletion of everything below it (an unmounted disk).
    gone = tmp_path / "gone"
    (gone / "d").mkdir(parents=True)
    (gone / "d" / "x").write_text("x")
    backup(api, account.client_id, state_dir, [gone])
    (gone / "d" / "x").unlink()
    (gone / "d").rmdir()
    gone.rmdir()
    result = backup(api, account.client_id, state_dir, [gone], trigger="watch", only=[os.fsencode(gone.resolve())])
    assert result.stats.files_deleted == 0


def test_before_walk_problems_make_the_run_partial(api, account, state_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    seen = []

    def hook(run):
        seen.append(run.seq)
        (src / "dump.sql").write_text("dumped by the hook")
        return ["pre-backup command `pg_dump`: exit 1"]

    result = backup(api, account.client_id, state_dir, [src], trigger="schedule", before_walk=hook)
    assert seen == [result.run.seq] and result.run.status == "partial"
    assert result.run.error == "pre-backup command `pg_dump`: exit 1" and result.stats.files_changed == 2


# --- the service's choice of the next run ------------------------------------------------------------------


def test_schedule_coalescing_and_backoff_decide_the_next_run(tmp_path):
    from datetime import datetime, timedelta

    from bkup.agent.runner import Job, ServiceApi
    from bkup.agent.service import Service
    from bkup.settings import Settings

    svc = Service(Settings(state_dir=str(tmp_path / "state"), retry_max_delay=30), local=LocalDefaults(paths=("/x",)))
    svc.api = ServiceApi("http://127.0.0.1:9", "t", stop=svc.stop, on_start=lambda info: None)
    try:
        svc.keeper.offer(protocol.ClientConfig(paths=["/x"], watch=False, schedule="every 1h", version=1))
        svc._config_stale = False
        assert svc._next_job() is None  # the start-up scan is requested by the loop; nothing else is due
        assert timedelta(minutes=59) < svc._next_full_at - datetime.now() <= timedelta(hours=1)
        assert 0 < svc._idle_timeout() <= 60

        svc._next_full_at = datetime.now() - timedelta(seconds=1)
        assert svc._next_job() == Job("schedule")
        # Requests made meanwhile coalesce into one follow-up, with the most telling trigger.
        svc.request_full("manual")
        svc.request_full("watch")
        assert svc._next_job() == Job("manual")

        # A failure delays the next attempt (backoff) until the server answers again.
        svc._failed("full scan failed: cannot reach server")
        assert svc._next_job() is None and svc.heartbeat().state == "error"
        svc.server_back()
        assert svc._next_job() == Job("manual")
    finally:
        svc.api.close()


def test_the_bandwidth_limit_paces_uploads_of_frames_made_while_sent():
    from bkup.agent.runner import ServiceApi
    from bkup.core.frames import FrameBatch, encode_chunk

    def handler(request: httpx.Request) -> httpx.Response:
        b"".join(request.stream)
        return httpx.Response(200, json={"received": 1, "stored": 1, "duplicates": 0, "bytes_stored": 1})

    api = ServiceApi("http://bkup.test", "tok", transport=httpx.MockTransport(handler), stop=threading.Event(),
                     on_start=lambda info: None)
    frame = encode_chunk(os.urandom(50_000))  # incompressible: ~50 KB on the wire
    api.limit_kbps = 200  # ~0.25 s for it
    t0 = time.monotonic()
    api.upload(FrameBatch(iter([frame]), limit=1 << 20))
    assert time.monotonic() - t0 >= 0.2
    api.limit_kbps = None
    t0 = time.monotonic()
    api.upload(FrameBatch(iter([frame]), limit=1 << 20))
    assert time.monotonic() - t0 < 0.2

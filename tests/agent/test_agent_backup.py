"""Backup runs against a real server: what is sent, what is skipped, what survives failures; restore round trips."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from agent_helpers import SpyApi, backup, make_tree, rand, restored, snapshot

from bkup.agent import backup as backup_mod
from bkup.agent import commits
from bkup.agent.api import MissingChunksError
from bkup.agent.backup import BUFFER_BYTES
from bkup.agent.restore import list_entries, restore_tree
from bkup.agent.state import StateCache
from bkup.core.chunker import MAX_SIZE
from bkup.core.paths import fs_to_wire, is_under
from bkup.errors import ServerError

MiB = 1024 * 1024


@pytest.fixture
def spy(account):
    with SpyApi(account.server, account.agent_token) as client:
        yield client


def test_backup_then_restore_reproduces_the_tree(api, account, state_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    before = snapshot(src)
    result = backup(api, account.client_id, state_dir, [src])
    assert result.run.status == "ok" and result.run.seq == 1
    assert result.stats.files_changed == 8 == result.stats.files_seen  # regular files only
    assert result.stats.bytes_uploaded > 0
    # copy.bin equals big.bin: its chunks were sent once.
    assert result.stats.bytes_new < result.stats.bytes_scanned - 3 * MiB + MiB

    target = tmp_path / "restore"
    out = restore_tree(api, account.client_id, target)
    assert out.errors == []
    assert out.files == 8 and out.symlinks == 2
    assert snapshot(restored(target, src)) == before
    # The root's ancestors came back as directories too.
    assert (restored(target, src)).parent.is_dir()


def test_second_run_with_nothing_changed_sends_nothing(spy, account, state_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    backup(spy, account.client_id, state_dir, [src])
    spy.calls.clear()
    spy.sent_entries.clear()
    second = backup(spy, account.client_id, state_dir, [src])
    assert second.run.seq == 2 and second.run.status == "ok"
    s = second.stats
    assert (s.files_changed, s.files_deleted, s.bytes_scanned, s.bytes_new, s.bytes_uploaded) == (0, 0, 0, 0, 0)
    # Nothing under the root is sent again (an ancestor like /tmp may have changed meanwhile).
    root = fs_to_wire(os.fsencode(src.resolve()))
    assert [e.path for e in spy.sent_entries if is_under(e.path, root)] == []
    assert spy.calls["upload"] == 0 and spy.calls["missing"] == 0


def test_a_changed_file_sends_only_its_new_chunks(spy, account, state_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(rand(2 * MiB, seed=i))
    backup(spy, account.client_id, state_dir, [src])

    # Touched only: read again, committed (new mtime), nothing uploaded.
    os.utime(src / "f0", ns=(1, 1))
    spy.frames_uploaded = 0
    touched = backup(spy, account.client_id, state_dir, [src])
    assert touched.stats.files_changed == 1
    assert touched.stats.bytes_scanned == 2 * MiB
    assert touched.stats.bytes_uploaded == 0 and spy.frames_uploaded == 0

    # New content: exactly that file's bytes are new.
    (src / "f1").write_bytes(rand(2 * MiB, seed=99))
    changed = backup(spy, account.client_id, state_dir, [src])
    assert changed.stats.files_changed == 1
    assert changed.stats.bytes_scanned == changed.stats.bytes_new == 2 * MiB
    assert 0 < changed.stats.bytes_uploaded <= 2 * MiB + 4096


def test_one_byte_inserted_in_a_64_mib_file_uploads_at_most_3_chunks(spy, account, state_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = rand(64 * MiB, seed=7)
    (src / "big").write_bytes(data)
    first = backup(spy, account.client_id, state_dir, [src])
    assert first.stats.bytes_new == 64 * MiB

    (src / "big").write_bytes(data[: 32 * MiB] + b"!" + data[32 * MiB :])
    spy.frames_uploaded = 0
    second = backup(spy, account.client_id, state_dir, [src])
    assert second.stats.files_changed == 1
    assert 1 <= spy.frames_uploaded <= 3
    assert second.stats.bytes_new <= 3 * MAX_SIZE

    target = tmp_path / "restore"
    assert restore_tree(spy, account.client_id, target).errors == []
    assert (restored(target, src) / "big").read_bytes() == data[: 32 * MiB] + b"!" + data[32 * MiB :]


def test_the_chunk_buffer_stays_bounded(spy, account, state_dir, tmp_path, monkeypatch):
    uploaders = []

    class Recording(backup_mod.Uploader):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            uploaders.append(self)

    monkeypatch.setattr(backup_mod, "Uploader", Recording)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for i in range(25):
            f.write(rand(4 * MiB, seed=100 + i))
    result = backup(spy, account.client_id, state_dir, [src])
    assert result.stats.bytes_new == 100 * MiB
    (up,) = uploaders
    assert 0 < up.max_pending_bytes <= BUFFER_BYTES
    assert spy.calls["upload"] >= 100 * MiB // BUFFER_BYTES


def test_a_readers_groups_start_at_an_eighth_and_double_up_to_the_full_size():
    class Recorder:
        group_bytes = 8000

        def __init__(self):
            self.sizes = []

        def claim(self, cid):
            return True

        def reserve(self, n, flush_own):
            pass

        def submit(self, group):
            self.sizes.append(group.size)

    up = Recorder()
    group = backup_mod._OpenGroup(up)
    for i in range(100):
        group.add_chunk(f"{i:064x}", b"x" * 500)
    group.flush()
    assert up.sizes == [1000, 2000, 4000] + [8000] * 5 + [3000]
    assert sum(up.sizes) == 100 * 500


@pytest.mark.slow
def test_agent_peak_rss_stays_low_on_a_big_file(account, tmp_path):
    """A separate process backs up 256 MiB of incompressible data; its peak RSS is measured."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for i in range(64):
            f.write(rand(4 * MiB, seed=1000 + i))
    script = textwrap.dedent(
        f"""
        import re
        from bkup.agent.api import ApiClient
        from bkup.agent.backup import run_backup
        from bkup.agent.state import StateCache
        api = ApiClient({account.server!r}, {account.agent_token!r})
        with StateCache.open({str(tmp_path / "state")!r}, server=api.server, client_id={account.client_id}) as cache:
            r = run_backup(api, [{str(src)!r}], [], cache)
        assert r.stats.bytes_new == 256 * 1024 * 1024, r.stats
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
        print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    peak_mib = int(out.stdout.strip()) / 1024
    assert peak_mib < 200, f"agent peak RSS {peak_mib:.0f} MiB"


def test_deleted_paths_are_reported_and_old_runs_keep_them(spy, account, state_dir, tmp_path):
    src = tmp_path / "src"
    (src / "gone-dir" / "sub").mkdir(parents=True)
    (src / "gone-dir" / "sub" / "x").write_text("x")
    (src / "gone-dir" / "y").write_text("y")
    (src / "gone.txt").write_text("z")
    (src / "stays.txt").write_text("s")
    (src / "gone-link").symlink_to("stays.txt")
    backup(spy, account.client_id, state_dir, [src])

    for p in ("gone-dir/sub/x", "gone-dir/y", "gone.txt", "gone-link"):
        os.unlink(src / p)
    os.rmdir(src / "gone-dir" / "sub")
    os.rmdir(src / "gone-dir")
    second = backup(spy, account.client_id, state_dir, [src])
    assert second.stats.files_deleted == 3  # regular files; dirs and symlinks are closed too
    assert spy.calls["delete"] == 1

    latest = list_entries(spy, account.client_id, fs_to_wire(os.fsencode(src.resolve())))
    assert sorted(e.name for e in latest.entries) == ["stays.txt"]
    old = list_entries(spy, account.client_id, fs_to_wire(os.fsencode(src.resolve())), run=1)
    assert sorted(e.name for e in old.entries) == ["gone-dir", "gone-link", "gone.txt", "stays.txt"]
    with StateCache.open(state_dir, server=spy.server, client_id=account.client_id) as cache:
        assert not [p for p in cache.paths() if "gone" in p]


def test_excludes_and_the_agents_own_state_dir_are_left_out(api, account, tmp_path):
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "junk").write_text("j")
    (src / "keep.txt").write_text("k")
    (src / "skip.tmp").write_text("t")
    state_dir = src / ".bkup-state"
    result = backup(api, account.client_id, state_dir, [src], ["cache/", "*.tmp"])
    assert result.stats.files_seen == 1
    names = {e.name for e in list_entries(api, account.client_id, fs_to_wire(os.fsencode(src.resolve()))).entries}
    assert names == {"keep.txt"}


def test_a_file_that_keeps_changing_is_skipped_not_stored_torn(api, account, state_dir, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "log").write_bytes(rand(600_000, seed=3))
    (src / "calm").write_text("calm")
    real = backup_mod.iter_chunks_fd
    reads = []

    def appending(fd, *size):
        reads.append(fd)
        for i, chunk in enumerate(real(fd, *size)):
            if i == 0 and os.fstat(fd).st_size >= 600_000:
                with open(src / "log", "ab") as f:
                    f.write(b"more")
            yield chunk

    monkeypatch.setattr(backup_mod, "iter_chunks_fd", appending)
    result = backup(api, account.client_id, state_dir, [src])
    assert len(reads) == 3  # calm once, log twice
    assert result.run.status == "partial" and result.stats.errors == 1
    assert any("log" in w and "changed while being read" in w for w in result.warnings)
    names = {e.name for e in list_entries(api, account.client_id, fs_to_wire(os.fsencode(src.resolve()))).entries}
    assert names == {"calm"}


def test_a_file_that_changed_once_is_read_again(api, account, state_dir, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"a" * 1000)
    real = backup_mod.iter_chunks_fd
    state = {"changed": False}

    def change_once(fd, *size):
        for chunk in real(fd, *size):
            if not state["changed"]:
                state["changed"] = True
                (src / "f").write_bytes(b"b" * 2000)
            yield chunk

    monkeypatch.setattr(backup_mod, "iter_chunks_fd", change_once)
    result = backup(api, account.client_id, state_dir, [src])
    assert result.run.status == "ok" and result.stats.files_changed == 1
    target = tmp_path / "t"
    restore_tree(api, account.client_id, target)
    assert (restored(target, src) / "f").read_bytes() == b"b" * 2000


def test_vanished_and_unreadable_files(api, account, state_dir, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("vanishes", "locked", "fine"):
        (src / name).write_text(name)
    real = backup_mod._open_for_backup

    def opener(path):
        if path.endswith(b"/vanishes"):
            os.unlink(path)
        if path.endswith(b"/locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(backup_mod, "_open_for_backup", opener)
    result = backup(api, account.client_id, state_dir, [src])
    assert result.run.status == "partial" and result.stats.errors == 1
    assert any("locked" in w and "Permission denied" in w for w in result.warnings)
    assert any("vanishes" in w for w in result.warnings)
    assert result.run.error and "locked" in result.run.error
    names = {e.name for e in list_entries(api, account.client_id, fs_to_wire(os.fsencode(src.resolve()))).entries}
    assert names == {"fine"}


def test_a_failure_mid_run_marks_the_run_failed_and_keeps_what_was_committed(account, state_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(rand(300_000, seed=i))

    class Failing(SpyApi):
        def upload(self, frames):
            if self.calls["upload"] >= 1:
                raise ServerError("boom")
            return super().upload(frames)

    # A small buffer: the first upload (and its commit) succeed, the second fails.
    with Failing(account.server, account.agent_token) as api:
        with pytest.raises(ServerError, match="boom"):
            backup(api, account.client_id, state_dir, [src], buffer_bytes=700_000)
        runs = api.runs(account.client_id)
        assert runs[0].status == "failed" and "boom" in (runs[0].error or "")
    with SpyApi(account.server, account.agent_token) as api:
        result = backup(api, account.client_id, state_dir, [src])
        assert result.run.status == "ok" and 0 < result.stats.files_changed < 5
        target = tmp_path / "t"
        assert restore_tree(api, account.client_id, target).files == 5


def test_a_commit_refused_for_missing_chunks_reads_the_file_again(account, state_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(rand(10_000, seed=1))
    (src / "b").write_bytes(rand(10_000, seed=2))

    class Forgetful(SpyApi):
        def commit(self, run_id, entries):
            files = [e for e in entries if e.kind == "file"]
            if self.calls["commit"] == 0 and files:
                self.calls["commit"] += 1
                raise MissingChunksError("lost", [files[0].chunks[0]])
            return super().commit(run_id, entries)

    with Forgetful(account.server, account.agent_token) as api:
        result = backup(api, account.client_id, state_dir, [src])
        assert result.run.status == "ok"
        assert result.stats.files_changed == 2
        assert result.stats.bytes_scanned == 30_000  # one file read twice
        target = tmp_path / "t"
        assert restore_tree(api, account.client_id, target).files == 2


def test_a_failed_commit_fails_the_run_and_the_cache_keeps_only_what_the_server_answered(account, state_dir, tmp_path, monkeypatch):
    """Commits go out from a commit thread, two at a time; the state cache must still follow the server."""
    monkeypatch.setattr(commits, "BATCH_ENTRIES", 20)
    src = tmp_path / "src"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(30):
            (src / f"d{d}" / f"f{i}").write_bytes(rand(100, seed=d * 100 + i))

    class Failing(SpyApi):
        answered: list[str] = []

        def commit(self, run_id, entries):
            if self.calls["commit"] == 2:
                self.calls["commit"] += 1
                raise ServerError("server error 500: the catalog is down")
            result = super().commit(run_id, entries)
            self.answered += [e.path for e in entries]
            return result

    with Failing(account.server, account.agent_token) as api:
        with pytest.raises(ServerError, match="catalog is down"):
            backup(api, account.client_id, state_dir, [src])
        assert api.calls["commit"] >= 3
    with StateCache.open(state_dir, server=account.server, client_id=account.client_id) as cache:
        cached = set(cache.paths())
    assert cached <= set(Failing.answered)  # never ahead of the server
    assert len(cached) >= 40  # the two batches answered before the failure were applied

    with SpyApi(account.server, account.agent_token) as api:
        again = backup(api, account.client_id, state_dir, [src])
        assert again.run.status == "ok"
        assert cached.isdisjoint(e.path for e in api.sent_entries)  # what the cache holds is not sent again
        out = restore_tree(api, account.client_id, tmp_path / "t")
    assert out.errors == [] and out.files == 150
    assert snapshot(restored(tmp_path / "t", src)) == snapshot(src)

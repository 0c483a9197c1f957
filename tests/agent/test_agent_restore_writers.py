"""Restore with several writer threads: many files over many directories and fetch batches come back whole,
damage stays with its file, and a failure in any thread stops the restore with nothing half-written left behind."""

from __future__ import annotations

import os
import random
import threading

import pytest
from agent_helpers import backup, rand, restored, snapshot
from test_agent_restore_safety import FakeServer, no_temp_files

from bkup.agent import restore as restore_mod
from bkup.agent import targetdir
from bkup.agent.restore import restore_tree
from bkup.errors import ServerError

MTIME = 1_600_000_000_123_456_789


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def small_batches(monkeypatch) -> None:
    """Batches of about five 1000-byte chunks and at most 16 files, and a dir-fd cache of 4: many hand-offs and evictions."""
    monkeypatch.setattr(restore_mod, "FETCH_BYTES", 5000)
    monkeypatch.setattr(restore_mod, "BATCH_FILES", 16)
    monkeypatch.setattr(targetdir, "DIR_FD_CACHE", 4)


@pytest.fixture
def writer_threads(monkeypatch) -> set[str]:
    """Names of the threads that wrote file data."""
    names: set[str] = set()
    real = restore_mod._write_all

    def spy(fd: int, data: bytes) -> None:
        names.add(threading.current_thread().name)
        real(fd, data)

    monkeypatch.setattr(restore_mod, "_write_all", spy)
    return names


class CountingProgress:
    def __init__(self) -> None:
        self.files = self.bytes = 0
        self.threads: set[str] = set()

    def start(self, title: str, *, total_files: int | None = None, total_bytes: int | None = None) -> None:
        pass

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        self.threads.add(threading.current_thread().name)
        self.files += files
        self.bytes += bytes

    def finish(self) -> None:
        pass


def spread_tree(fake: FakeServer, dirs: int = 30, per_dir: int = 10, seed: int = 7) -> dict[str, bytes]:
    """Files of 0 to 20,000 bytes in 1000-byte chunks, in `dirs` directories with a subdirectory each; path → bytes."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for d in range(dirs):
        fake.dir(f"/d{d:02}", mode=0o750)
        for f in range(per_dir):
            path = f"/d{d:02}/{'sub/' if f % 2 else ''}f{f:02}"
            if f == 1:
                fake.dir(f"/d{d:02}/sub")
            data = rng.randbytes(rng.choice([0, 1, 700, 3000, 20_000]))
            fake.file(path, data, piece=1000, mode=0o640, mtime_ns=MTIME + d)
            files[path] = data
    fake.entries.sort(key=lambda e: e["path"])  # the server lists in path order
    return files


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def writers_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("bkup-restore-")]


def test_files_over_many_dirs_and_batches_come_back_byte_identical(fake, tmp_path, small_batches, writer_threads):
    files = spread_tree(fake)
    progress = CountingProgress()
    target = tmp_path / "target"
    result = restore_tree(fake.api(), 1, target, progress=progress)
    assert result.errors == [] and result.files == len(files) == 300 and result.dirs == 60
    for path, data in files.items():
        st = os.stat(target / path.lstrip("/"))
        assert (target / path.lstrip("/")).read_bytes() == data, path
        assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == MTIME + int(path[2:4])
    assert os.stat(target / "d07").st_mode & 0o777 == 0o750
    assert no_temp_files(target)
    assert len(fake.reads) > 50  # the 20,000-byte files spanned several batches
    assert len(writer_threads) > 1 and "MainThread" not in writer_threads
    # Progress is reported from the calling thread only, and adds up.
    assert progress.threads == {"MainThread"}
    assert (progress.files, progress.bytes) == (300, sum(map(len, files.values()))) == (result.files, result.bytes)
    assert writers_alive() == []


def test_damage_in_a_threaded_restore_fails_only_its_files(fake, tmp_path, small_batches):
    files = spread_tree(fake, dirs=10)
    lost = fake.file("/e/lost", b"gone")  # one chunk, not on the server
    absent = fake.file("/e/long-absent", rand(20_000, seed=2), piece=1000)  # spans batches, a middle chunk not on the server
    bad = fake.file("/e/long-bad", rand(20_000, seed=3), piece=1000)  # spans batches, a middle chunk that fails verification
    fake.file("/e/zz-after", b"after the damage")
    fake.absent.update({lost[0], absent[11]})
    fake.lies[bad[13]] = b"x" * 1000
    target = tmp_path / "target"
    result = restore_tree(fake.api(), 1, target)

    assert result.files == len(files) + 1
    absent_error, bad_error, lost_error = sorted(result.errors)
    assert absent_error == f"'/e/long-absent': damaged, not restored: chunk {absent[11]} is not stored on the server"
    assert bad_error.startswith(f"'/e/long-bad': damaged, not restored: chunk {bad[13]} failed verification (")
    assert lost_error == f"'/e/lost': damaged, not restored: chunk {lost[0]} is not stored on the server"
    assert sorted(p.name for p in (target / "e").iterdir()) == ["zz-after"]
    assert (target / "e" / "zz-after").read_bytes() == b"after the damage"
    assert all((target / p.lstrip("/")).read_bytes() == data for p, data in files.items())
    assert no_temp_files(target)


def test_an_unexpected_error_in_a_writer_stops_the_restore_and_cleans_up(fake, tmp_path, small_batches, monkeypatch):
    spread_tree(fake)
    real = restore_mod._apply_meta

    def apply_meta(fd, v, as_root):
        if v.path == "/d12/f04":
            raise RuntimeError("boom")
        real(fd, v, as_root)

    monkeypatch.setattr(restore_mod, "_apply_meta", apply_meta)
    fds = open_fds()
    with pytest.raises(RuntimeError, match="boom"):
        restore_tree(fake.api(), 1, tmp_path / "target")
    assert no_temp_files(tmp_path / "target")
    assert not (tmp_path / "target" / "d12" / "f04").exists()
    assert open_fds() == fds and writers_alive() == []


def test_a_failure_in_the_main_thread_while_writers_run_leaves_no_temp_files(fake, tmp_path, small_batches):
    spread_tree(fake)
    fake.file("/zz/long", rand(50_000, seed=4), piece=1000)  # still being written when the listing breaks
    api = fake.api()
    list_files = api.files

    def files(*args, **kw):
        yield from list_files(*args, **kw)
        if kw.get("chunks"):
            raise ServerError("the listing broke off")

    api.files = files
    fds = open_fds()
    with pytest.raises(ServerError, match="broke off"):
        restore_tree(api, 1, tmp_path / "target")
    assert no_temp_files(tmp_path / "target") and not (tmp_path / "target" / "zz" / "long").exists()
    assert open_fds() == fds and writers_alive() == []


def test_many_empty_and_identical_files_are_batched_without_empty_requests(fake, tmp_path, small_batches):
    for i in range(100):
        fake.file(f"/empty/{i:03}", b"")
    for i in range(100):
        fake.file(f"/same/{i:03}", b"one content")
    target = tmp_path / "target"
    result = restore_tree(fake.api(), 1, target)
    assert result.errors == [] and result.files == 200
    assert all(p.read_bytes() == b"" for p in (target / "empty").iterdir())
    assert all(p.read_bytes() == b"one content" for p in (target / "same").iterdir())
    assert len(list((target / "same").iterdir())) == 100
    assert fake.reads and all(len(ids) == 1 for ids in fake.reads)  # never a request for nothing
    assert no_temp_files(target)


def test_a_real_tree_round_trips_through_small_batches(api, account, state_dir, tmp_path, monkeypatch):
    src = tmp_path / "src"
    rng = random.Random(11)
    for d in range(30):
        folder = src / f"dir{d:02}" / ("nested" if d % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(10):
            (folder / f"file{f}.bin").write_bytes(rng.randbytes(rng.choice([0, 10, 5000, 60_000])))
            os.utime(folder / f"file{f}.bin", ns=(MTIME, MTIME + f))
        if d % 10 == 0:  # about 3 chunks each, spanning several 256 KiB batches
            (folder / "big.bin").write_bytes(rand(3 * 1024 * 1024 + d, seed=d))
    before = snapshot(src)
    assert backup(api, account.client_id, state_dir, [src]).run.status == "ok"

    monkeypatch.setattr(restore_mod, "FETCH_BYTES", 256 * 1024)
    monkeypatch.setattr(restore_mod, "BATCH_FILES", 32)
    monkeypatch.setattr(targetdir, "DIR_FD_CACHE", 4)
    target = tmp_path / "restore"
    result = restore_tree(api, account.client_id, target)
    assert result.errors == [] and result.files == 303
    assert snapshot(restored(target, src)) == before
    assert no_temp_files(target)


def test_one_writer_restores_the_same(fake, tmp_path, small_batches, monkeypatch, writer_threads):
    monkeypatch.setattr(restore_mod, "WRITERS", 1)
    files = spread_tree(fake, dirs=5)
    target = tmp_path / "target"
    assert restore_tree(fake.api(), 1, target).errors == []
    assert all((target / p.lstrip("/")).read_bytes() == data for p, data in files.items())
    assert len(writer_threads) == 1


"""One backup run: walk, compare with the state cache, chunk what changed, upload what the server lacks, commit, finish.

The run is a small pipeline (docs/performance.md), so that both cores work:

- the calling thread walks the tree, looks entries up in the state cache in
  bulk, hands changed files to the readers in work batches (many small files
  or a few large ones per batch), and commits entries;
- READERS threads each take whole work batches: open, read, cut, hash; every
  chunk id is claimed once per run, and new chunks collect into groups of
  about a quarter of the buffer;
- UPLOADERS threads (agent.uploads) each take a group: ask which ids the
  server lacks, compress only those, upload them as one frame stream, and
  report the group's entries back as committable; commits go out from a
  commit thread (agent.commits).

zstd, BLAKE3, FastCDC, reads and sockets all release the GIL, so the threads
overlap; every queue is bounded, and all buffered chunk bytes together never
exceed `buffer_bytes`.

Invariants: a file is never committed torn (it is re-read once if it changed
while being read, then skipped with a warning); an entry is committed only
after every chunk it names was uploaded or reported present (by whichever
group claimed it); the cache follows the server, never leads it.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bkup import protocol
from bkup.agent.api import ApiClient
from bkup.agent.commits import Committer, Item
from bkup.agent.progress import NullProgress, Progress
from bkup.agent.scanner import ScanEntry, ScanReport, dirty_paths, resolve_roots, scan
from bkup.agent.state import CachedEntry, StateCache
from bkup.agent.uploads import BUFFER_BYTES, Aborted, Group, Uploader, put_or_abort
from bkup.core.chunker import ensure_native, iter_chunks_fd
from bkup.core.frames import DEFAULT_LEVEL
from bkup.core.hashing import chunk_id, content_id
from bkup.core.paths import fs_to_wire, is_under
from bkup.core.patterns import Excludes
from bkup.errors import UsageError

log = logging.getLogger("bkup.agent")

SEEN_BATCH = 5000
LOOKUP_BATCH = 512  # scanned entries looked up in the state cache with one query
READERS = 2  # threads that read, cut and hash (each takes whole work batches)
WORK_FILES = 256  # files in one reader work batch...
WORK_BYTES = 16 * 1024 * 1024  # ...or about this many bytes, whichever comes first

Sink = Callable[[str, bytes], None]


@dataclass
class BackupResult:
    run: protocol.RunInfo
    stats: protocol.RunStats
    warnings: list[str] = field(default_factory=list)


# --- reading one file -----------------------------------------------------------------


class FileChanged(Exception):
    """The file's size, mtime or ctime moved while it was read, or it was not a regular file any more."""


@dataclass(frozen=True, slots=True)
class FileContent:
    chunk_ids: list[str]
    stat: os.stat_result  # fstat at open; equal (size, mtime, ctime) to the one after reading


def _open_for_backup(fs_path: bytes) -> int:
    # O_NONBLOCK: a FIFO swapped in since the walk must not hang the run (no effect on regular files).
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(fs_path, flags | noatime)
        except PermissionError:
            pass  # O_NOATIME needs ownership or CAP_FOWNER
    return os.open(fs_path, flags)


def chunk_file(fs_path: bytes, sink: Sink) -> FileContent:
    """Read a file once through the chunker, give each (id, bytes) to `sink`, return the ids and stat.

    Never holds more than the chunker's window. Raises FileChanged if the file
    changed while being read (the caller decides whether to retry) and OSError
    if it cannot be opened or read.
    """
    fd = _open_for_backup(fs_path)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise FileChanged("not a regular file any more")
        ids: list[str] = []
        total = 0
        for raw in iter_chunks_fd(fd, before.st_size):  # the module global: tests wrap it; checked below
            cid = chunk_id(raw)
            ids.append(cid)
            total += len(raw)
            sink(cid, raw)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (
        total != before.st_size
        or (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (before.st_size, before.st_mtime_ns, before.st_ctime_ns)
    ):
        raise FileChanged("changed while being read")
    return FileContent(ids, before)


# --- reading ---------------------------------------------------------------------------------


class _OpenGroup:
    """A reader's open group: it fills across work batches and goes out when full or when its reader runs out of work.

    Flushed at the end of every work batch instead, many small files made
    groups of ~1 MiB ("small": 196 uploads, 196 `/chunks/missing` requests and
    196 packs for 200 MB), and the fixed cost per upload (a pack file with two
    fsyncs, a catalog transaction, a request) was a quarter of the server's CPU.
    """

    def __init__(self, uploader: Uploader) -> None:
        self.uploader = uploader
        self.group = Group()
        # A reader's first group is an eighth of the full size, and each next one twice the last:
        # the server starts verifying, storing and committing while the readers fill their first
        # full groups. Its commits, one after the other (one SQLite writer), bound a first
        # backup of many small files, and now begin sooner (docs/performance.md).
        self.limit = max(1, uploader.group_bytes // 8)

    def flush(self) -> None:
        if self.group.chunks or self.group.items:
            full, self.group = self.group, Group()
            self.limit = min(2 * self.limit, self.uploader.group_bytes)
            self.uploader.submit(full)

    def add_chunk(self, cid: str, raw: bytes) -> None:
        """Take a new chunk (unless claimed already); a full group goes out first, also in the middle of a file."""
        if cid in self.group.chunks or not self.uploader.claim(cid):
            return
        # In the middle of a file too, so that a large file is uploaded as several groups in
        # parallel while it is still being read (checked only between files, a 1 GiB file grew
        # one buffer-sized group at a time, uploaded alone). Its entry joins its last group; the
        # committer holds it until the earlier groups are done too.
        if self.group.size >= self.limit:
            self.flush()
        self.uploader.reserve(len(raw), self.flush)
        self.group.chunks[cid] = raw
        self.group.size += len(raw)

    def add_item(self, item: Item) -> None:
        self.group.items.append(item)
        if self.group.size >= self.limit:
            self.flush()


class _Readers:
    """READERS threads that turn work batches of changed files into groups for the uploader."""

    def __init__(self, run: _Run, threads: int = READERS) -> None:
        self.run = run
        self.work: queue.Queue[list[ScanEntry] | None] = queue.Queue(maxsize=2 * threads)
        self._threads = [threading.Thread(target=self._work, name=f"bkup-read-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        up = self.run.uploader
        group = _OpenGroup(up)
        try:
            while not up.abort.is_set():
                try:
                    batch = self.work.get_nowait()
                except queue.Empty:
                    group.flush()  # about to wait for work: what this reader holds goes out now
                    try:
                        batch = self.work.get(timeout=0.1)
                    except queue.Empty:
                        continue
                if batch is None:
                    group.flush()
                    return
                self.run.read_batch(batch, group)
        except Aborted:
            pass
        except BaseException as exc:
            with up._lock:
                if up.failure is None:
                    up.failure = exc
            up.abort.set()

    def stop(self) -> None:
        for t in self._threads:
            t.join()

    def close(self) -> None:
        for _ in self._threads:
            put_or_abort(self.work, None, self.run.uploader.abort)
        for t in self._threads:
            while t.is_alive():
                t.join(0.1)
                if self.run.uploader.abort.is_set():
                    break


# --- the run --------------------------------------------------------------------------------


def _cached_from_scan(e: ScanEntry, content: str) -> CachedEntry:
    return CachedEntry(e.kind, e.size, e.mtime_ns, e.ctime_ns, e.inode, e.mode, e.uid, e.gid, content)


def _unchanged(e: ScanEntry, c: CachedEntry | None) -> bool:
    if c is None:
        return False
    facts = (e.kind, e.size, e.mtime_ns, e.ctime_ns, e.inode, e.mode, e.uid, e.gid)
    if facts != (c.kind, c.size, c.mtime_ns, c.ctime_ns, c.inode, c.mode, c.uid, c.gid):
        return False
    return e.kind != "symlink" or c.content == fs_to_wire(e.link_target or b"")


class _Run:
    """The state of one run in progress."""

    def __init__(self, api: ApiClient, run: protocol.RunInfo, cache: StateCache, progress: Progress, level: int, buffer_bytes: int) -> None:
        self.api = api
        self.run = run
        self.cache = cache
        self.progress = progress
        self.stats = protocol.RunStats()
        self.report = ScanReport()
        self._report_lock = threading.Lock()
        self.committer = Committer(api, run.id, cache)
        self.uploader = Uploader(api, level=level, buffer_bytes=buffer_bytes)
        self.readers: _Readers | None = None
        self._batch: list[ScanEntry] = []
        self._batch_bytes = 0
        self._scanned = 0  # bytes read by the readers (under _report_lock)
        self._shown = 0

    # -- the walking thread

    def walk(self, roots: list[bytes], excludes: Excludes, skip: frozenset[bytes], only: list[bytes] | None = None) -> None:
        self.cache.begin_walk()
        self.readers = _Readers(self)
        pending: list[ScanEntry] = []
        for e in scan(roots, excludes, self.report, skip=skip, only=only):
            pending.append(e)
            if len(pending) >= LOOKUP_BATCH:
                self._classify(pending)
                pending = []
        self._classify(pending)
        self._hand_over()

    def _classify(self, entries: list[ScanEntry]) -> None:
        if not entries:
            return
        paths = [e.path for e in entries]
        self.cache.mark_seen(paths)
        cached = self.cache.get_many(paths)
        files = 0
        for e in entries:
            if e.kind == "dir":
                self.stats.dirs_seen += 1
            elif e.kind == "file":
                files += 1
            if _unchanged(e, cached.get(e.path)):
                continue
            if e.kind == "file":
                self._batch.append(e)
                self._batch_bytes += e.size
                if len(self._batch) >= WORK_FILES or self._batch_bytes >= WORK_BYTES:
                    self._hand_over()
            elif e.kind == "symlink":
                target = fs_to_wire(e.link_target or b"")
                self.committer.add(Item(_entry(e, link_target=target), _cached_from_scan(e, target), e))
            else:
                self.committer.add(Item(_entry(e), _cached_from_scan(e, ""), e))
        self.stats.files_seen += files
        if files:
            self.progress.advance(files=files)
        self._collect()

    def _hand_over(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        assert self.readers is not None
        while True:
            self._check()
            try:
                self.readers.work.put(batch, timeout=0.05)
                return
            except queue.Full:
                self._collect()

    def _collect(self, timeout: float | None = None) -> bool:
        """Commit what finished groups made committable; False if nothing came within `timeout`."""
        got = False
        while True:
            try:
                ids, items = self.uploader.done.get(timeout=timeout) if timeout and not got else self.uploader.done.get_nowait()
            except queue.Empty:
                break
            got = True
            self.committer.group_done(ids, items)
        self.committer.poll()
        with self._report_lock:
            scanned = self._scanned
        if scanned > self._shown:
            self.progress.advance(bytes=scanned - self._shown)
            self._shown = scanned
        return got

    def _check(self) -> None:
        if self.uploader.abort.is_set():
            self.stop()  # let requests in flight finish, so that what they stored gets committed
            self._collect()
            self.committer.flush()  # keep what was uploaded before the failure
            raise self.uploader.failure or RuntimeError("backup pipeline stopped")

    def finish_pipeline(self) -> None:
        """Wait for the readers and uploaders to finish, committing as groups complete."""
        assert self.readers is not None
        done = threading.Event()

        def close() -> None:
            try:
                self.readers.close()  # type: ignore[union-attr]
                self.uploader.close()
            except BaseException:
                pass  # the failure is in uploader.failure; _check raises it
            finally:
                done.set()

        closer = threading.Thread(target=close, name="bkup-close", daemon=True)
        closer.start()
        while not done.is_set():
            self._check()
            self._collect(timeout=0.05)
        closer.join()
        self._check()
        self._collect()

    def stop(self) -> None:
        self.uploader.stop()
        self.committer.close()
        if self.readers is not None:
            self.readers.stop()

    # -- reader threads

    def read_batch(self, batch: list[ScanEntry], group: _OpenGroup) -> None:
        """Read a work batch into the reader's open group (which its reader flushes)."""
        for e in batch:
            if self.uploader.abort.is_set():
                raise Aborted()
            item, scanned = self.read_file(e, group.add_chunk)
            with self._report_lock:
                self._scanned += scanned
            if item is not None:
                group.add_item(item)

    def read_file(self, e: ScanEntry, sink: Sink) -> tuple[Item | None, int]:
        """Read one file through `sink`; its entry, or None (with a warning) if it cannot be read whole."""
        name = os.fsdecode(e.fs_path)
        scanned = 0

        def counting(cid: str, raw: bytes) -> None:
            nonlocal scanned
            scanned += len(raw)
            sink(cid, raw)

        for attempt in (1, 2):
            try:
                content = chunk_file(e.fs_path, counting)
                break
            except FileChanged as exc:
                if attempt == 2:
                    self._error(f"{name}: {exc} (twice); skipped, the previous version stays current")
                    return None, scanned
            except FileNotFoundError:
                self._warn(f"{name}: vanished before it could be read")
                return None, scanned
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                    self._warn(f"{name}: replaced by another kind of file while scanning; skipped")
                else:
                    self._error(f"{name}: cannot read: {exc.strerror or exc}")
                return None, scanned
        st = content.stat
        ids = content.chunk_ids
        read = ScanEntry(
            path=e.path, fs_path=e.fs_path, kind="file", size=st.st_size, mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns, inode=st.st_ino, dev=st.st_dev, mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid, gid=st.st_gid,
        )
        return Item(_entry(read, chunks=ids), _cached_from_scan(read, content_id(ids)), read), scanned

    def _warn(self, message: str) -> None:
        with self._report_lock:
            self.report.warnings.append(message)

    def _error(self, message: str) -> None:
        with self._report_lock:
            self.report.error(message)

    # -- the end

    def drain(self) -> None:
        """Upload and commit everything; read once more (in this thread) the files a commit was refused for."""
        self.finish_pipeline()
        self.committer.flush()
        for item in self.committer.waiting:  # cannot happen: every claimed id belongs to a finished group
            self._error(f"{os.fsdecode(item.scan.fs_path)}: its chunks were never confirmed; skipped")
        self.committer.waiting = []
        if not self.committer.refused:
            return
        refused, self.committer.refused = self.committer.refused, []
        self.uploader.forget(self.committer.refused_ids)
        self.committer.refused_ids = []
        again = Uploader(self.api, level=self.uploader.level, buffer_bytes=self.uploader.buffer_bytes, threads=1)
        try:
            for item in refused:
                group = Group()

                def sink(cid: str, raw: bytes, group: Group = group) -> None:
                    if cid not in group.chunks:
                        group.chunks[cid] = raw
                        group.size += len(raw)

                fresh, scanned = self.read_file(item.scan, sink)
                self._scanned += scanned
                if fresh is not None:
                    group.items.append(fresh)
                again.pending_bytes += group.size
                again.submit(group)
            again.close()
        finally:
            again.stop()
        self.uploader.bytes_new += again.bytes_new
        self.uploader.bytes_uploaded += again.bytes_uploaded
        while True:
            try:
                ids, items = again.done.get_nowait()
            except queue.Empty:
                break
            self.committer.group_done(ids, items)
        self.committer.flush()
        for item in self.committer.refused:
            self._error(f"{os.fsdecode(item.scan.fs_path)}: the server refused its chunks twice; skipped")
        self.committer.refused = []

    def report_deletions(self, roots: list[bytes]) -> None:
        """Tell the server which cached paths under the roots this walk did not see; forget them."""
        incomplete = self.report.incomplete
        gone = [
            (path, kind)
            for path, kind in self.cache.unseen_under([fs_to_wire(r) for r in roots])
            if not any(is_under(path, prefix) for prefix in incomplete)
        ]
        step = protocol.MAX_PATHS_PER_DELETE
        for i in range(0, len(gone), step):
            batch = [path for path, _ in gone[i : i + step]]
            self.api.delete_paths(self.run.id, batch)
            self.cache.delete_many(batch)
        self.stats.files_deleted = sum(1 for _, kind in gone if kind == "file")

    def final_stats(self) -> protocol.RunStats:
        s = self.stats
        s.files_changed = self.committer.changed_files
        s.bytes_scanned = self._scanned
        s.bytes_new = self.uploader.bytes_new
        s.bytes_uploaded = self.uploader.bytes_uploaded
        s.errors = self.report.errors
        return s

    def warnings(self) -> list[str]:
        out = list(self.report.warnings)
        if self.report.special_skipped:
            out.append(f"skipped {self.report.special_skipped} socket(s), FIFO(s) or device(s)")
        return out


def _entry(e: ScanEntry, **extra: object) -> protocol.Entry:
    return protocol.Entry(path=e.path, kind=e.kind, size=e.size, mtime_ns=e.mtime_ns, mode=e.mode, uid=e.uid, gid=e.gid, **extra)


def run_backup(
    api: ApiClient,
    roots: list[str] | list[bytes],
    excludes: list[str],
    state: StateCache,
    *,
    trigger: protocol.Trigger = "once",
    progress: Progress | None = None,
    compression_level: int = DEFAULT_LEVEL,
    buffer_bytes: int = BUFFER_BYTES,
    only: list[bytes] | None = None,
    before_walk: Callable[[protocol.RunInfo], list[str]] | None = None,
) -> BackupResult:
    """Back up `roots` (file system paths) as one run; returns the finished run, its stats and warnings.

    `only` (watch runs): the dirty paths; the walk covers just them, their
    ancestors and what is below them, and deletions are detected only there.
    `before_walk(run)` runs once the run has started (the pre-backup
    commands); the problems it returns make the run partial, in its error text.
    """
    ensure_native()
    resolved = resolve_roots(roots)
    if not resolved:
        raise UsageError("nothing to back up: give at least one --path")
    rules = Excludes(excludes)
    # The agent's own state changes during every run; backing it up would re-send it each time.
    skip = frozenset({os.path.realpath(os.fsencode(os.path.dirname(os.path.abspath(state.db_path))))})
    progress = progress or NullProgress()
    info = api.start_run(trigger)
    run = _Run(api, info, state, progress, compression_level, buffer_bytes)
    progress.start(f"backup run {info.seq}")
    dirty = None if only is None else dirty_paths(only, resolved)
    notes: list[str] = []
    try:
        if before_walk is not None:
            notes = list(before_walk(info))
        run.walk(resolved, rules, skip, only=dirty)
        run.drain()
        run.report_deletions(resolved if dirty is None else dirty)
    except BaseException as exc:
        run.stop()
        progress.finish()
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            api.finish_run(info.id, protocol.RunFinish(status="failed", stats=run.final_stats(), error=text[:4000]))
        except Exception as finish_exc:  # the original error matters more
            log.warning("could not mark run %d failed: %s", info.seq, finish_exc)
        raise
    run.stop()
    progress.finish()
    stats = run.final_stats()
    warnings = run.warnings()
    if stats.errors:
        notes.append(f"{stats.errors} error(s); first: {run.report.first_error}")
    error = "; ".join(notes) or None
    finished = api.finish_run(
        info.id, protocol.RunFinish(status="partial" if notes else "ok", stats=stats, error=error and error[:4000])
    )
    return BackupResult(finished, stats, warnings)

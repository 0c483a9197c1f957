"""One backup run: walk, compare with the state cache, chunk what changed, upload what the server lacks, commit, finish.

The pieces are separate so that reading/chunking can later run in parallel
(issue #8): `chunk_file` turns one file into chunk ids (streaming each chunk to
a sink), `Uploader` buffers chunks and uploads only the missing ones in
batches, `Committer` sends entries once all their chunks are on the server and
only then updates the state cache. `run_backup` drives them, single-threaded.

Invariants: a file is never committed torn (it is re-read once if it changed
while being read, then skipped with a warning); an entry is committed only
after every chunk it names was uploaded or reported present; the cache
follows the server, never leads it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from bkup import protocol
from bkup.agent.api import ApiClient, MissingChunksError
from bkup.agent.progress import NullProgress, Progress
from bkup.agent.scanner import ScanEntry, ScanReport, resolve_roots, scan
from bkup.agent.state import CachedEntry, StateCache
from bkup.core.chunker import ensure_native, iter_chunks_fd
from bkup.core.frames import HEADER_SIZE, encode_chunk
from bkup.core.hashing import chunk_id, content_id
from bkup.core.paths import fs_to_wire, is_under
from bkup.core.patterns import Excludes
from bkup.errors import UsageError

log = logging.getLogger("bkup.agent")

BUFFER_BYTES = 16 * 1024 * 1024  # raw chunks waiting for the "missing?" question
UPLOAD_BYTES = 32 * 1024 * 1024  # frame bytes in one upload request
COMMIT_JSON_BYTES = 16 * 1024 * 1024  # rough size bound of one commit request body
SEEN_BATCH = 5000

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
        for raw in iter_chunks_fd(fd):
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


# --- uploads ------------------------------------------------------------------------------


class Uploader:
    """Buffers raw chunks (bounded), asks which the server lacks, uploads those as frame batches.

    `known` holds the ids this run already knows the server has (asked or
    uploaded); the server keeps chunks a running run has asked about, so they
    need not be asked again.
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        level: int = 3,
        buffer_bytes: int = BUFFER_BYTES,
        upload_bytes: int = UPLOAD_BYTES,
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self.api = api
        self.level = level
        self.buffer_bytes = buffer_bytes
        self.upload_bytes = upload_bytes
        self.on_flush = on_flush
        self.known: set[str] = set()
        self._pending: dict[str, bytes] = {}
        self.pending_bytes = 0
        self.max_pending_bytes = 0
        self.bytes_new = 0
        self.bytes_uploaded = 0

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def add(self, cid: str, raw: bytes) -> None:
        if cid in self.known or cid in self._pending:
            return
        if self._pending and self.pending_bytes + len(raw) > self.buffer_bytes:
            self.flush()
        self._pending[cid] = raw
        self.pending_bytes += len(raw)
        self.max_pending_bytes = max(self.max_pending_bytes, self.pending_bytes)

    def forget(self, ids: list[str]) -> None:
        """The server says it lacks these after all (a commit was refused): ask again next time."""
        self.known.difference_update(ids)

    def flush(self) -> None:
        """Upload whatever of the buffer the server lacks; afterwards every buffered id is known present."""
        if self._pending:
            pending, self._pending, self.pending_bytes = self._pending, {}, 0
            missing = set(self.api.missing(list(pending)))
            batch: list = []
            batch_bytes = 0
            for cid, raw in pending.items():
                if cid not in missing:
                    continue
                frame = encode_chunk(raw, level=self.level, chunk_id=cid)
                self.bytes_new += len(raw)
                size = HEADER_SIZE + len(frame.data)
                if batch and batch_bytes + size > self.upload_bytes:
                    self._send(batch, batch_bytes)
                    batch, batch_bytes = [], 0
                batch.append(frame)
                batch_bytes += size
            if batch:
                self._send(batch, batch_bytes)
            self.known.update(pending)
        if self.on_flush is not None:
            self.on_flush()

    def _send(self, frames: list, size: int) -> None:
        self.api.upload(frames)
        self.bytes_uploaded += size


# --- commits -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    entry: protocol.Entry
    cached: CachedEntry
    scan: ScanEntry


def _json_size(entry: protocol.Entry) -> int:
    return 256 + len(entry.path) + 67 * len(entry.chunks or ())


class Committer:
    """Sends entries in batches once their chunks are uploaded; updates the state cache after each commit."""

    def __init__(self, api: ApiClient, run_id: int, cache: StateCache, *, batch_size: int = protocol.MAX_ENTRIES_PER_BATCH) -> None:
        self.api = api
        self.run_id = run_id
        self.cache = cache
        self.batch_size = batch_size
        self.waiting: list[_Item] = []  # may name chunks still in the uploader's buffer
        self.ready: list[_Item] = []
        self.refused: list[_Item] = []  # the server lacked chunks: to read again
        self.refused_ids: list[str] = []
        self.changed_files = 0

    def add(self, item: _Item, *, wait: bool) -> None:
        (self.waiting if wait else self.ready).append(item)
        if len(self.ready) >= self.batch_size:
            self.commit()

    def chunks_flushed(self) -> None:
        """Everything waiting is uploaded now: commit it, so a run that dies later keeps it."""
        self.ready.extend(self.waiting)
        self.waiting.clear()
        self.commit()

    def commit(self) -> None:
        """Commit every ready entry."""
        items, self.ready = self.ready, []
        batch: list[_Item] = []
        size = 0
        for item in items:
            n = _json_size(item.entry)
            if batch and (len(batch) >= self.batch_size or size + n > COMMIT_JSON_BYTES):
                self._commit(batch)
                batch, size = [], 0
            batch.append(item)
            size += n
        if batch:
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        try:
            self.api.commit(self.run_id, [i.entry for i in batch])
        except MissingChunksError as exc:
            # The whole batch was refused: set aside the entries naming a missing chunk, commit the rest.
            missing = set(exc.missing)
            log.warning("server lacks %d chunk(s) it reported present; re-reading the affected files", len(missing))
            self.refused_ids.extend(missing)
            keep = []
            for item in batch:
                (self.refused if missing.intersection(item.entry.chunks or ()) else keep).append(item)
            if len(keep) == len(batch):
                raise  # the server named chunks none of these entries use: nothing sensible to retry
            if keep:
                self._commit(keep)
            return
        # files_* stats count regular files only (not dirs, not symlinks).
        self.changed_files += sum(1 for i in batch if i.entry.kind == "file")
        self.cache.put_many((i.entry.path, i.cached) for i in batch)


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
        self.committer = Committer(api, run.id, cache)
        self.uploader = Uploader(api, level=level, buffer_bytes=buffer_bytes, on_flush=self.committer.chunks_flushed)

    def _sink(self, cid: str, raw: bytes) -> None:
        self.uploader.add(cid, raw)
        self.stats.bytes_scanned += len(raw)
        self.progress.advance(bytes=len(raw))

    def walk(self, roots: list[bytes], excludes: Excludes, skip: frozenset[bytes]) -> None:
        self.cache.begin_walk()
        seen: list[str] = []
        for e in scan(roots, excludes, self.report, skip=skip):
            seen.append(e.path)
            if len(seen) >= SEEN_BATCH:
                self.cache.mark_seen(seen)
                seen = []
            if e.kind == "dir":
                self.stats.dirs_seen += 1
            elif e.kind == "file":
                self.stats.files_seen += 1
                self.progress.advance(files=1)
            if _unchanged(e, self.cache.get(e.path)):
                continue
            if e.kind == "file":
                self.backup_file(e)
            elif e.kind == "symlink":
                target = fs_to_wire(e.link_target or b"")
                entry = self._entry(e, link_target=target)
                self._add(_Item(entry, _cached_from_scan(e, target), e))
            else:
                self._add(_Item(self._entry(e), _cached_from_scan(e, ""), e))
        self.cache.mark_seen(seen)

    def _entry(self, e: ScanEntry, **extra: object) -> protocol.Entry:
        return protocol.Entry(
            path=e.path, kind=e.kind, size=e.size, mtime_ns=e.mtime_ns, mode=e.mode, uid=e.uid, gid=e.gid, **extra
        )

    def _add(self, item: _Item) -> None:
        self.committer.add(item, wait=self.uploader.has_pending)
        if len(self.committer.waiting) >= protocol.MAX_ENTRIES_PER_BATCH:
            self.uploader.flush()  # many small files: upload early rather than hold their entries

    def backup_file(self, e: ScanEntry) -> None:
        name = os.fsdecode(e.fs_path)
        for attempt in (1, 2):
            try:
                content = chunk_file(e.fs_path, self._sink)
                break
            except FileChanged as exc:
                if attempt == 2:
                    self.report.error(f"{name}: {exc} (twice); skipped, the previous version stays current")
                    return
            except FileNotFoundError:
                self.report.warnings.append(f"{name}: vanished before it could be read")
                return
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                    self.report.warnings.append(f"{name}: replaced by another kind of file while scanning; skipped")
                else:
                    self.report.error(f"{name}: cannot read: {exc.strerror or exc}")
                return
        st = content.stat
        ids = content.chunk_ids
        read = ScanEntry(
            path=e.path, fs_path=e.fs_path, kind="file", size=st.st_size, mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns, inode=st.st_ino, dev=st.st_dev, mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid, gid=st.st_gid,
        )
        self._add(_Item(self._entry(read, chunks=ids), _cached_from_scan(read, content_id(ids)), read))

    def drain(self) -> None:
        """Upload and commit everything buffered; read once more the files a commit was refused for."""
        self.uploader.flush()  # commits everything ready once the chunks are up
        if self.committer.refused:
            refused, self.committer.refused = self.committer.refused, []
            self.uploader.forget(self.committer.refused_ids)
            self.committer.refused_ids = []
            for item in refused:
                self.backup_file(item.scan)
            self.uploader.flush()
            for item in self.committer.refused:
                self.report.error(f"{os.fsdecode(item.scan.fs_path)}: the server refused its chunks twice; skipped")
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
        s.bytes_new = self.uploader.bytes_new
        s.bytes_uploaded = self.uploader.bytes_uploaded
        s.errors = self.report.errors
        return s

    def warnings(self) -> list[str]:
        out = list(self.report.warnings)
        if self.report.special_skipped:
            out.append(f"skipped {self.report.special_skipped} socket(s), FIFO(s) or device(s)")
        return out


def run_backup(
    api: ApiClient,
    roots: list[str] | list[bytes],
    excludes: list[str],
    state: StateCache,
    *,
    trigger: protocol.Trigger = "once",
    progress: Progress | None = None,
    compression_level: int = 3,
    buffer_bytes: int = BUFFER_BYTES,
) -> BackupResult:
    """Back up `roots` (file system paths) as one run; returns the finished run, its stats and warnings."""
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
    try:
        run.walk(resolved, rules, skip)
        run.drain()
        run.report_deletions(resolved)
    except BaseException as exc:
        progress.finish()
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            api.finish_run(info.id, protocol.RunFinish(status="failed", stats=run.final_stats(), error=text[:4000]))
        except Exception as finish_exc:  # the original error matters more
            log.warning("could not mark run %d failed: %s", info.seq, finish_exc)
        raise
    progress.finish()
    stats = run.final_stats()
    warnings = run.warnings()
    error = f"{stats.errors} error(s); first: {run.report.first_error}" if stats.errors else None
    finished = api.finish_run(
        info.id, protocol.RunFinish(status="partial" if stats.errors else "ok", stats=stats, error=error and error[:4000])
    )
    return BackupResult(finished, stats, warnings)

"""Restore and listing: a client's backed-up tree, as of a run or time, written safely under a target directory.

Nothing the server says is trusted (DESIGN §6): every path is validated with
`bkup.core.paths` (refused entries become errors, the rest continues), all
file system work happens relative to directory fds opened with O_NOFOLLOW
(`agent.targetdir`), so no existing symlink inside the target is ever
followed, and symlinks from the
backup are created last, after every file and directory, so nothing is ever
written through one. Every chunk is checked (BLAKE3 and length) before it is
written; a file with a bad or missing chunk is reported and left out (its temp
file removed), never half-written. Files appear atomically (temp name, then
rename); then mode, times and, as root, ownership; directories last, deepest
first. `/home/x/f` is restored as `TARGET/home/x/f`, as restic does.

Chunks are fetched in batches, one batch ahead in a fetch thread; each
fetched batch is written by WRITERS threads, each taking a contiguous slice
of whole files, and the next batch goes to the writers only once the last
one is fully written (so a file spanning batches gets its pieces in order).
"""

from __future__ import annotations

import itertools
import os
import secrets
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path

from bkup import protocol
from bkup.agent.api import ApiClient
from bkup.agent.progress import NullProgress, Progress
from bkup.agent.targetdir import CurrentDir, Refused, TargetDirs, fs_parts
from bkup.core.frames import FrameError, decode_frame
from bkup.core.hashing import content_id
from bkup.core.paths import UnsafePath, is_under, normalize, parent_of, wire_to_fs
from bkup.errors import Conflict, NotFound, ServerError, UsageError

FETCH_BYTES = 16 * 1024 * 1024  # estimated raw bytes per chunk-read request
BATCH_FILES = 2048  # files in one batch at most (many empty or identical files need few or no chunk ids)
WRITERS = 2  # threads creating and writing files (docs/performance.md: more threads fight over the GIL)
_FILE_COST = 64 * 1024  # creating, closing and renaming a file, counted as this many bytes written when slicing a batch


@dataclass
class RestoreResult:
    run: int | None = None
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


# --- "as of" ------------------------------------------------------------------------------


def parse_at(text: str) -> str:
    """A user's ISO 8601 date or time as the naive UTC time the API takes.

    A time without offset is local time. A bare date means the end of that
    local day, i.e. the last backup made that day.
    """
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            when = datetime.combine(day, time.max)
        else:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: {text!r} is not an ISO 8601 date or time (e.g. 2026-11-28 or 2026-11-28T07:30)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # interpreted as local time
    return when.astimezone(UTC).replace(tzinfo=None).isoformat()


# --- listing (for `ls`) -------------------------------------------------------------------


def list_entries(
    api: ApiClient, client_id: int, path: str = "/", *, run: int | None = None, at: str | None = None
) -> protocol.Tree:
    """The entries of directory `path` (or the one entry, if `path` is not a directory) as of a run or time."""
    try:
        path = normalize(path)
    except UnsafePath as exc:
        raise UsageError(str(exc)) from None
    tree = api.tree(client_id, path, run=run, at=at)
    if tree.run is None:
        raise NotFound("no backup at or before that time" if at else "this client has no backups yet")
    if tree.entries or path == "/":
        return tree
    parent = api.tree(client_id, parent_of(path), run=tree.run)
    match = [e for e in parent.entries if e.path == path]
    if not match:
        raise NotFound(f"{path}: not in run {tree.run}")
    return protocol.Tree(run=tree.run, path=path, entries=[] if match[0].kind == "dir" else match)


def _apply_meta(fd: int, v: protocol.VersionInfo, as_root: bool) -> None:
    if as_root:
        os.fchown(fd, v.uid, v.gid)  # before chmod: chown clears setuid/setgid bits
    os.fchmod(fd, v.mode & 0o7777)
    os.utime(fd, ns=(v.mtime_ns, v.mtime_ns))


# --- files ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class _FileJob:
    v: protocol.VersionInfo
    parts: list[bytes]
    chunks: list[str]
    parent_fd: int = -1
    owns_parent: bool = False  # parent_fd is the job's own (a file written over several batches), else its writer's
    fd: int = -1
    tmp: bytes = b""
    written: int = 0
    failed: bool = False


_Piece = tuple[_FileJob, int, int]  # chunks [start, end) of a file, in one batch


@dataclass
class _Tally:
    """What one writer did with its slice of a batch; added to the result (in batch order) at the barrier."""

    files: int = 0
    bytes: int = 0
    written: int = 0  # for progress: every byte written, also those of files that fail later
    errors: list[str] = field(default_factory=list)


def _slices(pieces: list[_Piece], got: dict[str, bytes], n: int) -> list[list[_Piece]]:
    """`pieces` cut into at most `n` contiguous runs of about equal work (bytes, plus a fixed cost per file).

    A file has at most one piece per batch, so each file goes to exactly one run.
    Contiguous runs keep the files of one directory mostly on one thread.
    """
    if n <= 1 or len(pieces) <= 1:
        return [pieces] if pieces else []
    weights = [_FILE_COST + sum(len(got.get(cid, b"")) for cid in job.chunks[start:end]) for job, start, end in pieces]
    total = sum(weights)
    runs: list[list[_Piece]] = []
    first = done = 0
    for i, weight in enumerate(weights):
        done += weight
        if len(runs) < n - 1 and done * n >= total * (len(runs) + 1):
            runs.append(pieces[first : i + 1])
            first = i + 1
    if first < len(pieces):
        runs.append(pieces[first:])
    return runs


class _Restorer:
    def __init__(self, api: ApiClient, client_id: int, root_fd: int, subpath: str, overwrite: bool, progress: Progress) -> None:
        self.api = api
        self.client_id = client_id
        self.subpath = subpath
        self.overwrite = overwrite
        self.progress = progress
        self.as_root = os.geteuid() == 0
        self.dirs = TargetDirs(root_fd, overwrite)
        self.result = RestoreResult()
        self.dir_meta: list[tuple[list[bytes], protocol.VersionInfo]] = []
        self.symlinks: list[tuple[list[bytes], protocol.VersionInfo]] = []
        self.batch: list[_Piece] = []  # (file, first chunk, end) to write after the fetch
        self.batch_ids: dict[str, None] = {}
        self.batch_bytes = 0
        self.open_jobs: set[_FileJob] = set()  # files with an fd or temp file (guarded by _jobs_lock)
        self._jobs_lock = threading.Lock()
        # One batch ahead: the next batch is fetched and decoded in this thread while the current one is written.
        self._fetcher: ThreadPoolExecutor | None = None
        self._ahead: tuple[Future, list[_Piece]] | None = None
        # The batch being written, one slice per writer thread; the main thread goes on listing meanwhile.
        self._writers: ThreadPoolExecutor | None = None
        self._writing: list[tuple[Future, _Tally]] = []
        self._stop = threading.Event()  # set on abort or a writer's unexpected failure: writers stop at their next file
        # Temp names: one random prefix per restore and a counter (a random name per file cost a
        # getrandom call each); itertools.count is atomic under the GIL.
        self._tmp_prefix = b".bkup-restore-" + secrets.token_hex(6).encode() + b"-"
        self._tmp_seq = itertools.count()

    def error(self, message: str) -> None:
        self.result.errors.append(message)

    # entries arrive in path order, page by page

    def add(self, v: protocol.VersionInfo) -> None:
        try:
            if not is_under(v.path, self.subpath):
                raise Refused(f"refusing {v.path!r:.300}: not under {self.subpath!r}")
            parts = fs_parts(v.path, "/")
            if not parts:
                if v.kind != "dir":
                    raise Refused(f"refusing a {v.kind} at '/'")
                return  # the root is the target itself: leave its mode and times alone
            if v.kind == "dir":
                os.close(self.dirs.open(parts))
                self.dir_meta.append((parts, v))
            elif v.kind == "symlink":
                self.symlinks.append((parts, v))
            elif v.kind == "file":
                self._add_file(v, parts)
            else:
                raise Refused(f"{v.path!r:.300}: unknown kind {v.kind!r}")
        except Refused as exc:
            self.error(str(exc))
        except OSError as exc:
            self.error(f"{v.path!r:.300}: {exc.strerror or exc}")

    def _add_file(self, v: protocol.VersionInfo, parts: list[bytes]) -> None:
        chunks = v.chunks
        if chunks is None:
            raise Refused(f"{v.path!r:.300}: the server sent no chunk list")
        try:
            actual = content_id(chunks)  # checks every id's spelling too
        except ValueError:
            raise Refused(f"{v.path!r:.300}: malformed chunk id in its chunk list") from None
        if v.content_id is not None and actual != v.content_id:
            raise Refused(f"{v.path!r:.300}: chunk list does not match its content id")
        if len(self.batch) >= BATCH_FILES:
            self.flush()
        job = _FileJob(v, parts, chunks)
        if not chunks:
            self.batch.append((job, 0, 0))  # created by a writer like any other file, nothing to fetch
            return
        est = max(1, v.size // len(chunks))
        start = 0
        for i, cid in enumerate(chunks):
            if cid not in self.batch_ids:
                if len(self.batch_ids) >= protocol.MAX_IDS_PER_QUERY or self.batch_bytes >= FETCH_BYTES:
                    if i > start:
                        self.batch.append((job, start, i))
                        start = i
                    self.flush()
                self.batch_ids[cid] = None
                self.batch_bytes += est
        self.batch.append((job, start, len(chunks)))

    def flush(self) -> None:
        """Start fetching the batch's chunks (in the fetch thread), then hand the batch fetched before it to the writers.

        Batches are written in the order they were made, and one batch goes to
        the writers only once the one before it is fully written, so each
        file's pieces land in order. At most two batches of chunks are held:
        the one being written and the one being fetched.
        """
        if not self.batch:
            return
        self._wait_writes()  # the batch written so far is released before the next fetch starts
        if self._fetcher is None:
            self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bkup-restore-fetch")
        future = self._fetcher.submit(self._fetch, list(self.batch_ids))
        batch, self.batch, self.batch_ids, self.batch_bytes = self.batch, [], {}, 0
        self._write_ahead()
        self._ahead = (future, batch)

    def drain(self) -> None:
        """Fetch and write everything still pending."""
        self.flush()
        self._wait_writes()
        self._write_ahead()
        self._wait_writes()

    def _write_ahead(self) -> None:
        """Hand the batch fetched ahead to the writers, a slice of whole files each; does not wait for them."""
        if self._ahead is None:
            return
        future, batch = self._ahead
        self._ahead = None
        got, reasons = future.result()  # re-raises what the fetch failed with
        pieces = [piece for piece in batch if not piece[0].failed]
        if self._writers is None:
            self._writers = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="bkup-restore-write")
        for run in _slices(pieces, got, WRITERS):
            tally = _Tally()
            self._writing.append((self._writers.submit(self._write_slice, run, got, reasons, tally), tally))

    def _wait_writes(self) -> None:
        """The barrier: wait until the batch being written is done, count what each writer did, re-raise a failure."""
        wait([future for future, _ in self._writing])
        writing, self._writing = self._writing, []
        for _, tally in writing:
            self.result.files += tally.files
            self.result.bytes += tally.bytes
            self.result.errors.extend(tally.errors)
            if tally.files or tally.written:
                self.progress.advance(files=tally.files, bytes=tally.written)
        for future, _ in writing:
            future.result()  # an unexpected error in a writer: every writer has stopped, abort() cleans up

    def _write_slice(self, pieces: list[_Piece], got: dict[str, bytes], reasons: dict[str, str], tally: _Tally) -> None:
        """One writer's share of a batch, in batch order (runs in a writer thread)."""
        here = CurrentDir(self.dirs)
        try:
            for job, start, end in pieces:
                if self._stop.is_set():
                    return
                self._write(job, got, reasons, start, end, tally, here)
        except BaseException:
            self._stop.set()  # the other writers stop too; the main thread re-raises this at the barrier
            raise
        finally:
            here.close()

    def _write(
        self, job: _FileJob, got: dict[str, bytes], reasons: dict[str, str], start: int, end: int, tally: _Tally, here: CurrentDir
    ) -> None:
        """Write chunks [start, end) of a file; the last piece puts the file in place."""
        try:
            if job.fd < 0:
                self._start(job, here, whole=end == len(job.chunks))
            for cid in job.chunks[start:end]:
                raw = got.get(cid)
                if raw is None:
                    raise Refused(f"{job.v.path!r:.300}: damaged, not restored: chunk {cid} {reasons.get(cid, 'missing')}")
                _write_all(job.fd, raw)
                job.written += len(raw)
                tally.written += len(raw)
            if end == len(job.chunks):
                self._finish(job, tally)
        except Refused as exc:
            self._fail(job, str(exc), tally)
        except OSError as exc:
            self._fail(job, f"{job.v.path!r:.300}: {exc.strerror or exc}", tally)
        except BaseException:
            self._close(job)  # its temp file goes now, while the directory fd it may borrow is still open
            raise

    def _fetch(self, ids: list[str]) -> tuple[dict[str, bytes], dict[str, str]]:
        """Verified plaintext of as many of `ids` as the server gives, and why the others are absent."""
        got: dict[str, bytes] = {}
        reasons: dict[str, str] = {}
        if not ids:  # a batch of empty files only
            return got, reasons
        todo = ids
        for attempt in (1, 2):
            try:
                self._read_into(todo, got, reasons)
            except NotFound:
                # One absent chunk fails the whole request: split to find the readable ones.
                if len(todo) == 1:
                    reasons[todo[0]] = "is not stored on the server"
                else:
                    half = len(todo) // 2
                    for part in (todo[:half], todo[half:]):
                        more, why = self._fetch(part)
                        got.update(more)
                        reasons.update(why)
                return got, reasons
            except (ServerError, FrameError) as exc:
                todo = [i for i in todo if i not in got and i not in reasons]
                if attempt == 2 or not todo:
                    for cid in todo:
                        reasons.setdefault(cid, f"could not be read ({exc})")
                continue
            break
        return got, reasons

    def _read_into(self, ids: list[str], got: dict[str, bytes], reasons: dict[str, str]) -> None:
        wanted = set(ids)
        for frame in self.api.read_chunks(self.client_id, ids):
            if frame.id not in wanted or frame.id in got:
                continue
            try:
                got[frame.id] = decode_frame(frame)
            except FrameError as exc:
                reasons[frame.id] = f"failed verification ({exc})"

    def _start(self, job: _FileJob, here: CurrentDir, *, whole: bool) -> None:
        """Create the file's temp file; a file written in one piece borrows its writer's directory fd."""
        if whole:
            job.parent_fd = here.open(job.parts[:-1])
        else:  # later pieces come in later batches, maybe to another writer: the job keeps an fd of its own
            job.parent_fd = self.dirs.open(job.parts[:-1])
            job.owns_parent = True
        with self._jobs_lock:
            self.open_jobs.add(job)
        job.tmp = b"%s%d" % (self._tmp_prefix, next(self._tmp_seq))  # O_EXCL: never an existing file
        job.fd = os.open(job.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=job.parent_fd)

    def _finish(self, job: _FileJob, tally: _Tally) -> None:
        v = job.v
        if job.written != v.size:
            raise Refused(f"{v.path!r:.300}: damaged, not restored: {job.written} bytes but the listing says {v.size}")
        _apply_meta(job.fd, v, self.as_root)
        fd, job.fd = job.fd, -1
        os.close(fd)  # may report a late write error (network file systems): the file fails, and is not closed twice
        name = job.parts[-1]
        try:
            os.rename(job.tmp, name, src_dir_fd=job.parent_fd, dst_dir_fd=job.parent_fd)
        except OSError as exc:
            raise Refused(f"{v.path!r:.300}: cannot put in place: {exc.strerror}") from None
        job.tmp = b""
        self._close(job)
        tally.files += 1
        tally.bytes += job.written

    def _fail(self, job: _FileJob, message: str, tally: _Tally) -> None:
        job.failed = True
        tally.errors.append(message)
        self._close(job)

    def _close(self, job: _FileJob) -> None:
        """Release a file's fds and temp file. Cleanup only, so it never raises: errors in a writer are the file's own."""
        fd, job.fd = job.fd, -1
        if fd >= 0:
            with suppress(OSError):
                os.close(fd)
        if job.tmp:
            with suppress(OSError):
                os.unlink(job.tmp, dir_fd=job.parent_fd)
            job.tmp = b""
        fd, job.parent_fd = job.parent_fd, -1
        if fd >= 0 and job.owns_parent:
            with suppress(OSError):
                os.close(fd)
        with self._jobs_lock:
            self.open_jobs.discard(job)

    # last: symlinks, then directory metadata deepest first

    def make_symlinks(self) -> None:
        for parts, v in self.symlinks:
            try:
                if v.link_target is None:
                    raise Refused(f"{v.path!r:.300}: symlink without a target")
                try:
                    target = wire_to_fs(v.link_target)
                except UnsafePath as exc:
                    raise Refused(f"{v.path!r:.300}: bad symlink target: {exc}") from None
                pfd = self.dirs.open(parts[:-1])
                try:
                    self._symlink(pfd, parts[-1], target, v)
                finally:
                    os.close(pfd)
                self.result.symlinks += 1
            except Refused as exc:
                self.error(str(exc))
            except OSError as exc:
                self.error(f"{v.path!r:.300}: {exc.strerror or exc}")

    def _symlink(self, pfd: int, name: bytes, target: bytes, v: protocol.VersionInfo) -> None:
        try:
            os.symlink(target, name, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not self.overwrite or stat.S_ISDIR(st.st_mode):
                raise Refused(f"{v.path!r:.300}: cannot create symlink, something else is there") from None
            os.unlink(name, dir_fd=pfd)
            os.symlink(target, name, dir_fd=pfd)
        if self.as_root:
            os.chown(name, v.uid, v.gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(name, ns=(v.mtime_ns, v.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def set_dir_meta(self) -> None:
        # Deepest first: a directory's mode and times change only after everything inside it is done,
        # and the ancestors walked through to reach it are still untouched.
        for parts, v in sorted(self.dir_meta, key=lambda item: len(item[0]), reverse=True):
            try:
                fd = self.dirs.open(parts, create=False)
                try:
                    _apply_meta(fd, v, self.as_root)
                finally:
                    os.close(fd)
                self.result.dirs += 1
            except Refused as exc:
                self.error(str(exc))
            except OSError as exc:
                self.error(f"{v.path!r:.300}: {exc.strerror or exc}")

    def abort(self) -> None:
        """Stop the writers and the fetch, remove what is half-written (also the normal end: then nothing is)."""
        self._stop.set()
        if self._writers is not None:
            self._writers.shutdown(wait=True, cancel_futures=True)  # the open files are closed only once no writer runs
            self._writers = None
        self._writing = []
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=True, cancel_futures=True)
            self._fetcher = None
        self._ahead = None
        for job in list(self.open_jobs):
            self._close(job)
        self.dirs.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# --- the whole restore -----------------------------------------------------------------------------


def _check_target(target: Path, overwrite: bool) -> None:
    if target.is_symlink() and not target.exists():
        raise Conflict(f"target {target} is a dangling symlink")
    if target.exists():
        if not target.is_dir():
            raise Conflict(f"target {target} exists and is not a directory")
        if not overwrite and any(target.iterdir()):
            raise Conflict(f"target {target} is not empty; use --overwrite")


def restore_tree(
    api: ApiClient,
    client_id: int,
    target: Path | str,
    *,
    run: int | None = None,
    at: str | None = None,
    subpath: str = "/",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore the client's tree under `subpath`, as of `run` (seq) or `at` (ISO time) or the latest run, under `target`."""
    try:
        subpath = normalize(subpath)
    except UnsafePath as exc:
        raise UsageError(f"--path: {exc}") from None
    target = Path(target)
    progress = progress or NullProgress()
    _check_target(target, overwrite)

    # The totals for the progress bar (counted by the server), and the run, pinned for the listing.
    summary = api.summary(client_id, subpath, run=run, at=at)
    seq = summary.run
    if seq is None:
        raise NotFound("no backup at or before that time" if at else "this client has no backups yet")
    if not (summary.files or summary.dirs or summary.symlinks):
        raise NotFound(f"{subpath} is not in run {seq}")

    made_target = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    restorer = _Restorer(api, client_id, root_fd, subpath, overwrite, progress)
    restorer.result.run = seq
    progress.start(f"restore run {seq}", total_files=summary.files, total_bytes=summary.bytes)
    listed = 0
    try:
        for page in api.files(client_id, subpath, run=seq, chunks=True):
            listed += len(page.entries)
            for v in page.entries:
                restorer.add(v)
        if not listed:  # the listing disagrees with the summary: nothing was written
            if made_target:
                with suppress(OSError):
                    target.rmdir()
            raise NotFound(f"{subpath} is not in run {seq}")
        restorer.drain()
        restorer.make_symlinks()
        restorer.set_dir_meta()
    finally:
        restorer.abort()
        os.close(root_fd)
        progress.finish()
    return restorer.result


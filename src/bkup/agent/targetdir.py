"""Directories under a restore target, reached component by component without following symlinks.

Nothing the server says is trusted (DESIGN §6): a path becomes file system
components only through `fs_parts`, which refuses anything that could leave
the target, and every directory is opened relative to its parent with
O_NOFOLLOW, so no symlink inside the target is ever followed. Used by
`agent.restore`.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from contextlib import suppress

from bkup.core.paths import UnsafePath, relative_parts, wire_to_fs

DIR_FD_CACHE = 64  # directory fds kept open (least recently used go first)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """One entry cannot be restored safely; the message says why."""


def fs_parts(path: str, base: str) -> list[bytes]:
    """The file system components of wire path `path` below `base`; Refused for anything unsafe."""
    try:
        parts = [wire_to_fs(p) for p in relative_parts(path, base)]
    except UnsafePath as exc:
        raise Refused(f"refusing unsafe path {path!r:.300}: {exc}") from None
    for p in parts:  # relative_parts and wire_to_fs already ensure this; restore depends on it
        if p in (b"", b".", b"..") or b"/" in p or b"\0" in p:
            raise Refused(f"refusing unsafe path {path!r:.300}")
    return parts


class TargetDirs:
    """Directories under the target, reached component by component without following symlinks.

    Thread-safe. The cache of open directory fds is used under a lock; the
    directories missing from it are opened (and made) outside the lock, each
    thread walking with fds of its own (dups), so an fd evicted from the cache
    by one thread is never one another thread is still using.
    """

    def __init__(self, root_fd: int, overwrite: bool) -> None:
        self.root_fd = root_fd
        self.overwrite = overwrite
        self._cache: OrderedDict[tuple[bytes, ...], int] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, parts: list[bytes] | tuple[bytes, ...], *, create: bool = True) -> int:
        """A new fd (the caller closes it) of the directory TARGET/parts, made if missing and `create`."""
        key = tuple(parts)
        with self._lock:
            depth = len(key)
            while depth and key[:depth] not in self._cache:
                depth -= 1
            if depth and depth == len(key):
                self._cache.move_to_end(key)
            fd = os.dup(self._cache[key[:depth]] if depth else self.root_fd)
        try:
            for i in range(depth, len(key)):
                sub = self._step(fd, key[i], create, key[: i + 1])
                os.close(fd)
                fd = sub
                self._remember(key[: i + 1], fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, fd: int, name: bytes, create: bool, where: tuple[bytes, ...]) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise Refused(f"{_show(where)}: directory is missing") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise Refused(f"{_show(where)}: cannot open directory: {exc.strerror}") from None
            if not self.overwrite:
                raise Refused(f"{_show(where)}: exists and is not a directory") from None
            # A file or symlink in the way: remove it, never follow it (another thread may have done so already).
            with suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=fd)
        with suppress(FileExistsError):  # e.g. made by another thread meanwhile
            os.mkdir(name, 0o700, dir_fd=fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise Refused(f"{_show(where)}: cannot create directory: {exc.strerror}") from None

    def _remember(self, key: tuple[bytes, ...], fd: int) -> None:
        """Cache a dup of `fd` (unless another thread just did), closing the least recently used beyond DIR_FD_CACHE."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return
            self._cache[key] = os.dup(fd)
            if len(self._cache) > DIR_FD_CACHE:
                _, old = self._cache.popitem(last=False)
                os.close(old)

    def close(self) -> None:
        with self._lock:
            for fd in self._cache.values():
                os.close(fd)
            self._cache.clear()


def _show(parts: tuple[bytes, ...] | list[bytes]) -> str:
    return repr(os.fsdecode(b"/" + b"/".join(parts)))


class CurrentDir:
    """A writer's current directory, kept open across consecutive files of one slice.

    The files of a directory are contiguous in a batch, so most files need no
    directory lookup and no fd of their own: two system calls fewer per file.
    """

    def __init__(self, dirs: TargetDirs) -> None:
        self.dirs = dirs
        self.key: list[bytes] | None = None
        self.fd = -1

    def open(self, parts: list[bytes]) -> int:
        if parts != self.key:
            self.close()
            self.fd = self.dirs.open(parts)
            self.key = parts
        return self.fd

    def close(self) -> None:
        fd, self.fd, self.key = self.fd, -1, None
        if fd >= 0:
            os.close(fd)

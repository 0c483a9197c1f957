"""The object store port (`ObjectStore`) and its adapters: fsspec (local folder, S3) and memory.

Vocabulary: a *key* is a relative POSIX path (`packs/1/ab/ab12…`) naming one
*object*, a byte string written once and never modified. A store never shows a
half-written object: `open_write` and `put` publish an object only when the
write completed (local: temp file + fsync + rename; S3: the upload completes
on close and is aborted otherwise).

Every store has a sync API; the server calls it from worker threads. Errors
from fsspec, s3fs, botocore and the OS are translated here: a missing object
raises `ObjectNotFound`, any other failure `StorageError` naming the key.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit, urlunsplit

from bkup.errors import BkupError, ConfigError, StorageError

__all__ = [
    "FsspecStore",
    "MemoryStore",
    "ObjectNotFound",
    "ObjectStore",
    "StorageError",
    "check_key",
    "open_store",
]

# S3 parts are uploaded one block at a time: this is the most a writer holds.
S3_BLOCK_SIZE = 8 * 2**20
# A local object is written through a buffer of this size: a pack of many small
# blobs would otherwise cost one write system call per ~8 KiB.
LOCAL_WRITE_BUFFER = 2**20

_TEMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{16}$")

T = TypeVar("T")


class ObjectNotFound(StorageError):
    """The key names no object."""


@runtime_checkable
class ObjectStore(Protocol):
    """Where packs, keys and manifests live. Keys are checked by `check_key`."""

    url: str  # the store's URL without secrets

    def put(self, key: str, data: bytes) -> None: ...

    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...

    def describe(self) -> str: ...


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative POSIX key, else raise ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid storage key {key!r}: empty")
    if key.startswith("/"):
        raise ValueError(f"invalid storage key {key!r}: absolute")
    if "\\" in key or "\0" in key:
        raise ValueError(f"invalid storage key {key!r}: backslash or NUL")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid storage key {key!r}: empty, '.' or '..' component")
    if _TEMP_SUFFIX.search(key):
        raise ValueError(f"invalid storage key {key!r}: reserved temporary-file suffix")
    return key


def _check_prefix(prefix: str) -> str:
    """A list prefix is a folder: "" (everything) or a valid key, trailing "/" allowed."""
    prefix = prefix.rstrip("/")
    return check_key(prefix) if prefix else ""


def _check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"invalid range start={start} length={length}")


def _short_read(key: str, start: int, length: int, got: int) -> StorageError:
    return StorageError(
        f"short read of {key!r}: wanted {length} bytes at offset {start}, got {got} (object truncated?)"
    )


# --- memory -----------------------------------------------------------------------


class MemoryStore:
    """A dict of objects, for tests. Thread-safe."""

    def __init__(self, name: str = "test") -> None:
        self.url = f"memory://{name}"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"in-memory store {self.url}"

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        with self._lock:
            self._objects[key] = bytes(data)

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        check_key(key)
        buf = io.BytesIO()
        yield buf
        with self._lock:
            self._objects[key] = buf.getvalue()

    def _read(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFound(f"no object {key!r} in {self.url}") from None

    def get(self, key: str) -> bytes:
        return self._read(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        _check_range(start, length)
        data = self._read(key)[start : start + length]
        if len(data) != length:
            raise _short_read(key, start, length, len(data))
        return data

    def size(self, key: str) -> int:
        return len(self._read(key))

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._objects

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = _check_prefix(prefix)
        with self._lock:
            keys = sorted(self._objects)
        if folder:
            keys = [k for k in keys if k.startswith(folder + "/")]
        return iter(keys)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)


# --- fsspec: local folder and S3 ------------------------------------------------------


# Errors of the backends, translated into StorageError. botocore joins the list
# when the first S3 store is opened: importing it costs ~20 MB and 0.3 s, which
# a server on local storage should not pay.
_BACKEND_ERRORS: tuple[type[BaseException], ...] = (OSError,)


def _add_botocore_errors() -> None:
    global _BACKEND_ERRORS
    from botocore.exceptions import BotoCoreError, ClientError

    _BACKEND_ERRORS = (OSError, BotoCoreError, ClientError)


class _TranslatingWriter(io.RawIOBase):
    """The file handed out by `FsspecStore.open_write`: backend errors become StorageError.

    Closing it does nothing: the object is published (or discarded) by the
    context manager that handed it out.
    """

    def __init__(self, raw: Any, translate: Callable[[BaseException], BkupError]) -> None:
        super().__init__()
        self._raw = raw
        self._translate = translate
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            self._raw.write(data)
        except _BACKEND_ERRORS as e:
            raise self._translate(e) from e
        n = memoryview(data).nbytes
        self._written += n
        return n

    def tell(self) -> int:
        return self._written


class FsspecStore:
    """An object store over an fsspec filesystem rooted at a folder or bucket prefix.

    Reads, listing and deletion go through one `DirFileSystem` for both
    backends; writes are backend-specific because atomic publication is.
    """

    def __init__(self, fs: Any, root: str, *, url: str, description: str | None = None) -> None:
        from fsspec.implementations.dirfs import DirFileSystem
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        self._description = description or url
        self._local = isinstance(fs, LocalFileSystem)
        self._root = root
        self._fs = DirFileSystem(path=root, fs=fs)

    def describe(self) -> str:
        return self._description

    # -- error translation

    def _error(self, op: str, key: str, e: BaseException) -> BkupError:
        if isinstance(e, FileNotFoundError):
            return ObjectNotFound(f"no object {key!r} in {self.url}")
        cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return StorageError(f"cannot {op} {key!r} in {self.url}: {cause}")

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except _BACKEND_ERRORS as e:
            raise self._error(op, key, e) from e

    # -- writes

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        if self._local:
            with self.open_write(key) as f:
                f.write(data)
        else:
            # One PUT: S3 publishes it whole or not at all.
            self._call("write", key, lambda: self._fs.pipe_file(key, bytes(data)))

    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        check_key(key)
        return self._open_write_local(key) if self._local else self._open_write_s3(key)

    @contextmanager
    def _open_write_local(self, key: str) -> Iterator[BinaryIO]:
        path = os.path.join(self._root, *key.split("/"))
        folder = os.path.dirname(path)
        tmp = f"{path}.tmp-{secrets.token_hex(8)}"
        translate = lambda e: self._error("write", key, e)  # noqa: E731
        try:
            os.makedirs(folder, exist_ok=True)
            raw = open(tmp, "xb", buffering=LOCAL_WRITE_BUFFER)
        except OSError as e:
            raise translate(e) from e
        try:
            yield _TranslatingWriter(raw, translate)  # type: ignore[misc]
            try:
                raw.flush()
                os.fsync(raw.fileno())
                raw.close()
                os.replace(tmp, path)
                _fsync_dir(folder)
            except OSError as e:
                raise translate(e) from e
        finally:
            if not raw.closed:
                raw.close()
            if os.path.lexists(tmp):
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    @contextmanager
    def _open_write_s3(self, key: str) -> Iterator[BinaryIO]:
        translate = lambda e: self._error("write", key, e)  # noqa: E731
        raw = self._call("write", key, lambda: self._fs.open(key, "wb", block_size=S3_BLOCK_SIZE))
        try:
            yield _TranslatingWriter(raw, translate)  # type: ignore[misc]
        except BaseException:
            _discard_s3_file(raw)
            raise
        try:
            raw.close()  # uploads the last part and completes the upload
        except BaseException as e:
            _discard_s3_file(raw)
            if isinstance(e, _BACKEND_ERRORS):
                raise translate(e) from e
            raise

    # -- reads

    def get(self, key: str) -> bytes:
        check_key(key)
        # S3: max_concurrency=1 skips the HEAD that s3fs sends to split big reads.
        kwargs = {} if self._local else {"max_concurrency": 1}
        return self._call("read", key, lambda: self._fs.cat_file(key, **kwargs))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_key(key)
        _check_range(start, length)
        if length == 0:
            return b""
        data = self._call("read", key, lambda: self._fs.cat_file(key, start=start, end=start + length))
        if len(data) != length:
            raise _short_read(key, start, length, len(data))
        return data

    def _info(self, key: str) -> dict[str, Any]:
        info = self._call("stat", key, lambda: self._fs.info(key))
        if info.get("type") != "file":  # an S3 "folder" or a local directory
            raise ObjectNotFound(f"no object {key!r} in {self.url}")
        return info

    def size(self, key: str) -> int:
        check_key(key)
        return int(self._info(key)["size"])

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            self._info(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = _check_prefix(prefix)
        found = self._call("list", folder or "/", lambda: self._fs.find(folder, withdirs=False))
        start = folder + "/" if folder else ""
        keys = sorted(
            k.lstrip("/") for k in found if k.lstrip("/").startswith(start) and not _TEMP_SUFFIX.search(k)
        )
        return iter(keys)

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self._fs.rm_file(key)
        except FileNotFoundError:
            pass
        except _BACKEND_ERRORS as e:
            raise self._error("delete", key, e) from e


def _discard_s3_file(raw: Any) -> None:
    """Abort an s3fs upload so that no object appears.

    `S3File.discard()` aborts the multipart upload (if a part was sent) and
    drops the buffer. The file must then be marked closed: fsspec's `close()`,
    `__exit__` and `__del__` would otherwise commit whatever was buffered.
    """
    try:
        raw.discard()
    except Exception:  # noqa: BLE001 - best effort: an unfinished upload is invisible anyway
        pass
    raw.closed = True


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- URLs -------------------------------------------------------------------------------

_memory_stores: dict[str, MemoryStore] = {}
_memory_lock = threading.Lock()


def _public_url(url: str) -> str:
    """The URL without user info, query or fragment (where secrets could hide)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def open_store(url: str, *, s3_endpoint_url: str | None = None) -> ObjectStore:
    """Open the store at `file:///abs/path`, `s3://bucket/prefix` or `memory://name`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _open_file_store(url, parts.netloc, parts.path)
    if scheme == "s3":
        return _open_s3_store(url, parts.netloc, parts.path, s3_endpoint_url)
    if scheme == "memory":
        name = (parts.netloc + parts.path).strip("/") or "default"
        with _memory_lock:
            return _memory_stores.setdefault(name, MemoryStore(name))
    raise ConfigError(
        f"unsupported storage URL {_public_url(url)!r}: use file:///absolute/path, "
        "s3://bucket/prefix or memory://name"
    )


def _open_file_store(url: str, host: str, path: str) -> FsspecStore:
    from fsspec.implementations.local import LocalFileSystem

    if host not in ("", "localhost"):
        raise ConfigError(f"storage URL {url!r}: a file URL needs an absolute path (file:///path)")
    root = Path(unquote(path))
    if not root.is_absolute():
        raise ConfigError(f"storage URL {url!r}: the path must be absolute")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the storage folder {root}: {e}") from e
    return FsspecStore(
        LocalFileSystem(auto_mkdir=True),
        str(root),
        url=root.as_uri(),
        description=f"local folder {root}",
    )


def _open_s3_store(url: str, bucket: str, path: str, endpoint: str | None) -> FsspecStore:
    from s3fs import S3FileSystem

    _add_botocore_errors()

    bucket = bucket.rsplit("@", 1)[-1]
    if not bucket:
        raise ConfigError(f"storage URL {_public_url(url)!r}: no bucket (use s3://bucket/prefix)")
    prefix = unquote(path).strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError as e:
            raise ConfigError(f"storage URL {_public_url(url)!r}: bad prefix ({e})") from None
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    fs = S3FileSystem(endpoint_url=endpoint, use_listings_cache=False, skip_instance_cache=True)
    public = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    where = f" at {endpoint}" if endpoint else ""
    return FsspecStore(
        fs,
        f"{bucket}/{prefix}" if prefix else bucket,
        url=public,
        description=f"S3 bucket {bucket!r}, prefix {prefix!r}{where}",
    )

"""ObjectStore contract, run against every backend (memory, local folder, S3 on moto)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bkup.errors import ConfigError, StorageError
from bkup.storage.objects import MemoryStore, ObjectNotFound, ObjectStore, open_store


class Boom(Exception):
    pass


def test_store_satisfies_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.describe()
    assert "@" not in store.url


def test_put_get_range_size_exists_delete(store: ObjectStore, rng_bytes) -> None:
    data = rng_bytes(100_000, seed=1)
    store.put("packs/1/ab/abcdef", data)
    assert store.exists("packs/1/ab/abcdef")
    assert store.get("packs/1/ab/abcdef") == data
    assert store.size("packs/1/ab/abcdef") == len(data)
    assert store.get_range("packs/1/ab/abcdef", 0, 10) == data[:10]
    assert store.get_range("packs/1/ab/abcdef", 99_990, 10) == data[-10:]
    assert store.get_range("packs/1/ab/abcdef", 500, 0) == b""
    store.delete("packs/1/ab/abcdef")
    assert not store.exists("packs/1/ab/abcdef")
    store.delete("packs/1/ab/abcdef")  # missing is not an error


def test_put_overwrites_and_empty_objects(store: ObjectStore) -> None:
    store.put("a/empty", b"")
    assert store.exists("a/empty")
    assert store.get("a/empty") == b""
    assert store.size("a/empty") == 0
    store.put("a/x", b"one")
    store.put("a/x", b"two")
    assert store.get("a/x") == b"two"


def test_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    for call in (
        lambda: store.get("keys/404"),
        lambda: store.get_range("keys/404", 0, 1),
        lambda: store.size("keys/404"),
    ):
        with pytest.raises(ObjectNotFound, match="keys/404"):
            call()
    assert not store.exists("keys/404")
    assert issubclass(ObjectNotFound, StorageError)


def test_a_folder_is_not_an_object(store: ObjectStore) -> None:
    store.put("packs/1/ab/abc", b"x")
    assert not store.exists("packs/1")
    with pytest.raises(ObjectNotFound):
        store.size("packs/1/ab")


def test_range_past_the_end_is_a_short_read(store: ObjectStore) -> None:
    store.put("k/1", b"0123456789")
    with pytest.raises(StorageError, match="short read"):
        store.get_range("k/1", 5, 10)
    with pytest.raises(ValueError):
        store.get_range("k/1", -1, 2)


def test_list_is_recursive_relative_and_folder_scoped(store: ObjectStore) -> None:
    for key in ("keys/1", "keys/2", "keys10/1", "packs/1/ab/abc", "packs/1/cd/cde", "packs/2/ef/efg"):
        store.put(key, key.encode())
    assert list(store.list()) == sorted(["keys/1", "keys/2", "keys10/1", "packs/1/ab/abc", "packs/1/cd/cde", "packs/2/ef/efg"])
    assert list(store.list("")) == list(store.list())
    assert list(store.list("keys")) == ["keys/1", "keys/2"]
    assert list(store.list("keys/")) == ["keys/1", "keys/2"]
    assert list(store.list("packs/1")) == ["packs/1/ab/abc", "packs/1/cd/cde"]
    assert list(store.list("keys/1")) == []  # an object is not a folder
    assert list(store.list("manifests")) == []


def test_open_write_is_visible_only_after_close(store: ObjectStore) -> None:
    with store.open_write("manifests/1/1") as f:
        f.write(b"hello ")
        f.write(memoryview(b"world"))
        assert not store.exists("manifests/1/1")
        assert list(store.list()) == []
    assert store.get("manifests/1/1") == b"hello world"
    assert list(store.list()) == ["manifests/1/1"]


@pytest.mark.parametrize("size", [10, 9 * 2**20], ids=["small", "multipart"])
def test_open_write_that_raises_leaves_nothing(store: ObjectStore, backend: str, size: int, tmp_path, request) -> None:
    with pytest.raises(Boom):
        with store.open_write("packs/1/ab/abc") as f:
            f.write(b"x" * size)  # 9 MiB: s3fs has already uploaded a part
            raise Boom
    assert not store.exists("packs/1/ab/abc")
    assert list(store.list()) == []
    if backend == "file":
        assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []
    if backend == "s3":
        assert _pending_uploads(request) == []


def test_open_write_aborted_by_keyboard_interrupt_leaves_nothing(store: ObjectStore) -> None:
    with pytest.raises(KeyboardInterrupt):
        with store.open_write("k/1") as f:
            f.write(b"data")
            raise KeyboardInterrupt
    assert not store.exists("k/1")


def test_streamed_20_mib_write_in_1_mib_pieces(store: ObjectStore, backend: str, request) -> None:
    piece = os.urandom(2**20)
    digest = hashlib.sha256()
    with store.open_write("packs/7/00/big") as f:
        for i in range(20):
            chunk = piece[i:] + piece[:i]
            digest.update(chunk)
            f.write(chunk)
    assert store.size("packs/7/00/big") == 20 * 2**20
    assert hashlib.sha256(store.get("packs/7/00/big")).digest() == digest.digest()
    assert store.get_range("packs/7/00/big", 5 * 2**20 + 3, 4) == (piece[5:] + piece[:5])[3:7]
    if backend == "s3":
        # Parts went up while writing: the object is a multipart upload, not one buffered PUT.
        bucket, key = _bucket_key(request, "packs/7/00/big")
        etag = _s3_client(request).head_object(Bucket=bucket, Key=key)["ETag"]
        assert "-" in etag


BAD_KEYS = ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a/./b", "a\\b", "a\0b", "x.tmp-0123456789abcdef"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.open_write(key).__enter__(),
        lambda: store.get(key),
        lambda: store.get_range(key, 0, 1),
        lambda: store.size(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError):
            call()
    if key not in ("", "a/"):
        with pytest.raises(ValueError):
            list(store.list(key))


def test_concurrent_writers_from_threads(store: ObjectStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                with store.open_write(f"packs/{n}/00/{i}") as f:
                    f.write(b"%d-%d" % (n, i))
                assert store.get(f"packs/{n}/00/{i}") == b"%d-%d" % (n, i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(store.list("packs"))) == 30


# --- backend specifics -------------------------------------------------------------------


def test_local_leftover_temp_files_are_not_listed(tmp_path: Path) -> None:
    store = open_store((tmp_path / "s").as_uri())
    store.put("packs/1/ab/abc", b"x")
    (tmp_path / "s/packs/1/ab/abd.tmp-0123456789abcdef").write_bytes(b"half")  # a crash mid-write
    assert list(store.list()) == ["packs/1/ab/abc"]


def test_local_other_failures_are_storage_errors(tmp_path: Path) -> None:
    store = open_store((tmp_path / "s").as_uri())
    store.put("packs/1/ab/abc", b"x")
    with pytest.raises(StorageError, match="packs/1/ab") as info:
        store.get("packs/1/ab")  # a directory
    assert not isinstance(info.value, ObjectNotFound)
    with pytest.raises(StorageError, match="packs/1/ab/abc/x"):
        store.put("packs/1/ab/abc/x", b"y")  # parent is a file


def test_local_store_creates_its_folder_and_writes_atomically(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = open_store(root.as_uri())
    assert root.is_dir()
    assert store.url == root.as_uri()
    store.put("keys/1", b"k")
    assert (root / "keys" / "1").read_bytes() == b"k"


def test_open_store_rejects_unknown_and_malformed_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported storage URL"):
        open_store("gs://bucket/x")
    with pytest.raises(ConfigError, match="unsupported storage URL"):
        open_store(str(tmp_path))
    with pytest.raises(ConfigError, match="absolute"):
        open_store("file://relative/path")
    with pytest.raises(ConfigError, match="bucket"):
        open_store("s3:///prefix")


def test_memory_urls_name_one_store_per_process() -> None:
    a = open_store("memory://shared-name")
    b = open_store("memory://shared-name")
    assert a is b
    assert isinstance(a, MemoryStore)
    assert open_store("memory://other-name") is not a


def test_s3_endpoint_from_environment(s3_url: str, moto_endpoint: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    store = open_store(s3_url)
    store.put("keys/1", b"x")
    assert open_store(s3_url, s3_endpoint_url=moto_endpoint).get("keys/1") == b"x"
    assert moto_endpoint in store.describe()


def test_s3_url_hides_credentials(s3_url: str, moto_endpoint: str) -> None:
    bucket_and_prefix = s3_url.removeprefix("s3://")
    store = open_store(f"s3://user:secret@{bucket_and_prefix}", s3_endpoint_url=moto_endpoint)
    assert store.url == s3_url
    assert "secret" not in store.describe()


def test_s3_objects_are_visible_to_a_second_instance(s3_url: str, moto_endpoint: str) -> None:
    """Two replicas: no instance or listing cache may hide the other's writes."""
    a = open_store(s3_url, s3_endpoint_url=moto_endpoint)
    b = open_store(s3_url, s3_endpoint_url=moto_endpoint)
    assert list(b.list("keys")) == []
    assert not b.exists("keys/1")
    a.put("keys/1", b"x")
    assert b.exists("keys/1")
    assert list(b.list("keys")) == ["keys/1"]
    b.delete("keys/1")
    assert not a.exists("keys/1")


# --- helpers --------------------------------------------------------------------------------


def _s3_client(request):
    import boto3

    return boto3.client("s3", endpoint_url=request.getfixturevalue("moto_endpoint"), region_name="us-east-1")


def _bucket_key(request, key: str) -> tuple[str, str]:
    url = urlsplit(request.getfixturevalue("s3_url"))
    return url.netloc, f"{url.path.strip('/')}/{key}"


def _pending_uploads(request) -> list:
    bucket, _ = _bucket_key(request, "x")
    return _s3_client(request).list_multipart_uploads(Bucket=bucket).get("Uploads", [])

"""Master key file and per-user data keys."""

from __future__ import annotations

import base64
import json
import stat
import threading
from pathlib import Path

import pytest

from bkup.errors import ConfigError, Conflict, IntegrityError
from bkup.storage.keys import KeyStore, load_or_create_master_key, master_key_from_text
from bkup.storage.objects import MemoryStore, ObjectNotFound, ObjectStore

MASTER = bytes(range(32))


def test_master_key_is_created_0600_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "master.key"
    key, created = load_or_create_master_key(path)
    assert created and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == base64.b64encode(key).decode() + "\n"
    assert load_or_create_master_key(path) == (key, False)
    assert master_key_from_text(path.read_text()) == key


def test_master_key_with_lax_permissions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        load_or_create_master_key(path)


@pytest.mark.parametrize("content", ["", "not base64!!\n", base64.b64encode(b"short").decode()])
def test_malformed_master_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "master.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="malformed"):
        load_or_create_master_key(path)


def test_master_key_from_text_checks_length() -> None:
    assert master_key_from_text(base64.b64encode(MASTER).decode()) == MASTER
    with pytest.raises(ConfigError):
        master_key_from_text(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(ConfigError):
        master_key_from_text("%%%")


def test_user_keys_round_trip_on_every_store(store: ObjectStore) -> None:
    keys = KeyStore(store, MASTER)
    k1 = keys.create_user_key(1, "alice")
    k2 = keys.create_user_key(2, "bob")
    assert len(k1) == 32 and k1 != k2
    assert keys.user_key(1) == k1
    fresh = KeyStore(store, MASTER)  # no cache: unwraps from storage
    assert fresh.user_key(1) == k1 and fresh.user_key(2) == k2
    assert fresh.list_users() == [(1, "alice"), (2, "bob")]
    record = json.loads(store.get("keys/1"))
    assert record["version"] == 1 and record["user_id"] == 1 and record["name"] == "alice"
    assert k1 not in base64.b64decode(record["wrapped"])
    fresh.delete_user_key(1)
    assert fresh.list_users() == [(2, "bob")]
    with pytest.raises(ObjectNotFound, match="user 1"):
        KeyStore(store, MASTER).user_key(1)


def test_overwrite_is_refused() -> None:
    store = MemoryStore()
    KeyStore(store, MASTER).create_user_key(1, "alice")
    with pytest.raises(Conflict):
        KeyStore(store, MASTER).create_user_key(1, "mallory")


def test_wrong_master_key_is_a_config_error() -> None:
    store = MemoryStore()
    KeyStore(store, MASTER).create_user_key(1, "alice")
    with pytest.raises(ConfigError, match="master key does not match the storage"):
        KeyStore(store, bytes(32)).user_key(1)


def test_a_key_moved_to_another_user_does_not_unwrap() -> None:
    store = MemoryStore()
    KeyStore(store, MASTER).create_user_key(1, "alice")
    record = json.loads(store.get("keys/1"))
    record["user_id"] = 2
    store.put("keys/2", json.dumps(record).encode())
    with pytest.raises(ConfigError):
        KeyStore(store, MASTER).user_key(2)
    store.put("keys/3", b"{not json")
    with pytest.raises(IntegrityError):
        KeyStore(store, MASTER).user_key(3)


def test_user_key_is_cached_and_thread_safe() -> None:
    store = MemoryStore()
    key = KeyStore(store, MASTER).create_user_key(5, "e")
    keys = KeyStore(store, MASTER)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(keys.user_key(5))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [key] * 8
    store.delete("keys/5")
    assert keys.user_key(5) == key  # cached: keys never change

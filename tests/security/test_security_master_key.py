"""Master key rotation (docs/security.md §5): rewrapping keys/* under a new master key keeps every pack readable."""

from __future__ import annotations

import os

import pytest

from bkup.errors import ConfigError
from bkup.storage.keys import KeyStore, rewrap_master
from bkup.storage.objects import MemoryStore, open_store


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_rewrap_master_keeps_every_data_key_and_the_old_master_stops_working(kind, tmp_path):
    store = MemoryStore() if kind == "memory" else open_store((tmp_path / "store").as_uri())
    old, new = os.urandom(32), os.urandom(32)
    ks = KeyStore(store, old)
    keys = {uid: ks.create_user_key(uid, f"user{uid}") for uid in (1, 2, 7)}
    with pytest.raises(ConfigError):
        rewrap_master(store, os.urandom(32), new)  # a wrong old key changes nothing
    assert all(KeyStore(store, old).user_key(u) == k for u, k in keys.items())
    assert rewrap_master(store, old, new) == 3
    assert {u: KeyStore(store, new).user_key(u) for u in keys} == keys
    assert KeyStore(store, new).list_users() == [(1, "user1"), (2, "user2"), (7, "user7")]
    with pytest.raises(ConfigError, match="master key does not match"):
        KeyStore(store, old).user_key(1)

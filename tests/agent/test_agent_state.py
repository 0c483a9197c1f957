"""The local state cache, the agent identity file and stored login credentials."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bkup.agent.credentials import load_credentials, store_credentials
from bkup.agent.state import AgentIdentity, CachedEntry, StateCache, load_identity, save_identity
from bkup.errors import ConfigError


def entry(**kw) -> CachedEntry:
    base = dict(kind="file", size=1, mtime_ns=2, ctime_ns=3, inode=4, mode=0o644, uid=0, gid=0, content="c" * 64)
    return CachedEntry(**{**base, **kw})


def test_put_get_delete(tmp_path):
    with StateCache.open(tmp_path, server="http://s", client_id=1) as cache:
        assert cache.get("/a") is None
        cache.put_many([("/a", entry()), ("/a/\\xff\nb", entry(kind="dir", content=""))])
        assert cache.get("/a") == entry()
        assert cache.get("/a/\\xff\nb").kind == "dir"
        cache.put_many([("/a", entry(size=9))])
        assert cache.get("/a").size == 9 and len(cache) == 2
        cache.delete_many(["/a"])
        assert cache.get("/a") is None and len(cache) == 1


def test_inode_numbers_above_2_63_survive(tmp_path):
    with StateCache.open(tmp_path, server="http://s", client_id=1) as cache:
        cache.put_many([("/big", entry(inode=2**64 - 5))])
        assert cache.get("/big").inode == 2**64 - 5


def test_it_persists_and_is_bound_to_server_and_client(tmp_path):
    with StateCache.open(tmp_path, server="http://s", client_id=1) as cache:
        cache.put_many([("/a", entry())])
    with StateCache.open(tmp_path, server="http://s", client_id=1) as cache:
        assert cache.get("/a") == entry()
    with StateCache.open(tmp_path, server="http://s", client_id=2) as cache:
        assert cache.get("/a") is None  # another client: nothing is known to be on the server
    with StateCache.open(tmp_path, server="http://s", client_id=2) as cache:
        assert len(cache) == 0


def test_unseen_under_finds_exactly_the_missing_paths_below_the_prefixes(tmp_path):
    with StateCache.open(tmp_path, server="http://s", client_id=1) as cache:
        paths = ["/a", "/a/x", "/a/y", "/a.b", "/a0", "/ab/c", "/other/z"]
        cache.put_many([(p, entry()) for p in paths])
        cache.begin_walk()
        cache.mark_seen(["/a", "/a/x"])
        assert cache.unseen_under(["/a"]) == [("/a/y", "file")]
        assert [p for p, _ in cache.unseen_under(["/a", "/other"])] == ["/a/y", "/other/z"]
        assert len(cache.unseen_under(["/"])) == 5
        cache.begin_walk()  # a new walk forgets what the previous one saw
        assert len(cache.unseen_under(["/a"])) == 3


def test_a_walk_from_an_empty_cache_finds_no_deletions_though_its_commits_fill_the_cache(tmp_path):
    with StateCache.open(tmp_path, server="http://s", client_id=1) as cache:
        cache.begin_walk()
        cache.mark_seen(["/a"])  # nothing to mark: nothing was cached before this walk
        cache.put_many([("/a", entry()), ("/a/x", entry())])  # the walk's commits
        assert cache.unseen_under(["/"]) == []
        cache.begin_walk()  # the next walk starts from a filled cache and finds what it misses
        cache.mark_seen(["/a"])
        assert cache.unseen_under(["/"]) == [("/a/x", "file")]


def test_identity_file_is_private_and_round_trips(tmp_path):
    ident = AgentIdentity(server="http://s", client_id=3, client_name="pc", token="bkup_a_secret")
    path = save_identity(tmp_path / "state", ident)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert load_identity(tmp_path / "state") == ident
    assert "secret" not in repr(ident)
    assert load_identity(tmp_path / "elsewhere") is None
    path.write_text("{nonsense")
    with pytest.raises(ConfigError, match="agent.json"):
        load_identity(tmp_path / "state")


def test_an_identity_file_with_wide_permissions_is_tightened(tmp_path):
    (tmp_path / "agent.json").write_text("{}")
    os.chmod(tmp_path / "agent.json", 0o644)
    save_identity(tmp_path, AgentIdentity("http://s", 1, "pc", "t"))
    assert stat.S_IMODE(os.stat(tmp_path / "agent.json").st_mode) == 0o600


def test_credentials_are_keyed_by_normalized_server_url(tmp_path):
    store_credentials(tmp_path / "cfg", "http://s:8200/", "alice", "tok1")
    store_credentials(tmp_path / "cfg", "http://other", "bob", "tok2")
    path = tmp_path / "cfg" / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_credentials(tmp_path / "cfg") == {
        "http://s:8200": {"user": "alice", "token": "tok1"},
        "http://other": {"user": "bob", "token": "tok2"},
    }
    assert json.loads(path.read_text())["servers"]["http://other"]["user"] == "bob"

"""The REST API in-process: auth, ownership, the backup data path, and clear 4xx answers to bad input."""

from __future__ import annotations

import random

import pytest

from bkup.core.frames import FrameParser, decode_frame, encode_chunk, end_marker, stream_header
from bkup.core.hashing import chunk_id

API = "/api/v1"


def frames_body(chunks: list[bytes]) -> bytes:
    return stream_header() + b"".join(encode_chunk(c).to_bytes() for c in chunks) + end_marker(len(chunks))


def upload(http, account, chunks: list[bytes]):
    return http.post(f"{API}/chunks", content=frames_body(chunks), headers=account.agent)


def start_run(http, account) -> dict:
    r = http.post(f"{API}/runs", json={"trigger": "manual"}, headers=account.agent)
    assert r.status_code == 201, r.text
    return r.json()


def file_entry(path: str, chunks: list[bytes], **kw) -> dict:
    return {"path": path, "kind": "file", "size": sum(map(len, chunks)), "mtime_ns": kw.get("mtime_ns", 1_700_000_000_000_000_000),
            "mode": 0o644, "uid": 1000, "gid": 1000, "chunks": [chunk_id(c) for c in chunks]}


def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- auth -----------------------------------------------------------------------


def test_login_wrong_password_is_401_with_a_message(http, alice):
    r = http.post(f"{API}/auth/login", json={"user": "alice", "password": "nope-nope"})
    assert r.status_code == 401
    assert r.json()["detail"] == "wrong user name or password"
    r = http.post(f"{API}/auth/login", json={"user": "nobody", "password": "nope-nope"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"


def test_failed_logins_are_rate_limited(http, alice):
    codes = [http.post(f"{API}/auth/login", json={"user": "alice", "password": "wrong-wrong"}).status_code for _ in range(12)]
    assert codes[:10] == [401] * 10
    assert codes[10:] == [429, 429]


def test_missing_or_bad_token_is_401(http, alice):
    assert http.get(f"{API}/clients").status_code == 401
    r = http.get(f"{API}/clients", headers={"Authorization": "Bearer bkup_u_forged"})
    assert r.status_code == 401 and "invalid" in r.json()["detail"]


def test_unknown_fields_and_bad_json_are_400(http, alice):
    r = http.post(f"{API}/clients", json={"name": "x", "bogus": 1}, headers=alice.auth)
    assert r.status_code == 400
    r = http.post(f"{API}/clients", content=b"{not json", headers={**alice.auth, "content-type": "application/json"})
    assert r.status_code == 400


def test_users_are_admin_only(http, alice, root):
    assert http.get(f"{API}/users", headers=alice.auth).status_code == 403
    r = http.post(f"{API}/users", json={"name": "carol", "password": "long-enough"}, headers=root.auth)
    assert r.status_code == 201 and r.json()["name"] == "carol"
    names = [u["name"] for u in http.get(f"{API}/users", headers=root.auth).json()]
    assert names == ["alice", "carol", "root"]
    r = http.post(f"{API}/users", json={"name": "carol", "password": "long-enough"}, headers=root.auth)
    assert r.status_code == 409
    r = http.post(f"{API}/users", json={"name": "../x", "password": "long-enough"}, headers=root.auth)
    assert r.status_code == 400 and "invalid user name" in r.json()["detail"]


# --- clients and ownership ---------------------------------------------------------------


def test_clients_are_visible_to_owner_and_admin_only(http, alice, bob, root):
    mine = http.get(f"{API}/clients", headers=alice.auth).json()
    assert [c["name"] for c in mine] == ["alice-pc"]
    assert http.get(f"{API}/clients/{bob.client_id}", headers=alice.auth).status_code == 404
    assert http.get(f"{API}/clients/{bob.client_id}/tree", headers=alice.auth).status_code == 404
    assert http.get(f"{API}/clients/{bob.client_id}", headers=root.auth).status_code == 200
    assert {c["name"] for c in http.get(f"{API}/clients", headers=root.auth).json()} == {"alice-pc", "bob-pc", "root-pc"}
    # An agent token sees its own client only.
    assert http.get(f"{API}/clients/{bob.client_id}", headers=alice.agent).status_code == 404
    me = http.get(f"{API}/agent/me", headers=alice.agent).json()
    assert me["id"] == alice.client_id and me["user"] == "alice"


def test_agent_tokens_cannot_manage(http, alice):
    assert http.post(f"{API}/clients", json={"name": "evil"}, headers=alice.agent).status_code == 403
    assert http.post(f"{API}/clients/{alice.client_id}/token", headers=alice.agent).status_code == 403
    assert http.get(f"{API}/users", headers=alice.agent).status_code == 403


def test_client_names_are_unique_and_validated(http, alice, bob):
    assert http.post(f"{API}/clients", json={"name": "alice-pc"}, headers=bob.auth).status_code == 409
    r = http.post(f"{API}/clients", json={"name": "a b/c"}, headers=bob.auth)
    assert r.status_code == 400 and "invalid client name" in r.json()["detail"]


def test_rotating_the_token_revokes_the_old_one(http, alice):
    r = http.post(f"{API}/clients/{alice.client_id}/token", headers=alice.auth)
    assert r.status_code == 201
    assert http.get(f"{API}/agent/me", headers=alice.agent).status_code == 401
    assert http.get(f"{API}/agent/me", headers={"Authorization": f"Bearer {r.json()['token']}"}).status_code == 200


# --- the data path ------------------------------------------------------------------------


def test_backup_then_read_back(http, alice):
    a, b = data(300_000, 1), data(70_000, 2)
    ids = [chunk_id(a), chunk_id(b)]
    r = http.post(f"{API}/chunks/missing", json={"ids": ids}, headers=alice.agent)
    assert r.json()["missing"] == ids
    r = upload(http, alice, [a, b, a])
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 3, "stored": 2, "duplicates": 1, "bytes_stored": r.json()["bytes_stored"]}
    assert http.post(f"{API}/chunks/missing", json={"ids": ids}, headers=alice.agent).json()["missing"] == []
    # A second upload of the same data stores nothing.
    assert upload(http, alice, [b]).json()["stored"] == 0

    run = start_run(http, alice)
    assert run["seq"] == 1 and run["status"] == "running"
    entries = [
        {"path": "/home", "kind": "dir", "mode": 0o755, "mtime_ns": 5},
        file_entry("/home/a.bin", [a, b]),
        {"path": "/home/link", "kind": "symlink", "link_target": "a.bin"},
        file_entry("/home/empty", []),
    ]
    r = http.post(f"{API}/runs/{run['id']}/versions", json={"entries": entries}, headers=alice.agent)
    assert r.status_code == 200, r.text
    assert r.json() == {"committed": 4, "unchanged": 0}
    stats = {"files_seen": 2, "files_changed": 2, "bytes_scanned": len(a) + len(b)}
    r = http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": stats}, headers=alice.agent)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["stats"]["files_changed"] == 2

    tree = http.get(f"{API}/clients/{alice.client_id}/tree", params={"path": "/home"}, headers=alice.auth).json()
    assert tree["run"] == 1
    assert [(e["name"], e["kind"]) for e in tree["entries"]] == [("a.bin", "file"), ("empty", "file"), ("link", "symlink")]
    page = http.get(f"{API}/clients/{alice.client_id}/files", params={"chunks": "true"}, headers=alice.agent).json()
    by_path = {e["path"]: e for e in page["entries"]}
    assert by_path["/home/a.bin"]["chunks"] == ids and by_path["/home/empty"]["chunks"] == []

    r = http.post(f"{API}/chunks/read", json={"client_id": alice.client_id, "ids": ids}, headers=alice.agent)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-bkup-frames")
    parser = FrameParser()
    frames = parser.feed(r.content)
    parser.close()
    assert [decode_frame(f) for f in frames] == [a, b]


def test_upload_with_a_wrong_id_is_refused_and_records_nothing(http, alice):
    good, bad = data(1000, 3), data(1000, 4)
    frame = encode_chunk(bad)
    forged = frame.__class__(id=chunk_id(b"something else"), flags=frame.flags, raw_len=frame.raw_len, data=frame.data)
    body = stream_header() + encode_chunk(good).to_bytes() + forged.to_bytes() + end_marker(2)
    r = http.post(f"{API}/chunks", content=body, headers=alice.agent)
    assert r.status_code == 400
    missing = http.post(f"{API}/chunks/missing", json={"ids": [chunk_id(good)]}, headers=alice.agent).json()["missing"]
    assert missing == [chunk_id(good)]


@pytest.mark.parametrize("cut", [3, 50, -1])
def test_truncated_upload_records_nothing(http, alice, cut):
    chunk = data(5000, 5)
    body = frames_body([chunk])
    body = body[:cut] if cut > 0 else body[: -len(end_marker(1))]
    r = http.post(f"{API}/chunks", content=body, headers=alice.agent)
    assert r.status_code == 400
    assert http.post(f"{API}/chunks/missing", json={"ids": [chunk_id(chunk)]}, headers=alice.agent).json()["missing"] == [chunk_id(chunk)]


def test_commit_naming_unknown_chunks_is_409_listing_them(http, alice):
    run = start_run(http, alice)
    known, unknown = data(100, 6), data(100, 7)
    upload(http, alice, [known])
    r = http.post(f"{API}/runs/{run['id']}/versions", json={"entries": [file_entry("/f", [known, unknown])]}, headers=alice.agent)
    assert r.status_code == 409
    assert r.json()["extra"]["missing"] == [chunk_id(unknown)]
    assert http.get(f"{API}/clients/{alice.client_id}/files", headers=alice.auth).json()["entries"] == []


def test_chunks_are_per_user(http, alice, bob):
    secret = data(2000, 8)
    upload(http, alice, [secret])
    # Bob's agent is told the chunk is missing (no hint alice has it), and cannot commit or read it.
    assert http.post(f"{API}/chunks/missing", json={"ids": [chunk_id(secret)]}, headers=bob.agent).json()["missing"] == [chunk_id(secret)]
    run = start_run(http, bob)
    assert http.post(f"{API}/runs/{run['id']}/versions", json={"entries": [file_entry("/s", [secret])]}, headers=bob.agent).status_code == 409
    r = http.post(f"{API}/chunks/read", json={"client_id": bob.client_id, "ids": [chunk_id(secret)]}, headers=bob.agent)
    assert r.status_code == 404
    r = http.post(f"{API}/chunks/read", json={"client_id": alice.client_id, "ids": [chunk_id(secret)]}, headers=bob.agent)
    assert r.status_code == 404


def test_versions_change_and_as_of(http, alice):
    v1, v2 = data(10, 9), data(20, 10)
    upload(http, alice, [v1, v2])
    r1 = start_run(http, alice)
    http.post(f"{API}/runs/{r1['id']}/versions", json={"entries": [file_entry("/f", [v1]), file_entry("/g", [v1])]}, headers=alice.agent)
    http.post(f"{API}/runs/{r1['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)
    r2 = start_run(http, alice)
    r = http.post(f"{API}/runs/{r2['id']}/versions", json={"entries": [file_entry("/f", [v2]), file_entry("/g", [v1])]}, headers=alice.agent)
    assert r.json() == {"committed": 1, "unchanged": 1}
    r = http.post(f"{API}/runs/{r2['id']}/deletions", json={"paths": ["/g"]}, headers=alice.agent)
    assert r.json() == {"closed": 1}
    http.post(f"{API}/runs/{r2['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)

    def names(**params):
        return [(e["name"], e["size"]) for e in http.get(f"{API}/clients/{alice.client_id}/tree", params=params, headers=alice.auth).json()["entries"]]

    assert names(run=1) == [("f", 10), ("g", 10)]
    assert names() == [("f", 20)]
    r = http.get(f"{API}/clients/{alice.client_id}/tree", params={"at": "2000-01-01T00:00:00Z"}, headers=alice.auth)
    assert r.status_code == 404 and "no backup at or before" in r.json()["detail"]
    hist = http.get(f"{API}/clients/{alice.client_id}/history", params={"path": "/f"}, headers=alice.auth).json()
    assert [(v["size"], v["valid_from"], v["valid_to"]) for v in hist["versions"]] == [(20, 2, None), (10, 1, 2)]
    assert http.get(f"{API}/clients/{alice.client_id}/tree", params={"run": 9}, headers=alice.auth).status_code == 404
    assert http.get(f"{API}/clients/{alice.client_id}/tree", params={"at": "yesterday"}, headers=alice.auth).status_code == 400
    assert http.get(f"{API}/clients/{alice.client_id}/tree", params={"path": "/a/../b"}, headers=alice.auth).status_code == 400


def test_summary_counts_what_a_restore_of_the_path_would_write(http, alice):
    def summary(**params):
        r = http.get(f"{API}/clients/{alice.client_id}/summary", params=params, headers=alice.agent)
        assert r.status_code == 200, r.text
        return {k: r.json()[k] for k in ("run", "files", "dirs", "symlinks", "bytes")}

    assert summary() == {"run": None, "files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}  # no runs yet
    a, b = data(3000, 11), data(500, 12)
    upload(http, alice, [a, b])
    run = start_run(http, alice)
    entries = [
        {"path": "/srv", "kind": "dir"},
        {"path": "/srv/d", "kind": "dir"},
        file_entry("/srv/d/a", [a, b]),
        file_entry("/srv/d0", [b]),  # sorts right after "/srv/d/...": not under /srv/d
        {"path": "/srv/d/l", "kind": "symlink", "link_target": "a"},
        file_entry("/top", [a]),
    ]
    assert http.post(f"{API}/runs/{run['id']}/versions", json={"entries": entries}, headers=alice.agent).status_code == 200
    http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)
    r2 = start_run(http, alice)
    assert http.post(f"{API}/runs/{r2['id']}/deletions", json={"paths": ["/top"]}, headers=alice.agent).json() == {"closed": 1}
    http.post(f"{API}/runs/{r2['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)

    assert summary() == {"run": 2, "files": 2, "dirs": 2, "symlinks": 1, "bytes": 3500 + 500}
    assert summary(run=1) == {"run": 1, "files": 3, "dirs": 2, "symlinks": 1, "bytes": 3500 + 500 + 3000}
    assert summary(path="/srv/d") == {"run": 2, "files": 1, "dirs": 1, "symlinks": 1, "bytes": 3500}
    assert summary(path="/srv/d/a") == {"run": 2, "files": 1, "dirs": 0, "symlinks": 0, "bytes": 3500}
    assert summary(path="/top") == {"run": 2, "files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    # The same totals as the listing it stands for.
    listed = http.get(f"{API}/clients/{alice.client_id}/files", params={"path": "/srv", "run": 1}, headers=alice.agent).json()["entries"]
    assert sum(e["size"] for e in listed if e["kind"] == "file") == summary(path="/srv", run=1)["bytes"]
    assert http.get(f"{API}/clients/{alice.client_id}/summary", params={"path": "/a/../b"}, headers=alice.auth).status_code == 400
    assert http.get(f"{API}/clients/{alice.client_id}/summary", params={"run": 9}, headers=alice.auth).status_code == 404


def test_finished_runs_accept_no_more_versions(http, alice):
    run = start_run(http, alice)
    http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)
    r = http.post(f"{API}/runs/{run['id']}/versions", json={"entries": [{"path": "/d", "kind": "dir"}]}, headers=alice.agent)
    assert r.status_code == 409 and "already finished" in r.json()["detail"]


def test_another_agent_cannot_touch_my_run(http, alice, bob):
    run = start_run(http, alice)
    r = http.post(f"{API}/runs/{run['id']}/versions", json={"entries": [{"path": "/d", "kind": "dir"}]}, headers=bob.agent)
    assert r.status_code == 404
    assert http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=bob.agent).status_code == 404


def test_openapi_schema_is_served(http):
    r = http.get("/schema/openapi.json")
    assert r.status_code == 200 and "/api/v1/chunks/read" in r.json()["paths"]

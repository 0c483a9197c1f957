"""Malformed and oversized bodies: frame streams and JSON that break the format get a clean 4xx, and leave nothing behind."""

from __future__ import annotations

import json
import struct

import pytest
import zstandard
from security_kit import API, cheap_passwords, world

from bkup import protocol
from bkup.core.frames import FLAG_ZSTD, HEADER_SIZE, encode_chunk, end_marker, stream_header
from bkup.core.hashing import chunk_id

HEADER = struct.Struct(">32sBII")
GOOD = b"good data " * 100
GOOD_FRAME = encode_chunk(GOOD)
BOMB_RAW = bytes(4 * 2**20)  # 4 MiB of zeros: a few hundred bytes of zstd


def _frame(cid: bytes, flags: int, raw_len: int, data: bytes) -> bytes:
    return HEADER.pack(cid, flags, raw_len, len(data)) + data


def _stream(*frames: bytes, count: int | None = None) -> bytes:
    return stream_header() + b"".join(frames) + end_marker(len(frames) if count is None else count)


BAD_STREAMS = {
    "empty": b"",
    "garbage": b"GET / HTTP/1.1\r\n\r\n",
    "wrong magic": b"BKF2" + end_marker(0),
    "magic only": stream_header(),
    "cut in a header": stream_header() + GOOD_FRAME.to_bytes()[:HEADER_SIZE - 3],
    "cut in the data": stream_header() + GOOD_FRAME.to_bytes()[:-5],
    "no end marker": stream_header() + GOOD_FRAME.to_bytes(),
    "end marker miscounts": _stream(GOOD_FRAME.to_bytes(), count=2),
    "bytes after the end": _stream(GOOD_FRAME.to_bytes()) + b"x",
    "unknown flags": _stream(_frame(bytes.fromhex(GOOD_FRAME.id), 0x80, 5, b"12345")),
    "raw_len 0": _stream(_frame(bytes(32), 0, 0, b"")),
    "raw_len over 4 MiB": _stream(_frame(bytes(32), 0, 4 * 2**20 + 1, b"")),
    "data longer than raw_len": _stream(_frame(bytes(32), FLAG_ZSTD, 3, b"12345")),
    "wrong id": _stream(_frame(bytes(32), 0, 5, b"12345")),
    "not zstd": _stream(_frame(bytes.fromhex(chunk_id(b"12345")), FLAG_ZSTD, 5, b"1234")),
    "zstd of other bytes": _stream(_frame(bytes.fromhex(chunk_id(b"12345")), FLAG_ZSTD, 5,
                                          zstandard.ZstdCompressor().compress(b"54321"))),
    # A zstd frame that claims 5 bytes but decompresses to 4 MiB: never inflated past raw_len.
    "zstd bomb": _stream(_frame(bytes.fromhex(chunk_id(b"12345")), FLAG_ZSTD, 5,
                                zstandard.ZstdCompressor(write_content_size=False).compress(BOMB_RAW))),
    "good then bad": _stream(GOOD_FRAME.to_bytes(), _frame(bytes(32), 0, 5, b"12345")),
}


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    cheap_passwords()
    with world(tmp_path_factory.mktemp("hostile")) as w:
        yield w


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_a_malformed_frame_stream_is_a_clean_400_and_stores_nothing(w, name):
    before = sorted(w.ctx.store.list("packs/"))
    r = w.http.post(f"{API}/chunks", content=BAD_STREAMS[name], headers=w.headers("agentA"))
    assert r.status_code == 400, (name, r.status_code, r.text)
    assert r.json()["status_code"] == 400 and r.json()["detail"]
    assert sorted(w.ctx.store.list("packs/")) == before
    missing = w.http.post(f"{API}/chunks/missing", json={"ids": [GOOD_FRAME.id]}, headers=w.headers("agentA")).json()
    assert missing["missing"] == [GOOD_FRAME.id]  # "good then bad": the good frame was not recorded either


def test_an_upload_over_the_limit_is_413(w):
    body = b"\x00" * (protocol.MAX_UPLOAD_BYTES + 2 * 2**20)
    r = w.http.post(f"{API}/chunks", content=body, headers=w.headers("agentA"))
    assert r.status_code == 413, r.text


BAD_JSON = {
    "not json": b"{not json",
    "truncated": b'{"ids": ["ab',
    "wrong type": json.dumps({"ids": "abc"}).encode(),
    "unknown field": json.dumps({"ids": [], "evil": 1}).encode(),
    "array": b"[1,2,3]",
    "null": b"null",
    "deep nesting": b'{"ids": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "huge number": b'{"ids": [' + b"9" * 5000 + b"]}",
    "bad id": json.dumps({"ids": ["../../etc/passwd"]}).encode(),
    "too many ids": json.dumps({"ids": ["ab" * 32] * (protocol.MAX_IDS_PER_QUERY + 1)}).encode(),
    "nul bytes": b'{"ids": ["\\u0000"]}',
    "invalid utf-8": b'{"ids": ["\xff\xfe"]}',
}


@pytest.mark.parametrize("name", list(BAD_JSON))
@pytest.mark.parametrize("route", ["/chunks/missing", "/chunks/read", "/runs/{run}/versions", "/runs/{run}/deletions",
                                   "/clients", "/auth/login", "/agent/logs"])
def test_malformed_json_is_a_clean_4xx(w, name, route):
    caller = "A" if route in ("/chunks/read", "/clients") else "agentA"
    url = API + route.replace("{run}", str(w.parties["A"].run_id))
    r = w.http.post(url, content=BAD_JSON[name], headers={**w.headers(caller), "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (name, route, r.status_code, r.text)
    assert r.json()["status_code"] == r.status_code


def test_a_json_body_over_the_limit_is_413(w):
    body = b'{"name": "' + b"x" * (11 * 2**20) + b'"}'
    r = w.http.post(f"{API}/clients", content=body, headers={**w.headers("A"), "Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["../etc", "/a/../../b", "", "a\x00b", "//", "/a//b", "/a/./b", "a/b"],
                         ids=["dotdot", "escape", "empty", "nul", "root-twice", "double-slash", "dot", "relative"])
def test_hostile_paths_in_a_commit_are_refused_and_commit_nothing(w, path):
    run = w.parties["A"].run_id
    entry = {"path": path, "kind": "dir", "mode": 0o755}
    r = w.http.post(f"{API}/runs/{run}/versions", json={"entries": [entry]}, headers=w.headers("agentA"))
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    tree = w.http.get(f"{API}/clients/{w.parties['A'].client_id}/files?path=/", headers=w.headers("A")).json()
    assert all(".." not in e["path"].split("/") for e in tree["entries"])


@pytest.mark.parametrize("query", ["path=../x", "path=%00", "run=0", "run=-1", "run=abc", "at=yesterday",
                                   "at=9999-99-99", "limit=0", "limit=100000", "after=%ff", "chunks=maybe"])
def test_hostile_query_parameters_are_a_clean_4xx_or_an_empty_answer(w, query):
    r = w.http.get(f"{API}/clients/{w.parties['A'].client_id}/files?{query}", headers=w.headers("A"))
    assert r.status_code < 500, (query, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["status_code"] == r.status_code


BIG = 2**64  # past every 64-bit column: found by schemathesis as a 500 (OverflowError in the SQLite driver)


@pytest.mark.parametrize("field", ["size", "mtime_ns", "mode", "uid", "gid"])
def test_integers_past_64_bits_in_a_commit_are_a_400(w, field):
    entry = {"path": f"/big-{field}", "kind": "dir", field: BIG}
    r = w.http.post(f"{API}/runs/{w.parties['A'].run_id}/versions", json={"entries": [entry]}, headers=w.headers("agentA"))
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("method,route,caller,body", [
    ("GET", "/clients/{big}", "admin", None),
    ("GET", "/clients/{big}/files", "admin", None),
    ("GET", "/clients/{big}/policy", "admin", None),
    ("POST", "/runs/{big}/finish", "agentA", {"status": "ok", "stats": {}}),
    ("GET", "/users/{big}/policy", "admin", None),
    ("PUT", "/users/{big}/alerts", "admin", {"webhook": None}),
    ("POST", "/chunks/read", "admin", {"client_id": BIG, "ids": []}),
    ("POST", "/runs/{run}/finish", "agentA", {"status": "ok", "stats": {"files_seen": BIG}}),
    ("POST", "/agent/logs", "agentA", {"entries": [{"ts": "2026-01-01T00:00:00", "level": "info", "message": "x", "run_seq": BIG}]}),
])
def test_ids_and_counts_past_64_bits_are_a_clean_4xx(w, method, route, caller, body):
    url = API + route.format(big=BIG, run=w.parties["A"].run_id)
    r = w.http.request(method, url, headers=w.headers(caller), **({"json": body} if body is not None else {}))
    assert r.status_code in (400, 404), (r.status_code, r.text)

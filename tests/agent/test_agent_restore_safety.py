"""Restore against a hostile or broken server (httpx.MockTransport): nothing escapes the target, no wrong bytes land."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from bkup.agent import restore as restore_mod
from bkup.agent.api import ApiClient
from bkup.agent.restore import restore_tree
from bkup.core.frames import Frame, end_marker, stream_header
from bkup.core.hashing import chunk_id, content_id
from bkup.errors import Conflict, NotFound


class FakeServer:
    """Serves one listing and chunk reads; can lie, drop chunks, cut streams or add frames nobody asked for."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.chunks: dict[str, bytes] = {}
        self.lies: dict[str, bytes] = {}  # id → bytes served instead of the real ones
        self.absent: set[str] = set()  # 404 for any request naming these
        self.cut_next = 0  # how many chunk reads to cut short
        self.extra: list[Frame] = []
        self.reads: list[list[str]] = []

    def file(self, path: str, data: bytes, *, size: int | None = None, mode: int = 0o644, mtime_ns: int = 10**18, piece: int = 0) -> list[str]:
        pieces = [data[i : i + piece] for i in range(0, len(data), piece)] if piece and data else ([data] if data else [])
        ids = []
        for p in pieces:
            cid = chunk_id(p)
            self.chunks[cid] = p
            ids.append(cid)
        self.entries.append(self._entry(path, "file", size=len(data) if size is None else size, mode=mode, mtime_ns=mtime_ns,
                                        chunks=ids, content_id=content_id(ids)))
        return ids

    def dir(self, path: str, mode: int = 0o755, mtime_ns: int = 10**18) -> None:
        self.entries.append(self._entry(path, "dir", mode=mode, mtime_ns=mtime_ns))

    def symlink(self, path: str, target: str) -> None:
        self.entries.append(self._entry(path, "symlink", size=len(target), link_target=target))

    @staticmethod
    def _entry(path: str, kind: str, **kw) -> dict:
        base = {"path": path, "name": path.rsplit("/", 1)[-1], "kind": kind, "size": 0, "mtime_ns": 10**18, "mode": 0o644,
                "uid": 0, "gid": 0, "valid_from": 1, "valid_to": None, "content_id": None, "link_target": None, "chunks": None}
        return {**base, **kw}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/summary"):
            kinds = [e["kind"] for e in self.entries]
            size = sum(e["size"] for e in self.entries if e["kind"] == "file")
            return httpx.Response(200, json={"run": 1, "path": request.url.params.get("path", "/"), "files": kinds.count("file"),
                                             "dirs": kinds.count("dir"), "symlinks": kinds.count("symlink"), "bytes": size})
        if path.endswith("/files"):
            entries = self.entries
            if request.url.params.get("chunks") != "true":
                entries = [{**e, "chunks": None} for e in entries]
            return httpx.Response(200, json={"run": 1, "entries": entries, "next_after": None})
        if path.endswith("/chunks/read"):
            ids = json.loads(request.content)["ids"]
            self.reads.append(ids)
            if self.absent.intersection(ids):
                return httpx.Response(404, json={"status_code": 404, "detail": "chunk not stored"})
            body = [stream_header()]
            for f in self.extra:
                body.append(f.to_bytes())
            for cid in ids:
                data = self.lies.get(cid, self.chunks[cid])
                body.append(Frame(cid, 0, len(data), data).to_bytes())
            body.append(end_marker(len(ids) + len(self.extra)))
            blob = b"".join(body)
            if self.cut_next:
                self.cut_next -= 1
                blob = blob[: len(blob) // 2]
            return httpx.Response(200, content=blob)
        return httpx.Response(404, json={"status_code": 404, "detail": f"no route {path}"})

    def api(self) -> ApiClient:
        return ApiClient("http://fake.test", "t", transport=httpx.MockTransport(self.handler), backoff=0)


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def box(tmp_path) -> tuple[Path, Path]:
    """(target, outside): everything must land in target; outside must stay empty."""
    target, outside = tmp_path / "target", tmp_path / "outside"
    outside.mkdir()
    return target, outside


def everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_paths_that_would_escape_are_refused_one_by_one(fake, box, tmp_path):
    target, outside = box
    hostile = ["/../escape", "/a/../../escape", "/a/./b", "//escape", "relative/escape", "/a/b/", "/nul\x00x",
               "/a\\x2f..\\x2f..\\x2fescape", "/a\\x2e\\x2e"]
    for p in hostile:
        fake.file(p, b"evil")
    fake.file("/ok/fine", b"good")
    result = restore_tree(fake.api(), 1, target)
    # "/a/b/" normalizes to "/a/b": harmless, restored; every other one is refused.
    assert result.files == 2 and (target / "ok" / "fine").read_bytes() == b"good"
    assert len(result.errors) == len(hostile) - 1
    assert everything(tmp_path) <= {"target", "outside"} | {f"target/{p}" for p in everything(target)}
    assert everything(outside) == set()
    assert not any("escape" in p for p in everything(target))


def test_a_symlink_to_outside_then_a_file_under_it_never_writes_outside(fake, box):
    target, outside = box
    fake.dir("/x")
    fake.symlink("/x/link", str(outside))
    fake.file("/x/link/evil", b"evil")
    fake.symlink("/x/abs", "/etc/passwd")  # pointing out is fine: it is created, never followed
    result = restore_tree(fake.api(), 1, target)
    assert everything(outside) == set()
    assert (target / "x" / "link").is_dir() and not (target / "x" / "link").is_symlink()
    assert (target / "x" / "link" / "evil").read_bytes() == b"evil"
    assert os.readlink(target / "x" / "abs") == "/etc/passwd"
    assert result.symlinks == 1 and len(result.errors) == 1 and "symlink" in result.errors[0]


def test_existing_symlinks_in_the_target_are_replaced_never_followed(fake, box):
    target, outside = box
    target.mkdir()
    (outside / "victim").write_bytes(b"original")
    os.symlink(outside, target / "a")
    os.symlink(outside / "victim", target / "f")
    fake.dir("/a")
    fake.file("/a/new", b"data")
    fake.file("/f", b"replaced")
    with pytest.raises(Conflict, match="not empty"):
        restore_tree(fake.api(), 1, target)
    result = restore_tree(fake.api(), 1, target, overwrite=True)
    assert result.errors == [] and result.files == 2
    assert (outside / "victim").read_bytes() == b"original" and everything(outside) == {"victim"}
    assert (target / "a").is_dir() and not (target / "a").is_symlink()
    assert not (target / "f").is_symlink() and (target / "f").read_bytes() == b"replaced"


def no_temp_files(root: Path) -> bool:
    return not any(p.name.startswith(".bkup-restore-") for p in root.rglob("*"))


def test_a_chunk_that_does_not_match_its_id_damages_only_its_file(fake, box):
    target, _ = box
    bad = fake.file("/bad", b"A" * 3000 + b"B" * 3000, piece=3000)
    fake.file("/good", b"fine")
    fake.lies[bad[1]] = b"C" * 3000
    result = restore_tree(fake.api(), 1, target)
    assert result.files == 1 and (target / "good").read_bytes() == b"fine"
    assert not (target / "bad").exists() and no_temp_files(target)
    assert len(result.errors) == 1 and "/bad" in result.errors[0] and "damaged" in result.errors[0]


def test_a_chunk_the_server_lacks_damages_only_its_file(fake, box):
    target, _ = box
    for i in range(10):
        fake.file(f"/f{i}", bytes([i]) * 100)
    lost = fake.file("/lost", b"gone")
    fake.absent.add(lost[0])
    result = restore_tree(fake.api(), 1, target)
    assert result.files == 10 and not (target / "lost").exists() and no_temp_files(target)
    assert len(result.errors) == 1 and "not stored" in result.errors[0]


def test_a_cut_stream_is_read_again_once(fake, box):
    target, _ = box
    fake.file("/f", b"x" * 5000, piece=1000)
    fake.cut_next = 1
    assert restore_tree(fake.api(), 1, target).errors == []
    assert (target / "f").read_bytes() == b"x" * 5000

    fake.cut_next = 2
    result = restore_tree(fake.api(), 1, box[0].parent / "t2")
    assert result.files == 0 and len(result.errors) == 1 and no_temp_files(box[0].parent / "t2")


def test_a_chunk_list_that_is_malformed_or_does_not_match_its_content_id_is_refused(fake, box):
    target, _ = box
    fake.file("/good", b"fine")
    fake.file("/malformed", b"m" * 10)
    fake.entries[-1]["chunks"] = ["../" + "0" * 61]
    fake.file("/swapped", b"s" * 10)
    fake.entries[-1]["content_id"] = content_id([chunk_id(b"something else")])
    result = restore_tree(fake.api(), 1, target)
    assert result.files == 1 and everything(target) == {"good"}
    assert sorted(result.errors) == ["'/malformed': malformed chunk id in its chunk list",
                                     "'/swapped': chunk list does not match its content id"]
    assert all(chunk_id(b"s" * 10) not in ids for ids in fake.reads)  # nothing was fetched for a refused file


def test_a_size_that_does_not_match_the_chunks_is_damage(fake, box):
    target, _ = box
    fake.file("/f", b"12345", size=6)
    result = restore_tree(fake.api(), 1, target)
    assert result.files == 0 and "damaged" in result.errors[0] and not (target / "f").exists()


def test_frames_nobody_asked_for_are_ignored(fake, box):
    target, _ = box
    fake.file("/f", b"real")
    intruder = b"intruder"
    fake.extra.append(Frame(chunk_id(intruder), 0, len(intruder), intruder))
    assert restore_tree(fake.api(), 1, target).errors == []
    assert everything(target) == {"f"} and (target / "f").read_bytes() == b"real"


def test_entries_outside_the_subpath_are_refused(fake, box):
    target, _ = box
    fake.file("/home/x/f", b"in")
    fake.file("/etc/shadow", b"out")
    result = restore_tree(fake.api(), 1, target, subpath="/home/x")
    assert (target / "home" / "x" / "f").read_bytes() == b"in"
    assert not (target / "etc").exists() and len(result.errors) == 1


def test_many_small_files_share_requests_and_big_files_stream_in_batches(fake, box, monkeypatch):
    target, _ = box
    monkeypatch.setattr(restore_mod, "FETCH_BYTES", 10_000)
    for i in range(50):
        fake.file(f"/small/{i}", f"file {i}".encode())
    big = os.urandom(100_000)
    fake.file("/big", big, piece=4000)
    result = restore_tree(fake.api(), 1, target)
    assert result.errors == [] and result.files == 51
    assert (target / "big").read_bytes() == big
    assert len(fake.reads[0]) == 50 + 3  # the small files and the start of big in one request
    assert len(fake.reads) >= 8 and all(len(r) <= 3 for r in fake.reads[1:])


def test_modes_times_and_directories_come_back(fake, box):
    target, _ = box
    fake.dir("/d", mode=0o555, mtime_ns=1_500_000_000_000_000_000)
    fake.dir("/d/sub", mode=0o700, mtime_ns=1_400_000_000_000_000_000)
    fake.file("/d/sub/run", b"#!/bin/sh\n", mode=0o4755, mtime_ns=1_600_000_000_123_456_789)
    fake.file("/d/empty", b"")
    fake.symlink("/d/link", "sub/run")
    result = restore_tree(fake.api(), 1, target)
    assert result.errors == [] and (result.files, result.dirs, result.symlinks) == (2, 2, 1)
    st = os.stat(target / "d" / "sub" / "run")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_mtime_ns == 1_600_000_000_123_456_789
    assert stat.S_IMODE(os.stat(target / "d").st_mode) == 0o555
    assert os.stat(target / "d").st_mtime_ns == 1_500_000_000_000_000_000
    assert os.stat(target / "d" / "sub").st_mtime_ns == 1_400_000_000_000_000_000
    assert (target / "d" / "empty").read_bytes() == b""


def test_an_empty_listing_is_not_found(fake, box):
    with pytest.raises(NotFound, match="/nothing"):
        restore_tree(fake.api(), 1, box[0], subpath="/nothing")
    assert not box[0].exists()


def test_a_summary_that_promises_entries_the_listing_lacks_is_not_found(fake, box, monkeypatch):
    fake.file("/f", b"data")
    monkeypatch.setattr(fake, "entries", [])  # the listing comes back empty after the summary counted /f
    handler = fake.handler

    def lying(request):
        if request.url.path.endswith("/summary"):
            return httpx.Response(200, json={"run": 1, "path": "/", "files": 1, "dirs": 0, "symlinks": 0, "bytes": 4})
        return handler(request)

    monkeypatch.setattr(fake, "handler", lying)
    with pytest.raises(NotFound, match="not in run 1"):
        restore_tree(fake.api(), 1, box[0])
    assert not box[0].exists()

"""Storage faults: a full disk, failing reads, an S3 endpoint that goes away and comes back.

Every case on every backend (memory, file, S3 on moto): the run fails with a
clear message (503, the store's own words), nothing half-written is ever
referenced (the integrity check stays clean), and the retry succeeds and
restores byte-identical.
"""

from __future__ import annotations

import io
import random

import pytest
from security_kit import API, FailingStore, cheap_passwords, world_on

from bkup.core.chunker import iter_chunks
from bkup.core.frames import FrameParser, decode_frame, encode_chunk, end_marker, stream_header
from bkup.core.hashing import chunk_id
from bkup.server.check import check
from bkup.storage.objects import MemoryStore, open_store

FIGURES: dict[str, int] = {"faults": 0, "refused_runs": 0, "retries_ok": 0}


@pytest.fixture(autouse=True, scope="module")
def _cheap():
    cheap_passwords()
    yield
    print(f"\nstorage faults: {FIGURES}")


def _inner(kind: str, request):
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        return open_store((request.getfixturevalue("tmp_path") / "store").as_uri())
    return open_store(request.getfixturevalue("s3_url"), s3_endpoint_url=request.getfixturevalue("moto_endpoint"))


def _files(seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"/srv/f{i}": rnd.randbytes(n) for i, n in enumerate([900, 70_000, 600_000, 1_500_000])}


class Backup:
    """One agent run over the API, step by step, reporting the first refusal."""

    def __init__(self, w) -> None:
        self.w = w
        self.h = w.headers("agentA")

    def run(self, files: dict[str, bytes]):
        http = self.w.http
        run = http.post(f"{API}/runs", json={"trigger": "manual"}, headers=self.h).json()["id"]
        entries, pieces = [{"path": "/srv", "kind": "dir", "mode": 0o755}], {}
        for path, data in files.items():
            cs = list(iter_chunks(io.BytesIO(data)))
            ids = [chunk_id(c) for c in cs]
            pieces.update(zip(ids, cs))
            entries.append({"path": path, "kind": "file", "size": len(data), "mode": 0o644, "chunks": ids})
        missing = http.post(f"{API}/chunks/missing", json={"ids": list(pieces)}, headers=self.h).json()["missing"]
        body = stream_header() + b"".join(encode_chunk(pieces[c]).to_bytes() for c in missing) + end_marker(len(missing))
        for step, (url, kw) in {
            "upload": (f"{API}/chunks", {"content": body}),
            "commit": (f"{API}/runs/{run}/versions", {"json": {"entries": entries}}),
            "finish": (f"{API}/runs/{run}/finish", {"json": {"status": "ok", "stats": {}}}),
        }.items():
            r = http.post(url, headers=self.h, **kw)
            if r.status_code >= 300:
                http.post(f"{API}/runs/{run}/finish", json={"status": "failed", "stats": {}, "error": r.text[:200]}, headers=self.h)
                return step, r
        return "ok", None

    def read_back(self, files: dict[str, bytes]) -> None:
        a = self.w.parties["A"]
        r = self.w.http.get(f"{API}/clients/{a.client_id}/files", params={"path": "/srv", "chunks": "true"}, headers=self.h)
        entries = {e["path"]: e for e in r.json()["entries"] if e["kind"] == "file"}
        for path, data in files.items():
            ids = entries[path]["chunks"]
            rr = self.w.http.post(f"{API}/chunks/read", json={"client_id": a.client_id, "ids": ids}, headers=self.h)
            assert rr.status_code == 200, rr.text
            parser = FrameParser()
            got = {f.id: decode_frame(f) for f in parser.feed(rr.content)}
            parser.close()
            assert b"".join(got[c] for c in ids) == data, path


def _clean(w) -> None:
    report = check(w.ctx)
    assert report.ok, report.problems


@pytest.mark.parametrize("kind", ["memory", "file", "s3"])
@pytest.mark.parametrize("budget", [0, 1000, 300_000, 1_200_000, 2_300_000])
def test_a_full_disk_fails_the_run_cleanly_and_the_retry_succeeds(kind, budget, request, tmp_path):
    store = FailingStore(_inner(kind, request))
    with world_on(tmp_path / "w", store) as w:
        b = Backup(w)
        files = _files(budget)
        store.write_budget = budget
        step, r = b.run(files)
        if step != "ok":
            FIGURES["refused_runs"] += 1
            assert r.status_code == 503, (step, r.status_code, r.text)
            assert "No space left on device" in r.json()["detail"]
        _clean(w)  # whatever did not fit is referenced by nothing
        FIGURES["faults"] += store.faults
        store.write_budget = None  # the disk has room again
        assert b.run(files)[0] == "ok"
        FIGURES["retries_ok"] += 1
        b.read_back(files)
        _clean(w)


@pytest.mark.parametrize("kind", ["memory", "file", "s3"])
def test_failing_reads_fail_the_restore_cleanly_and_lose_nothing(kind, request, tmp_path):
    store = FailingStore(_inner(kind, request))
    with world_on(tmp_path / "w", store) as w:
        b = Backup(w)
        files = _files(5)
        assert b.run(files)[0] == "ok"
        a = w.parties["A"]
        store.fail_reads = True
        ids = [chunk_id(list(iter_chunks(io.BytesIO(files["/srv/f3"])))[0])]
        r = w.http.post(f"{API}/chunks/read", json={"client_id": a.client_id, "ids": ids}, headers=b.h)
        assert r.status_code == 503 and "Input/output error" in r.json()["detail"], (r.status_code, r.text[:300])
        # A commit needs no read: backups go on while reads fail.
        newer = _files(6)
        assert b.run(newer)[0] == "ok"
        FIGURES["faults"] += store.faults
        store.fail_reads = False
        b.read_back(newer)
        _clean(w)


# --- S3 going away -------------------------------------------------------------------------------


@pytest.fixture
def own_moto():
    """A moto S3 server of this test's own (the shared one must stay up), and a function that stops or restarts it."""
    import boto3
    from moto.server import ThreadedMotoServer
    from security_kit import free_port

    port = free_port()
    state = {"server": ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)}
    state["server"].start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "bkup-outage"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)

    def down() -> None:
        state["server"].stop()

    def up() -> None:
        state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        state["server"].start()

    yield endpoint, f"s3://{bucket}/data", down, up
    try:
        state["server"].stop()
    except Exception:
        pass


def test_s3_stopped_and_restarted_during_uploads_and_restores(own_moto, tmp_path, monkeypatch):
    import threading
    import time

    endpoint, url, down, up = own_moto
    # Two attempts instead of botocore's default five keep the outage short; the retry path is the same.
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with world_on(tmp_path / "w", open_store(url, s3_endpoint_url=endpoint)) as w:
        b = Backup(w)
        first = _files(1)
        assert b.run(first)[0] == "ok"

        # The endpoint is gone: runs and restores fail with the store's message, quickly enough.
        down()
        t = time.monotonic()
        step, r = b.run(_files(2))
        assert step in ("upload", "commit", "finish") and r.status_code == 503, (step, r.status_code, r.text[:300])
        assert "connect" in r.json()["detail"].lower(), r.json()["detail"]
        assert time.monotonic() - t < 60
        a = w.parties["A"]
        r = w.http.post(f"{API}/chunks/read", json={"client_id": a.client_id, "ids": [a.chunk]}, headers=b.h)
        assert r.status_code == 503, r.text[:300]
        FIGURES["faults"] += 2
        up()
        _clean(w)
        b.read_back(first)

        # Gone in the middle of an upload: whatever the moment, it fails cleanly or completes.
        big = {f"/srv/big{i}": random.Random(i).randbytes(3_000_000) for i in range(6)}
        outcome: dict = {}
        worker = threading.Thread(target=lambda: outcome.update(result=b.run(big)))
        worker.start()
        time.sleep(0.3)
        down()
        worker.join(120)
        up()
        step, r = outcome["result"]
        if step != "ok":
            FIGURES["refused_runs"] += 1
            assert r.status_code == 503, (step, r.status_code, r.text[:300])
        FIGURES["faults"] += 1
        _clean(w)
        assert b.run(big)[0] == "ok"
        FIGURES["retries_ok"] += 1
        b.read_back(big)
        b.read_back(first)
        _clean(w)

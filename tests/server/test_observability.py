"""/healthz, /readyz and /metrics in-process: readiness names the broken part, metrics parse as Prometheus text."""

from __future__ import annotations

import threading

import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bkup.errors import StorageError
from bkup.server.app import create_app
from bkup.storage.objects import MemoryStore
from tests.server.test_api import API, file_entry, frames_body, start_run, upload


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels without `replica`): value}; look up with `key(name, label=value, ...)`."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[key(s.name, **{k: v for k, v in s.labels.items() if k != "replica"})] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return (name, frozenset(labels.items()))


class BrokenStore(MemoryStore):
    """Every call fails as an unreachable S3 endpoint would."""

    def list(self, prefix: str = ""):
        raise StorageError("cannot list 'keys' in s3://gone: EndpointConnectionError")

    def exists(self, key: str) -> bool:
        raise StorageError("cannot stat: EndpointConnectionError")


def test_healthz_and_readyz_ok(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    r = http.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "database": "ok", "storage": "ok"}


def test_readyz_is_503_naming_the_storage_when_it_fails(settings, ctx):
    ctx.store = BrokenStore()
    with TestClient(app=create_app(settings, context=ctx)) as client:
        assert client.get("/healthz").status_code == 200  # the process is alive
        r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unready" and body["database"] == "ok"
    assert body["storage"].startswith("error")
    assert "s3://" not in body["storage"]  # no URLs or details for anonymous callers


def test_readyz_is_503_naming_the_database_when_it_fails(settings, ctx):
    with TestClient(app=create_app(settings, context=ctx)) as client:
        ctx.catalog.engine.dispose()
        ctx.catalog.engine.pool._creator = lambda *a: (_ for _ in ()).throw(OSError("connection refused"))  # type: ignore[attr-defined]
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["database"].startswith("error") and r.json()["storage"] == "ok"


def test_metrics_parse_and_carry_client_and_server_figures(http, ctx, alice, bob):
    a, b = b"a" * 5000, b"b" * 7000
    assert upload(http, alice, [a, b]).status_code == 200
    assert upload(http, alice, [a]).status_code == 200  # a duplicate: stored nothing
    r = http.post(f"{API}/chunks/missing", json={"ids": [file_entry("/x", [a])["chunks"][0], "0" * 64]}, headers=alice.agent)
    assert r.status_code == 200
    gate = threading.Event()
    ctx.after_run.submit("held", gate.wait)  # the runs' manifests wait behind this
    run = start_run(http, alice)
    http.post(f"{API}/runs/{run['id']}/versions", json={"entries": [file_entry("/a", [a])]}, headers=alice.agent)
    stats = {"files_seen": 1, "files_changed": 1, "files_deleted": 0, "dirs_seen": 1, "bytes_scanned": 5000,
             "bytes_new": 5000, "bytes_uploaded": 1234, "errors": 0}
    http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": stats}, headers=alice.agent)
    bad = start_run(http, bob)
    http.post(f"{API}/runs/{bad['id']}/finish", json={"status": "failed", "stats": {**stats, "bytes_uploaded": 0}, "error": "disk gone"},
              headers=bob.agent)

    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    alice_pc = {"client": "alice-pc", "user": "alice"}
    bob_pc = {"client": "bob-pc", "user": "bob"}
    assert m[key("bkup_catalog_up")] == 1
    assert m[key("bkup_client_last_success_timestamp_seconds", **alice_pc)] > 1.7e9
    assert key("bkup_client_last_success_timestamp_seconds", **bob_pc) not in m
    assert m[key("bkup_client_last_run_duration_seconds", **alice_pc)] >= 0
    assert m[key("bkup_client_last_run_bytes", **alice_pc, kind="uploaded")] == 1234
    assert m[key("bkup_client_last_run_status", **alice_pc, status="ok")] == 1
    assert m[key("bkup_client_last_run_status", **bob_pc, status="failed")] == 1
    assert m[key("bkup_client_last_run_status", **bob_pc, status="ok")] == 0
    assert m[key("bkup_clients")] == 2 and m[key("bkup_users")] == 2
    assert m[key("bkup_packs", state="live")] == 1
    assert m[key("bkup_runs_without_manifest")] == 2
    gate.set()
    ctx.after_run.wait()
    assert samples(http.get("/metrics").text)[key("bkup_runs_without_manifest")] == 0
    assert m[key("bkup_ingest_chunks_total", result="stored")] == 2
    assert m[key("bkup_ingest_chunks_total", result="duplicate")] == 1
    assert m[key("bkup_ingest_bytes_total", kind="received")] == len(frames_body([a, b])) + len(frames_body([a]))
    assert m[key("bkup_ingest_bytes_total", kind="stored")] > 0
    assert m[key("bkup_chunk_lookups_total")] == 2
    assert m[key("bkup_chunk_dedup_hits_total")] == 2  # one lookup answered "present", one uploaded duplicate
    routes = {dict(k[1])["route"]: v for k, v in m.items() if k[0] == "bkup_http_request_duration_seconds_count"}
    finish = [r for r in routes if r.endswith("/finish")]
    assert len(finish) == 1 and "{run_id" in finish[0] and routes[finish[0]] == 2  # by template, not by id
    # Replica figures carry the replica label; catalog figures do not.
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert all("replica" in s.labels for s in families["bkup_ingest_chunks"].samples)
    assert all("replica" not in s.labels for s in families["bkup_client_last_run_status"].samples)


def test_metrics_token_and_switch(settings, ctx):
    ctx.settings = settings.replace(metrics_token="s3cret")
    with TestClient(app=create_app(ctx.settings, context=ctx)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    ctx.settings = settings.replace(metrics_enabled=False)
    with TestClient(app=create_app(ctx.settings, context=ctx)) as client:
        assert client.get("/metrics").status_code == 404


@pytest.mark.parametrize("route", ["/metrics", "/readyz"])
def test_ops_routes_are_not_in_the_api_schema(http, route):
    assert route not in http.get("/schema/openapi.json").json()["paths"]

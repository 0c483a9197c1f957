"""Two `bkup serve` replicas on one PostgreSQL and one S3 endpoint: no local state, uploads to either, restores from either."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.e2e_kit import Bkup, free_port, make_env
from ops_kit import RoundRobinProxy
from tests.e2e.test_backup_restore import make_tree, restored_root, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path, pg_url, s3_url, moto_endpoint):
    env = make_env(
        tmp_path,
        BKUP_DATABASE_URL=pg_url,
        BKUP_STORAGE_URL=s3_url,
        BKUP_S3_ENDPOINT_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    b = Bkup(env=env)
    yield b
    b.stop()


def start_replicas(cluster: Bkup, n: int) -> list[str]:
    """Start `n` servers at once on the empty database (migrations and the first admin race), wait until ready."""
    ports = [free_port() for _ in range(n)]
    logs = [open(Path(cluster.env["BKUP_DATA_DIR"]).parent / f"serve-{p}.log", "w+") for p in ports]
    procs = [
        subprocess.Popen([sys.executable, "-m", "bkup", "serve", "--port", str(p)], env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
        for p, log in zip(ports, logs)
    ]
    cluster.procs.extend(procs)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    pending = set(urls)
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        for url, proc, log in zip(urls, procs, logs):
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                if url in pending and httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    pending.discard(url)
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    assert not pending, "replicas did not become ready"
    cluster.admin_password = next(  # type: ignore[attr-defined]
        m.group(1) for log in logs if (m := re.search(r"first admin user 'admin' with password: (\S+)", Path(log.name).read_text()))
    )
    return urls


def test_two_replicas_share_everything_and_keep_nothing_locally(cluster: Bkup, tmp_path: Path, request):
    env = cluster.env
    urls = start_replicas(cluster, 2)
    # No local state: neither the data dir nor the config dir was ever created.
    assert not Path(env["BKUP_DATA_DIR"]).exists() and not Path(env["BKUP_CONFIG_DIR"]).exists()
    for url in urls:
        assert httpx.get(url + "/readyz", timeout=10).json() == {"status": "ready", "database": "ok", "storage": "ok"}

    # Accounts through one replica, used through the other.
    r = httpx.post(urls[0] + "/api/v1/auth/login", json={"user": "admin", "password": cluster.admin_password})
    admin = {"Authorization": "Bearer " + r.json()["token"]}
    assert httpx.post(urls[0] + "/api/v1/users", json={"name": "alice", "password": "correct-horse"}, headers=admin).status_code == 201
    r = httpx.post(urls[1] + "/api/v1/clients", json={"name": "laptop", "user": "alice"}, headers=admin)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert [u["name"] for u in httpx.get(urls[1] + "/api/v1/users", headers=admin).json()] == ["admin", "alice"]
    # The agent sees one URL, as behind a load balancer: each connection goes to the next replica.
    lb = RoundRobinProxy([("127.0.0.1", int(u.rsplit(":", 1)[1])) for u in urls])
    request.addfinalizer(lb.close)

    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    snapshots = {}
    # Three runs through the balancer; the tree changes between them.
    for seq in (1, 2, 3):
        if seq == 2:
            (src / "docs" / "a.txt").write_text("changed on the way to replica 1\n")
            (src / "new.bin").write_bytes(b"\x01" * 300_000)
        if seq == 3:
            (src / "new.bin").unlink()
            shutil.rmtree(src / "empty-dir")
            (src / "late.txt").write_text("third run\n")
        result = cluster.json("agent", "--server", lb.url, "--token", token, "--path", str(src), "--once", "--json")
        assert (result["run"], result["status"]) == (seq, "ok")
        snapshots[seq] = snapshot(src)

    # Every version restores through either replica.
    for seq, snap in snapshots.items():
        for i, url in enumerate(urls):
            target = tmp_path / f"restore-{seq}-{i}"
            cluster.run("restore", "--server", url, "--token", token, "--client", "laptop", "--run", str(seq),
                        "--target", str(target), "--json")
            assert snapshot(restored_root(target, src)) == snap, (seq, url)

    # Both replicas report the same catalog figures, and their own counters.
    metrics = [httpx.get(url + "/metrics", timeout=10).text for url in urls]
    for text in metrics:
        assert 'bkup_client_last_run_status{client="laptop",status="ok",user="alice"} 1.0' in text
    assert min(lb.connections) >= 1, lb.connections  # both replicas served the agents
    assert all("bkup_ingest_bytes_total" in t for t in metrics)
    assert not Path(env["BKUP_DATA_DIR"]).exists()


def test_gc_in_another_process_while_a_replica_ingests(cluster: Bkup, tmp_path: Path):
    """Prune + GC run from a second server process on the same catalog and storage while an agent
    uploads to a replica; afterwards every version restores and `check --read-data` is clean."""
    [url] = start_replicas(cluster, 1)
    r = httpx.post(url + "/api/v1/auth/login", json={"user": "admin", "password": cluster.admin_password})
    admin = {"Authorization": "Bearer " + r.json()["token"]}
    r = httpx.post(url + "/api/v1/clients", json={"name": "busy", "user": "admin"}, headers=admin)
    token, client_id = r.json()["token"], r.json()["id"]
    # Keep one version per path: every run leaves garbage behind for GC.
    assert httpx.put(url + f"/api/v1/clients/{client_id}/policy", json={"keep_versions": 1}, headers=admin).status_code == 200
    src = tmp_path / "src"
    src.mkdir()
    gc_env = {"BKUP_GC_GRACE": "0"}  # as aggressive as GC can be: only the touch protocol protects ingest

    snapshots = {}
    collected = 0
    for seq in range(1, 5):
        for i in range(40):  # every run rewrites all files: old chunks become garbage
            (src / f"f{i:02d}.bin").write_bytes(bytes([seq, i]) * (64 * 1024 + 37 * i))
        (src / f"only-in-{seq}.txt").write_text(str(seq))
        agent = subprocess.Popen(
            [sys.executable, "-m", "bkup", "agent", "--server", url, "--token", token, "--path", str(src), "--once", "--json"],
            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        rounds = 0
        while agent.poll() is None or rounds == 0:
            gc = json_line(cluster.run("prune", "--json", env=gc_env).stdout)["gc"]
            collected += gc["chunks_deleted"]
            rounds += 1
        out, err = agent.communicate()
        assert agent.returncode == 0, err
        assert json_line(out)["status"] == "ok"
        snapshots[seq] = snapshot(src)
    collected += json_line(cluster.run("prune", "--json", env=gc_env).stdout)["gc"]["chunks_deleted"]
    assert collected >= 3 * 40  # the rewritten files of runs 1-3 were collected while runs went on

    # The latest run restores exactly; older runs keep what the policy keeps (the newest version per path).
    target = tmp_path / "restore"
    cluster.run("restore", "--server", url, "--token", token, "--client", "busy", "--target", str(target))
    assert snapshot(restored_root(target, src)) == snapshots[4]
    check = cluster.run("check", "--read-data", "--json", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def json_line(text: str) -> dict:
    import json

    return json.loads(text.strip().splitlines()[-1])

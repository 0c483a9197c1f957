"""Stress test of prune + garbage collection against live backups: nothing referenced may ever be lost.

Several agents (threads, each with its own in-process HTTP client) back up
continuously changing trees through the API, while another thread prunes and
collects garbage in a loop and a reader restores current files; then every
version left in the catalog is read back through the API and verified
(BLAKE3), and `check --read-data` must be clean.

    python bench/stress_gc.py --minutes 10                       # SQLite + memory store
    python bench/stress_gc.py --minutes 10 --database-url postgresql://…/db --storage-url s3://bucket/x

tests/server/test_stress_gc.py runs the same engine for a few seconds.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "server"))

from litestar.testing import TestClient  # noqa: E402
from retention_kit import Agent, make_agent, make_ctx  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bkup.catalog.models import Client, Content, Version  # noqa: E402
from bkup.core.frames import FrameParser, decode_frame  # noqa: E402
from bkup.core.retention import Policy  # noqa: E402
from bkup.server import gc, policies, prune  # noqa: E402
from bkup.server.accounts import admin_principal  # noqa: E402
from bkup.server.app import create_app  # noqa: E402
from bkup.server.check import check  # noqa: E402
from bkup.settings import Settings  # noqa: E402
from bkup.storage.objects import MemoryStore, ObjectStore, open_store  # noqa: E402


@dataclass
class StressReport:
    seconds: float = 0.0
    runs: int = 0
    prune_rounds: int = 0
    versions_removed: int = 0  # by the prune loop (runs prune their own paths too: see prune_manifests)
    prune_manifests: int = 0
    chunks_collected: int = 0
    packs_deleted: int = 0
    reads: int = 0
    versions_verified: int = 0
    chunks_verified: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.seconds:.0f} s: {self.runs} runs ({self.prune_manifests} prunes in all), {self.prune_rounds} prune+GC "
            f"rounds removed {self.versions_removed} versions, collected {self.chunks_collected} chunks, deleted {self.packs_deleted} packs; {self.reads} reads "
            f"during; verified {self.versions_verified} versions / {self.chunks_verified} chunks after; "
            f"{len(self.errors)} error(s)"
        )


def _tree(rng: random.Random, shared: list[bytes], n: int) -> dict[str, bytes]:
    return {f"/data/d{i % 3}/f{i}": _content(rng, shared) for i in range(n)}


def _content(rng: random.Random, shared: list[bytes]) -> bytes:
    if rng.random() < 0.3:
        return rng.choice(shared)  # the same bodies on several clients: dedup, and chunks GC must keep
    return rng.randbytes(rng.choice([0, 100, 5_000, 60_000, 300_000, 700_000]))


def _agent_loop(agent: Agent, seed: int, shared: list[bytes], stop: threading.Event, report: StressReport) -> None:
    rng = random.Random(seed)
    files = _tree(rng, shared, 8)
    try:
        agent.backup(files)
        report.runs += 1
        while not stop.is_set():
            for path in rng.sample(sorted(files), 2):
                files[path] = _content(rng, shared)
            deleted = []
            if rng.random() < 0.5 and len(files) > 3:
                deleted = [rng.choice(sorted(files))]
                del files[deleted[0]]
            if rng.random() < 0.6:
                files[f"/data/new/f{rng.randrange(10**6)}"] = _content(rng, shared)
            agent.backup(files, deleted)
            report.runs += 1
    except Exception as e:  # noqa: BLE001
        report.errors.append(f"agent {agent.name}/{agent.client_id}: {type(e).__name__}: {e}")
        stop.set()


def _gc_loop(ctx, stop: threading.Event, report: StressReport) -> None:
    while not stop.is_set():
        try:
            result = prune.prune(ctx)
            report.prune_rounds += 1
            report.versions_removed += result.removed
            if result.gc is not None:
                report.chunks_collected += result.gc.chunks_deleted
                report.packs_deleted += result.gc.packs_deleted
                report.errors.extend(f"gc: {e}" for e in result.gc.errors)
        except Exception as e:  # noqa: BLE001
            report.errors.append(f"prune/gc: {type(e).__name__}: {e}")
            stop.set()
        time.sleep(0.02)


def _reader_loop(http: TestClient, agents: list[Agent], stop: threading.Event, report: StressReport) -> None:
    rng = random.Random(99)
    while not stop.is_set():
        agent = rng.choice(agents)
        try:
            page = http.get(f"/api/v1/clients/{agent.client_id}/files", params={"chunks": "true"}, headers=agent.auth).json()
            ids = list(dict.fromkeys(c for e in page["entries"] if e["chunks"] for c in e["chunks"]))[:300]
            if not ids:
                continue
            r = http.post("/api/v1/chunks/read", json={"client_id": agent.client_id, "ids": ids}, headers=agent.auth)
            if r.status_code == 404:
                continue  # a version went away between listing and reading: allowed
            assert r.status_code == 200, r.text
            parser = FrameParser()
            frames = parser.feed(r.content)
            parser.close()
            for f in frames:
                decode_frame(f)  # BLAKE3 must match
            report.reads += 1
        except Exception as e:  # noqa: BLE001
            report.errors.append(f"reader: {type(e).__name__}: {e}")
            stop.set()


def verify_everything(ctx, agents: list[Agent], report: StressReport) -> None:
    """Every version in the catalog restores: its content row exists and every chunk reads back verified."""
    by_client = {a.client_id: a for a in agents}
    with ctx.catalog.session() as s:
        rows = s.execute(
            select(Version.client_id, Version.path, Version.valid_from, Version.content_id, Content.chunk_ids)
            .join(Client, Client.id == Version.client_id)
            .outerjoin(Content, (Content.user_id == Client.user_id) & (Content.id == Version.content_id))
            .where(Version.kind == "file")
        ).all()
    wanted: dict[int, set[str]] = {}
    for client_id, path, valid_from, content_id, blob in rows:
        report.versions_verified += 1
        if blob is None:
            report.errors.append(f"client {client_id} {path} @{valid_from}: content {content_id} is gone")
            continue
        h = bytes(blob).hex()
        wanted.setdefault(client_id, set()).update(h[i : i + 64] for i in range(0, len(h), 64))
    for client_id, ids in wanted.items():
        try:
            got = by_client[client_id].read(sorted(ids))  # decode_frame checks each chunk's BLAKE3
            report.chunks_verified += len(got)
            missing = ids - set(got)
            if missing:
                report.errors.append(f"client {client_id}: {len(missing)} chunk(s) not returned")
        except Exception as e:  # noqa: BLE001
            report.errors.append(f"client {client_id}: {type(e).__name__}: {e}")
    report.prune_manifests = sum(1 for k in ctx.store.list("manifests") if "/prune-" in k)
    result = check(ctx, read_data=True)
    report.errors.extend(f"check: {p.kind} {p.pack_id} {p.chunk_id}: {p.detail}" for p in result.problems)


def run_stress(settings: Settings, *, seconds: float, database_url: str | None = None, store: ObjectStore | None = None,
               agents_per_user: tuple[int, ...] = (2, 1), seed: int = 0, reader: bool = True) -> StressReport:
    ctx = make_ctx(settings, database_url, store)
    report = StressReport()
    stop = threading.Event()
    clients: list[TestClient] = []
    try:
        agents: list[Agent] = []
        for u, n in enumerate(agents_per_user):
            for i in range(n):
                http = TestClient(app=create_app(settings, context=ctx))
                http.__enter__()
                clients.append(http)
                agents.append(make_agent(ctx, http, f"user{u}", f"user{u}-pc{i}", create_user=i == 0))
        for u, rules in enumerate([{"keep_versions": 1}, {"keep_versions": 2, "keep_deleted_days": 0}][: len(agents_per_user)]):
            me = admin_principal(ctx, f"user{u}")
            policies.set_user_policy(ctx, me, me.user_id, Policy(**rules))
        http_reader = TestClient(app=create_app(settings, context=ctx))
        http_reader.__enter__()
        clients.append(http_reader)
        shared = [random.Random(seed + 1000 + i).randbytes(200_000) for i in range(4)]
        threads = [threading.Thread(target=_agent_loop, args=(a, seed + i, shared, stop, report)) for i, a in enumerate(agents)]
        threads.append(threading.Thread(target=_gc_loop, args=(ctx, stop, report)))
        if reader:
            threads.append(threading.Thread(target=_reader_loop, args=(http_reader, agents, stop, report)))
        start = time.monotonic()
        for t in threads:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join()
        report.seconds = time.monotonic() - start
        final = gc.collect(ctx)
        report.errors.extend(f"final gc: {e}" for e in final.errors)
        verify_everything(ctx, agents, report)
    finally:
        for http in clients:
            http.__exit__(None, None, None)
        ctx.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--storage-url", default=None, help="default: an in-memory store")
    parser.add_argument("--grace", type=int, default=2, help="gc_grace in seconds (default 2: hard on the protocol)")
    parser.add_argument("--no-reader", action="store_true", help="no restores during the run (needed with --grace 0)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bkup-stress-"))
    settings = Settings(data_dir=str(tmp / "data"), config_dir=str(tmp / "config"), gc_interval=0, gc_grace=args.grace,
                        master_key=base64.b64encode(os.urandom(32)).decode())
    store = open_store(args.storage_url) if args.storage_url else MemoryStore()
    report = run_stress(settings, seconds=args.minutes * 60, database_url=args.database_url, store=store,
                        reader=not args.no_reader)
    print(report.line())
    for e in report.errors[:50]:
        print("error:", e)
    sys.exit(1 if report.errors else 0)


if __name__ == "__main__":
    main()

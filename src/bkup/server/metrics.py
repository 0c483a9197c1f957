"""Prometheus metrics at /metrics: per-client backup facts read from the catalog, per-replica counters in process.

Two kinds of figures, kept apart on purpose (docs/observability.md):

- **Catalog figures** (`bkup_client_*`, `bkup_users`, `bkup_packs` …) are read
  from the database at scrape time by `CatalogCollector`. Every replica
  answers the same, and nothing goes stale when another replica did the work.
- **Replica figures** (`bkup_ingest_*`, `bkup_chunk_*`, `bkup_http_*`,
  `bkup_job_*`, `bkup_alerts_*`, `bkup_gc_*`) count what this process did.
  They carry a `replica` label (host name and port) and restart at zero with
  the process, as Prometheus counters do; sum them over replicas in queries.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from bkup.catalog import history
from bkup.catalog.models import Client, Pack, Run, User
from bkup.errors import AuthError

if TYPE_CHECKING:
    from bkup.server.context import ServerContext
    from bkup.settings import Settings

log = logging.getLogger("bkup.server.metrics")
http_log = logging.getLogger("bkup.http")

# Request latency buckets (seconds): long-polls and big uploads sit in the top buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Routes that machines hit all the time: logged at debug level only.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/agent/poll", "/api/v1/agent/heartbeat"})
OK_STATUSES = ("ok", "partial")


def replica_name(settings: Settings) -> str:
    return f"{socket.gethostname()}:{settings.port}"


class ServerMetrics:
    """This replica's counters, and the registry that /metrics renders (with the catalog collector)."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.registry = CollectorRegistry(auto_describe=False)
        r, lbl = self.registry, ["replica"]
        self.ingest_bytes = Counter(
            "bkup_ingest_bytes", "Chunk bytes received in uploads (kind=received, as sent) and written to packs (kind=stored).",
            [*lbl, "kind"], registry=r,
        )
        self.ingest_chunks = Counter(
            "bkup_ingest_chunks", "Chunks received in uploads, by result (stored, duplicate).", [*lbl, "result"], registry=r
        )
        self.chunk_lookups = Counter("bkup_chunk_lookups", "Chunk ids agents asked about (POST /chunks/missing).", lbl, registry=r)
        self.dedup_hits = Counter(
            "bkup_chunk_dedup_hits",
            "Chunks an agent did not have to store because the user already held them (lookups answered 'present' and uploaded duplicates).",
            lbl, registry=r,
        )
        self.request_seconds = Histogram(
            "bkup_http_request_duration_seconds", "HTTP request latency, by method, route template and status.",
            [*lbl, "method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.job_runs = Counter("bkup_job_runs", "Runs of periodic server jobs on this replica, by job and result.", [*lbl, "job", "result"], registry=r)
        self.job_last_success = Gauge(
            "bkup_job_last_success_timestamp_seconds", "When a periodic job last succeeded on this replica.", [*lbl, "job"], registry=r
        )
        self.job_duration = Gauge("bkup_job_last_duration_seconds", "How long a periodic job's last run took.", [*lbl, "job"], registry=r)
        self.leader = Gauge("bkup_job_leader", "1 while this replica holds a job's leader lock.", [*lbl, "job"], registry=r)
        self.alerts = Counter("bkup_alerts", "Webhook alerts, by event and result (delivered, failed, dropped).", [*lbl, "event", "result"], registry=r)
        self.gc_runs = Counter("bkup_gc_runs", "Garbage collections this replica ran.", lbl, registry=r)
        self.gc_deleted_chunks = Counter("bkup_gc_deleted_chunks", "Chunks garbage collection removed.", lbl, registry=r)
        self.gc_deleted_packs = Counter("bkup_gc_deleted_packs", "Packs garbage collection deleted from storage.", lbl, registry=r)
        self.gc_rewritten_packs = Counter("bkup_gc_rewritten_packs", "Packs garbage collection rewrote.", lbl, registry=r)
        self.gc_freed_bytes = Counter("bkup_gc_freed_bytes", "Storage bytes garbage collection freed.", lbl, registry=r)
        self.gc_last = Gauge("bkup_gc_last_timestamp_seconds", "When this replica last finished a garbage collection.", lbl, registry=r)

    # --- what the request handlers and services report ---------------------------------

    def observe_lookup(self, asked: int, missing: int) -> None:
        self.chunk_lookups.labels(self.replica).inc(asked)
        self.dedup_hits.labels(self.replica).inc(max(0, asked - missing))

    def observe_upload(self, *, received_bytes: int, stored: int, duplicates: int, stored_bytes: int) -> None:
        self.ingest_bytes.labels(self.replica, "received").inc(received_bytes)
        self.ingest_bytes.labels(self.replica, "stored").inc(stored_bytes)
        self.ingest_chunks.labels(self.replica, "stored").inc(stored)
        self.ingest_chunks.labels(self.replica, "duplicate").inc(duplicates)
        self.dedup_hits.labels(self.replica).inc(duplicates)

    def observe_gc(self, report: object) -> None:
        """For the garbage collector: call once per finished collection with its `gc.GcReport`."""
        r = self.replica
        self.gc_runs.labels(r).inc()
        self.gc_deleted_chunks.labels(r).inc(getattr(report, "chunks_deleted", 0))
        self.gc_deleted_packs.labels(r).inc(getattr(report, "packs_deleted", 0))
        self.gc_rewritten_packs.labels(r).inc(getattr(report, "packs_rewritten", 0))
        self.gc_freed_bytes.labels(r).inc(getattr(report, "bytes_deleted", 0))
        self.gc_last.labels(r).set_to_current_time()

    def observe_job(self, job: str, ok: bool, seconds: float) -> None:
        self.job_runs.labels(self.replica, job, "ok" if ok else "error").inc()
        self.job_duration.labels(self.replica, job).set(seconds)
        if ok:
            self.job_last_success.labels(self.replica, job).set_to_current_time()

    def observe_alert(self, event: str, result: str) -> None:
        self.alerts.labels(self.replica, event, result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- catalog figures ------------------------------------------------------------------------


class CatalogCollector(Collector):
    """Per-client and catalog-wide gauges, queried at scrape time (a few set-based queries, no per-client loop)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def describe(self) -> list:
        return []  # the registry must not collect (and query the database) at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("bkup_catalog_up", "1 if the catalog answered this scrape.")
        try:
            families = self._collect()
        except Exception as e:  # a scrape must answer even when the database does not
            log.warning("metrics: catalog unavailable: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _collect(self) -> list[GaugeMetricFamily]:
        labels = ["client", "user"]
        last_ok = GaugeMetricFamily("bkup_client_last_success_timestamp_seconds", "End of the client's last ok or partial run.", labels=labels)
        last_end = GaugeMetricFamily("bkup_client_last_run_timestamp_seconds", "End of the client's last finished run.", labels=labels)
        duration = GaugeMetricFamily("bkup_client_last_run_duration_seconds", "Duration of the client's last finished run.", labels=labels)
        nbytes = GaugeMetricFamily(
            "bkup_client_last_run_bytes", "Bytes of the client's last finished run (kind: scanned, new, uploaded).", labels=[*labels, "kind"]
        )
        files = GaugeMetricFamily(
            "bkup_client_last_run_files", "Files of the client's last finished run (kind: seen, changed, deleted).", labels=[*labels, "kind"]
        )
        status = GaugeMetricFamily(
            "bkup_client_last_run_status", "1 for the status of the client's last finished run (ok, partial, failed).", labels=[*labels, "status"]
        )
        running = GaugeMetricFamily("bkup_client_running", "1 while the client has a run in progress.", labels=labels)
        seen = GaugeMetricFamily("bkup_client_last_seen_timestamp_seconds", "When the client's agent was last heard from.", labels=labels)
        users = GaugeMetricFamily("bkup_users", "Users in the catalog.")
        clients = GaugeMetricFamily("bkup_clients", "Clients in the catalog.")
        packs = GaugeMetricFamily("bkup_packs", "Packs in the catalog, by state (live, retired: waiting for deletion).", labels=["state"])
        pack_bytes = GaugeMetricFamily("bkup_pack_bytes", "Bytes of the packs in the catalog, by state.", labels=["state"])
        unwritten = GaugeMetricFamily(
            "bkup_runs_without_manifest", "Finished runs whose manifest is not in storage yet (a catalog rebuild would miss them)."
        )

        with self.ctx.catalog.session() as s:
            rows = s.execute(select(Client.id, Client.name, User.name, Client.last_seen).join(User, User.id == Client.user_id)).all()
            names = {cid: [cname, uname] for cid, cname, uname, _ in rows}
            for cid, _, _, last_seen in rows:
                if last_seen is not None:
                    seen.add_metric(names[cid], last_seen.timestamp())
            ok_rows = s.execute(
                select(Run.client_id, func.max(Run.finished_at)).where(Run.status.in_(OK_STATUSES)).group_by(Run.client_id)
            ).all()
            for cid, t in ok_rows:
                if cid in names and t is not None:
                    last_ok.add_metric(names[cid], t.timestamp())
            latest = (
                select(Run.client_id, func.max(Run.seq).label("seq")).where(Run.status != "running").group_by(Run.client_id).subquery()
            )
            for run in s.execute(select(Run).join(latest, (Run.client_id == latest.c.client_id) & (Run.seq == latest.c.seq))).scalars():
                lv = names.get(run.client_id)
                if lv is None:
                    continue
                if run.finished_at is not None:
                    last_end.add_metric(lv, run.finished_at.timestamp())
                    duration.add_metric(lv, max(0.0, (run.finished_at - run.started_at).total_seconds()))
                for kind in ("scanned", "new", "uploaded"):
                    nbytes.add_metric([*lv, kind], getattr(run, f"bytes_{kind}") or 0)
                for kind in ("seen", "changed", "deleted"):
                    files.add_metric([*lv, kind], getattr(run, f"files_{kind}") or 0)
                for st in ("ok", "partial", "failed"):
                    status.add_metric([*lv, st], 1 if run.status == st else 0)
            active = {cid for (cid,) in s.execute(select(Run.client_id).where(Run.status == "running").distinct())}
            for cid, lv in names.items():
                running.add_metric(lv, 1 if cid in active else 0)
            users.add_metric([], s.execute(select(func.count()).select_from(User)).scalar_one())
            clients.add_metric([], len(rows))
            state_col = Pack.__table__.c.get("state")
            if state_col is not None:
                pack_rows = s.execute(select(state_col, func.count(), func.coalesce(func.sum(Pack.size), 0)).group_by(state_col)).all()
            else:
                pack_rows = [("live", *s.execute(select(func.count(), func.coalesce(func.sum(Pack.size), 0))).one())]
            for state, count, size in pack_rows:
                packs.add_metric([state], count)
                pack_bytes.add_metric([state], int(size))
            unwritten.add_metric([], history.count_runs_without_manifest(s))
        return [last_ok, last_end, duration, nbytes, files, status, running, seen, users, clients, packs, pack_bytes, unwritten]


def install(ctx: ServerContext) -> ServerMetrics:
    metrics = ServerMetrics(replica_name(ctx.settings))
    metrics.registry.register(CatalogCollector(ctx))
    return metrics


# --- HTTP: the /metrics route and the latency middleware ---------------------------------------


@get("/metrics", sync_to_thread=True, include_in_schema=False)
def metrics_endpoint(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    expected = ctx.settings.metrics_token
    if expected:
        import hmac

        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise AuthError("/metrics wants 'Authorization: Bearer <metrics_token>'")
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def request_middleware(metrics: ServerMetrics):  # noqa: ANN201 - a litestar middleware factory
    """Time every HTTP request (by route template, so ids do not explode label sets) and log it to `bkup.http`."""

    def factory(app: ASGIApp) -> ASGIApp:
        return _timed(app, metrics)

    return factory


def _timed(app: ASGIApp, metrics: ServerMetrics) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("path_template") or "unmatched"
            metrics.request_seconds.labels(metrics.replica, scope["method"], route, str(status)).observe(elapsed)
            level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
            # The path only: query strings are not logged (they could carry user data).
            http_log.log(
                level, "%s %s %s %.1f ms", scope["method"], scope["path"], status, elapsed * 1000,
                extra={"method": scope["method"], "path": scope["path"], "status": status, "ms": round(elapsed * 1000, 1)},
            )

    return middleware


def routes(settings: Settings) -> list:
    """[/metrics] unless `metrics_enabled` is off."""
    return [metrics_endpoint] if settings.metrics_enabled else []

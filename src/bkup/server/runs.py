"""Backup runs as the agent drives them: start, commit versions, report deletions, finish."""

from __future__ import annotations

from functools import partial

from sqlmodel import Session, select

from bkup import protocol
from bkup.catalog import commits, queries
from bkup.catalog.models import Client, Run
from bkup.errors import Conflict, NotFound, UsageError
from bkup.server import alerts, gc, manifests
from bkup.server.accounts import iso, now
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, require_agent, visible_client

STAT_FIELDS = tuple(protocol.RunStats.__struct_fields__)


def run_info(run: Run) -> protocol.RunInfo:
    return protocol.RunInfo(
        id=run.id,
        client_id=run.client_id,
        seq=run.seq,
        trigger=run.trigger,
        status=run.status,
        started_at=iso(run.started_at),
        finished_at=iso(run.finished_at),
        stats=protocol.RunStats(**{f: getattr(run, f) or 0 for f in STAT_FIELDS}),
        error=run.error,
    )


def start_run(ctx: ServerContext, principal: Principal, trigger: str) -> protocol.RunInfo:
    client_id = require_agent(principal)
    with ctx.catalog.session() as s:
        t = now()
        run = queries.start_run(s, client_id, trigger, t)
        client = s.get(Client, client_id)
        client.last_seen = t
        if trigger != "watch":  # a full run serves a pending "backup now"; a watch run only looks at a few paths
            client.backup_requested_at = None
        s.add(client)
        s.commit()
        s.refresh(run)
        return run_info(run)


def _running_run(s: Session, principal: Principal, run_id: int) -> Run:
    client_id = require_agent(principal)
    run = s.get(Run, run_id)
    if run is None or run.client_id != client_id:
        raise NotFound(f"no run {run_id}")
    if run.status != "running":
        raise Conflict(f"run {run.seq} is already finished ({run.status})")
    return run


def _touch(s: Session, run: Run) -> None:
    run.last_activity = now()
    s.add(run)


def commit_versions(ctx: ServerContext, principal: Principal, run_id: int, entries: list[protocol.Entry]) -> protocol.CommitResult:
    if len(entries) > protocol.MAX_ENTRIES_PER_BATCH:
        raise UsageError(f"too many entries in one batch: {len(entries)} > {protocol.MAX_ENTRIES_PER_BATCH}")
    checked = commits.check_entries(entries)  # a bad batch is refused before anything is touched
    # Touched before the commit relies on them: GC's protocol (server.gc). The touch finds them too.
    held = gc.touch(ctx, principal.user_id, chunk_ids=checked.chunk_ids, content_ids=checked.content_ids)
    with ctx.catalog.session() as s:
        run = _running_run(s, principal, run_id)
        committed, unchanged = commits.commit_entries(
            s, client_id=run.client_id, user_id=principal.user_id, run_seq=run.seq, entries=checked, raw_lens=held
        )
        _touch(s, run)
        s.commit()
        return protocol.CommitResult(committed=committed, unchanged=unchanged)


def delete_paths(ctx: ServerContext, principal: Principal, run_id: int, paths: list[str]) -> protocol.DeleteResult:
    if len(paths) > protocol.MAX_PATHS_PER_DELETE:
        raise UsageError(f"too many paths in one batch: {len(paths)} > {protocol.MAX_PATHS_PER_DELETE}")
    with ctx.catalog.session() as s:
        run = _running_run(s, principal, run_id)
        closed = commits.close_paths(s, client_id=run.client_id, run_seq=run.seq, paths=paths)
        _touch(s, run)
        s.commit()
        return protocol.DeleteResult(closed=closed)


def finish_run(ctx: ServerContext, principal: Principal, run_id: int, finish: protocol.RunFinish) -> protocol.RunInfo:
    with ctx.catalog.session() as s:
        run = _running_run(s, principal, run_id)
        for f in STAT_FIELDS:
            setattr(run, f, max(0, getattr(finish.stats, f)))
        run.status = finish.status
        run.error = (finish.error or None) and finish.error[:4000]
        run.finished_at = now()
        run.last_activity = run.finished_at
        client = s.get(Client, run.client_id)
        client.last_seen = run.finished_at
        s.add(run)
        s.add(client)
        s.commit()
        s.refresh(run)
    # The manifest, then prune, after this answer (server.background); never raises.
    ctx.after_run.submit(f"after run {run.seq} of client {run.client_id}", partial(manifests.after_finish, ctx, run.id, run.client_id, run.seq))
    if run.status == "failed":
        alerts.run_failed(ctx, run.id)  # queued for the webhooks (server.alerts); never raises
    return run_info(run)


def list_runs(ctx: ServerContext, principal: Principal, client_id: int, limit: int = 100) -> list[protocol.RunInfo]:
    with ctx.catalog.session() as s:
        visible_client(s, principal, client_id)
        rows = s.exec(select(Run).where(Run.client_id == client_id).order_by(Run.seq.desc()).limit(limit))
        return [run_info(r) for r in rows]

"""Reading a client's backed-up tree: as of a run or a time, directory by directory, page by page, path history."""

from __future__ import annotations

from datetime import UTC, datetime

from bkup import protocol
from bkup.catalog import queries
from bkup.catalog.models import Version
from bkup.core import paths
from bkup.errors import UsageError
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, visible_client

MAX_PAGE = 5000


def parse_at(at: str | None) -> datetime | None:
    """ISO 8601; a naive time is UTC (the CLI converts local times before sending)."""
    if at is None or at == "":
        return None
    try:
        t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid time {at!r}: use ISO 8601, e.g. 2026-11-28T07:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _path(path: str | None) -> str:
    try:
        return paths.normalize(path or "/")
    except paths.UnsafePath as exc:
        raise UsageError(str(exc)) from None


def version_info(v: Version, chunks: list[str] | None = None) -> protocol.VersionInfo:
    return protocol.VersionInfo(
        path=v.path,
        name=v.name,
        kind=v.kind,
        size=v.size,
        mtime_ns=v.mtime_ns,
        mode=v.mode,
        uid=v.uid,
        gid=v.gid,
        valid_from=v.valid_from,
        valid_to=v.valid_to,
        content_id=v.content_id,
        link_target=v.link_target,
        chunks=chunks,
    )


def tree(ctx: ServerContext, principal: Principal, client_id: int, path: str | None, run: int | None, at: str | None) -> protocol.Tree:
    path = _path(path)
    with ctx.catalog.session() as s:
        visible_client(s, principal, client_id)
        seq = queries.resolve_run(s, client_id, run=run, at=parse_at(at))
        entries = [] if seq is None else queries.list_children(s, client_id, path, seq)
        return protocol.Tree(run=seq, path=path, entries=[version_info(v) for v in entries])


def files(
    ctx: ServerContext,
    principal: Principal,
    client_id: int,
    path: str | None,
    run: int | None,
    at: str | None,
    after: str | None,
    limit: int,
    with_chunks: bool,
) -> protocol.VersionPage:
    path = _path(path)
    limit = max(1, min(limit, MAX_PAGE))
    with ctx.catalog.session() as s:
        client = visible_client(s, principal, client_id)
        seq = queries.resolve_run(s, client_id, run=run, at=parse_at(at))
        if seq is None:
            return protocol.VersionPage(run=None, entries=[])
        rows = queries.list_under(
            s, client_id=client_id, user_id=client.user_id, path=path, run_seq=seq,
            after=after or None, limit=limit + 1, with_chunks=with_chunks,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return protocol.VersionPage(
            run=seq,
            entries=[version_info(v, c) for v, c in rows],
            next_after=rows[-1][0].path if more else None,
        )


def summary(ctx: ServerContext, principal: Principal, client_id: int, path: str | None, run: int | None, at: str | None) -> protocol.TreeSummary:
    path = _path(path)
    with ctx.catalog.session() as s:
        visible_client(s, principal, client_id)
        seq = queries.resolve_run(s, client_id, run=run, at=parse_at(at))
        if seq is None:
            return protocol.TreeSummary(run=None, path=path)
        totals = queries.summarize_under(s, client_id=client_id, path=path, run_seq=seq)
        return protocol.TreeSummary(
            run=seq,
            path=path,
            files=totals.get("file", (0, 0))[0],
            dirs=totals.get("dir", (0, 0))[0],
            symlinks=totals.get("symlink", (0, 0))[0],
            bytes=totals.get("file", (0, 0))[1],
        )


def history(ctx: ServerContext, principal: Principal, client_id: int, path: str | None) -> protocol.History:
    path = _path(path)
    with ctx.catalog.session() as s:
        visible_client(s, principal, client_id)
        return protocol.History(path=path, versions=[version_info(v) for v in queries.history(s, client_id, path)])

"""Catalog queries over a client's version history for prune and manifests: spans with run times, what a run changed.

Times of a version come from its runs: it is current from the start of the
run that opened it to the start of the run that closed it (DESIGN.md §2,
"as of time T" is "as of the last run started at or before T"). Like
`catalog.queries`, no function commits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Row, Table, and_, delete, exists, func, select, update
from sqlmodel import Session

from bkup.catalog.models import Client, Content, Run, Version
from bkup.catalog.queries import _pieces

_versions: Table = Version.__table__  # type: ignore[assignment]
_runs: Table = Run.__table__  # type: ignore[assignment]
_contents: Table = Content.__table__  # type: ignore[assignment]
_clients: Table = Client.__table__  # type: ignore[assignment]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One version with the start times of the runs that opened and closed it."""

    id: int
    path: str
    kind: str
    size: int
    content_id: str | None
    valid_from: int
    valid_to: int | None
    from_time: datetime
    to_time: datetime | None


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _history_select(client_id: int):
    opened = _runs.alias("opened")
    closed = _runs.alias("closed")
    v = _versions
    return (
        select(
            v.c.id, v.c.path, v.c.kind, v.c.size, v.c.content_id, v.c.valid_from, v.c.valid_to,
            opened.c.started_at, closed.c.started_at,
        )
        .select_from(
            v.outerjoin(opened, and_(opened.c.client_id == v.c.client_id, opened.c.seq == v.c.valid_from)).outerjoin(
                closed, and_(closed.c.client_id == v.c.client_id, closed.c.seq == v.c.valid_to)
            )
        )
        .where(v.c.client_id == client_id)
    )


def _row(r) -> HistoryRow:
    to_time = _aware(r[8])
    if r.valid_to is not None and to_time is None:
        to_time = EPOCH  # its closing run is gone: long closed
    return HistoryRow(r.id, r.path, r.kind, r.size, r.content_id, r.valid_from, r.valid_to, _aware(r[7]) or EPOCH, to_time)


def history_page(s: Session, client_id: int, after_path: str | None, limit: int) -> list[HistoryRow]:
    """Versions of whole paths (all versions of each), paths > `after_path`, about `limit` rows, by path.

    The last path of a full page is dropped and left for the next page, so
    each path comes complete; a path with more versions than `limit` comes
    alone.
    """
    q = _history_select(client_id)
    if after_path is not None:
        q = q.where(_versions.c.path > after_path)
    rows = [_row(r) for r in s.execute(q.order_by(_versions.c.path, _versions.c.valid_from).limit(limit))]
    if len(rows) < limit:
        return rows
    last = rows[-1].path
    complete = [r for r in rows if r.path != last]
    if complete:
        return complete
    return path_history(s, client_id, [last])


def path_history(s: Session, client_id: int, paths: Sequence[str]) -> list[HistoryRow]:
    """Every version of these paths, by path and age."""
    out: list[HistoryRow] = []
    for piece in _pieces(sorted(set(paths))):
        q = _history_select(client_id).where(_versions.c.path.in_(piece))
        out.extend(_row(r) for r in s.execute(q.order_by(_versions.c.path, _versions.c.valid_from)))
    return out


def paths_closed_by(s: Session, client_id: int, run_seq: int) -> list[str]:
    """Paths whose version run `run_seq` closed: the only paths a run can give prune work."""
    q = select(_versions.c.path).where(_versions.c.client_id == client_id, _versions.c.valid_to == run_seq)
    return list(dict.fromkeys(s.scalars(q)))


def delete_versions(s: Session, client_id: int, ids: Sequence[int]) -> int:
    """Delete these versions of the client (closed ones only: a current version is never removed)."""
    n = 0
    for piece in _pieces(list(ids)):
        stmt = delete(_versions).where(
            _versions.c.client_id == client_id, _versions.c.id.in_(piece), _versions.c.valid_to.is_not(None)
        )
        n += s.execute(stmt).rowcount
    return n


def content_use_counts(s: Session, user_id: int, content_ids: Sequence[str]) -> dict[str, int]:
    """How many versions of the user's clients use each content."""
    out: dict[str, int] = {}
    for piece in _pieces(sorted(set(content_ids))):
        q = (
            select(_versions.c.content_id, func.count())
            .where(_versions.c.content_id.in_(piece), _versions.c.client_id == _clients.c.id, _clients.c.user_id == user_id)
            .group_by(_versions.c.content_id)
        )
        out.update((cid, n) for cid, n in s.execute(q))
    return out


def content_chunks(s: Session, user_id: int, content_ids: Sequence[str]) -> dict[str, bytes]:
    """The raw chunk id lists of these contents."""
    out: dict[str, bytes] = {}
    for piece in _pieces(sorted(set(content_ids))):
        q = select(_contents.c.id, _contents.c.chunk_ids).where(_contents.c.user_id == user_id, _contents.c.id.in_(piece))
        out.update((cid, bytes(blob)) for cid, blob in s.execute(q))
    return out


# --- what a run did ---------------------------------------------------------------------


def opened_by(s: Session, client_id: int, user_id: int, run_seq: int) -> Iterator[tuple[Row, bytes | None]]:
    """The versions run `run_seq` opened (still in the catalog), with their contents' raw chunk ids,
    in the order of the (client_id, valid_from) index: no order a reader relies on.

    Plain rows with the version's columns as attributes, not ORM objects: a
    first run opens a version per file, and building a Version object for
    each cost more than writing the manifest. Not sorted by path: SQLite
    sorted a first run's rows, chunk lists included, in ~8 MB of the
    server's memory, which its heap then kept.
    """
    q = (
        select(_versions, _contents.c.chunk_ids)
        .outerjoin(_contents, and_(_contents.c.user_id == user_id, _contents.c.id == _versions.c.content_id))
        .where(_versions.c.client_id == client_id, _versions.c.valid_from == run_seq)
        # SQLite's planner, without statistics, may walk every version of the client instead.
        .with_hint(_versions, "INDEXED BY ix_versions_client_id_valid_from", "sqlite")
        .execution_options(yield_per=1000)
    )
    for row in s.execute(q):
        yield row, None if row.chunk_ids is None else bytes(row.chunk_ids)


def closed_by(s: Session, client_id: int, run_seq: int) -> list[tuple[str, int]]:
    """(path, valid_from) of the versions run `run_seq` closed."""
    q = (
        select(_versions.c.path, _versions.c.valid_from)
        .where(_versions.c.client_id == client_id, _versions.c.valid_to == run_seq)
        .order_by(_versions.c.path)
        .with_hint(_versions, "INDEXED BY ix_versions_client_id_valid_to", "sqlite")
    )
    return [(p, f) for p, f in s.execute(q)]


_WITHOUT_MANIFEST = (_runs.c.status != "running") & _runs.c.manifest_at.is_(None)


def runs_without_manifest(s: Session, finished_before: datetime) -> list[int]:
    """Ids of finished runs whose manifest has not been written (oldest first)."""
    q = select(_runs.c.id).where(_WITHOUT_MANIFEST, _runs.c.finished_at < finished_before).order_by(_runs.c.id)
    return list(s.scalars(q))


def count_runs_without_manifest(s: Session) -> int:
    """Finished runs whose manifest is not in storage yet (however recently they finished)."""
    return s.execute(select(func.count()).select_from(_runs).where(_WITHOUT_MANIFEST)).scalar_one()


def abandon_runs(s: Session, inactive_since: datetime, now: datetime, error: str) -> list[int]:
    """Mark running runs failed whose run and agent were both silent since `inactive_since`; returns their ids.

    The agent's heartbeats count: a run busy uploading one huge file commits
    nothing for a long time, but its agent still reports in.
    """
    agent_seen = exists().where(_clients.c.id == _runs.c.client_id, _clients.c.last_seen >= inactive_since)
    stmt = (
        update(_runs)
        .where(_runs.c.status == "running", _runs.c.last_activity < inactive_since, ~agent_seen)
        .values(status="failed", finished_at=now, error=error)
        .returning(_runs.c.id)
    )
    return list(s.scalars(stmt))


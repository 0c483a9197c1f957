"""The catalog side of garbage collection: touching, marking, collecting chunks and contents, pack bookkeeping.

Concurrency protocol (docs/retention.md): whoever is about to rely on a chunk
or content (an agent asking which chunks are missing, a commit naming them)
first *touches* it, setting `last_seen` in a short transaction of its own.
GC deletes only rows whose `last_seen` is before its cutoff, re-checked in the
DELETE statement itself; on PostgreSQL that statement locks its rows with
`FOR UPDATE SKIP LOCKED`, so it never waits for a backup and a backup waits
for it at most one short transaction. Every function takes a session and
leaves committing to the caller, like `catalog.queries`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, and_, bindparam, delete, exists, func, select, update
from sqlmodel import Session

from bkup.catalog.models import Chunk, Client, Content, Pack, Run, Version, id_from_db, id_to_db
from bkup.catalog.queries import IN_PIECE, ChunkLocation, _driver_value, _pieces, _rows_by_ids

_chunks: Table = Chunk.__table__  # type: ignore[assignment]
_contents: Table = Content.__table__  # type: ignore[assignment]
_packs: Table = Pack.__table__  # type: ignore[assignment]
_versions: Table = Version.__table__  # type: ignore[assignment]
_clients: Table = Client.__table__  # type: ignore[assignment]
_runs: Table = Run.__table__  # type: ignore[assignment]

LIVE = "live"
RETIRED = "retired"


# --- touching -------------------------------------------------------------------------


def touch(
    s: Session, user_id: int, *, chunk_ids: Sequence[str] = (), content_ids: Sequence[str] = (),
    now: datetime, refresh: timedelta = timedelta(0),
) -> dict[str, int]:
    """Set `last_seen = now` on these chunks and contents of the user; returns the raw length of
    each of `chunk_ids` the user holds (an id absent from the answer is missing).

    Rows touched within `refresh` are left alone (a read, not a write): the
    caller then relies on them for at most grace − refresh, far more than any
    request takes. What the answer names stays, by GC's protocol, for that
    long: callers check existence and lengths from it rather than look every
    id up again.
    """
    stale_before = _driver_value(s, _chunks, "last_seen", now - refresh)  # contents' last_seen: the same type
    sql = "SELECT id, raw_len, CASE WHEN last_seen < {m} THEN 1 ELSE 0 END FROM chunks WHERE user_id = {m} AND id IN ({ids})"
    raw_ids = [id_to_db(i) for i in dict.fromkeys(chunk_ids)]
    found: dict[bytes, int] = {}
    stale: list[bytes] = []
    for raw, raw_len, is_stale in _rows_by_ids(s, sql, raw_ids, stale_before, user_id):
        found[bytes(raw)] = raw_len
        if is_stale:
            stale.append(bytes(raw))
    # A stale chunk GC deleted since the lookup is missing after all.
    kept = _lock_and_touch(s, _chunks, user_id, stale, now)
    for raw in set(stale) - kept:
        del found[raw]
    _lock_and_touch(s, _contents, user_id, [id_to_db(i) for i in dict.fromkeys(content_ids)], now, stale_before=stale_before)
    return {id_from_db(raw): n for raw, n in found.items()}


def _lock_and_touch(s: Session, table: Table, user_id: int, raw_ids: Sequence[bytes], now: datetime, *, stale_before: object = None) -> set[bytes]:
    """Lock these rows that still exist (and, given `stale_before`, are older) and set their `last_seen`;
    returns the ids of the rows updated."""
    # Locked in id order (PostgreSQL), like GC's repoint: no lock cycles between them.
    older = " AND last_seen < {m}" if stale_before is not None else ""
    sql = f"SELECT id FROM {table.name} WHERE user_id = {{m}}{older} AND id IN ({{ids}}) ORDER BY id"
    params = (user_id, stale_before) if stale_before is not None else (user_id,)
    locked = [id_from_db(row[0]) for row in _rows_by_ids(s, sql, sorted(raw_ids), *params, for_update=True)]
    # What the UPDATE itself reports: on SQLite the SELECT above locks nothing, and GC may delete
    # a row before this statement takes the write lock.
    updated: set[bytes] = set()
    for piece in _pieces(locked):
        stmt = update(table).where(table.c.user_id == user_id, table.c.id.in_(piece)).values(last_seen=now).returning(table.c.id)
        updated.update(id_to_db(cid) for cid in s.scalars(stmt))
    return updated


# --- marking --------------------------------------------------------------------------


def _used_by_versions(user_id: int, content_id_col) -> object:
    """EXISTS a version of one of the user's clients with this content."""
    return exists().where(
        _versions.c.content_id == content_id_col,
        _versions.c.client_id == _clients.c.id,
        _clients.c.user_id == user_id,
    )


def referenced_chunk_ids(s: Session, user_id: int, *, excluding: frozenset[str] | set[str] = frozenset()) -> set[bytes]:
    """The raw 32-byte ids of every chunk of a content that some version of the user references.

    Contents in `excluding` do not count (prune's estimate: what if these lost their versions).
    """
    q = select(_contents.c.id, _contents.c.chunk_ids).where(
        _contents.c.user_id == user_id, _used_by_versions(user_id, _contents.c.id)
    )
    marked: set[bytes] = set()
    for content_id, blob in s.execute(q.execution_options(yield_per=2000)):
        if content_id in excluding:
            continue
        blob = bytes(blob)
        marked.update(blob[i : i + 32] for i in range(0, len(blob), 32))
    return marked


def protected_since(s: Session, user_id: int) -> datetime | None:
    """Start of the user's oldest running run: what such a run asked for or uploaded stays."""
    q = select(func.min(_runs.c.started_at)).where(
        _runs.c.status == "running", _runs.c.client_id == _clients.c.id, _clients.c.user_id == user_id
    )
    t = s.execute(q).scalar()
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


# --- collecting -----------------------------------------------------------------------


def delete_unused_contents(s: Session, user_id: int, cutoff: datetime, limit: int = 1000) -> int:
    """Delete up to `limit` contents no version uses and nobody touched since `cutoff`; returns how many."""
    candidates = (
        select(_contents.c.id)
        .where(_contents.c.user_id == user_id, _contents.c.last_seen < cutoff, ~_used_by_versions(user_id, _contents.c.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = delete(_contents).where(
        _contents.c.user_id == user_id, _contents.c.last_seen < cutoff, _contents.c.id.in_(candidates)
    )
    return s.execute(stmt).rowcount


def stale_chunk_ids(s: Session, user_id: int, cutoff: datetime) -> Iterator[bytes]:
    """Raw ids of the user's chunks nobody touched since `cutoff` (GC's candidates)."""
    q = select(_chunks.c.id).where(_chunks.c.user_id == user_id, _chunks.c.last_seen < cutoff)
    for (cid,) in s.execute(q.execution_options(yield_per=5000)):
        yield id_to_db(cid)


@dataclass(frozen=True, slots=True)
class DeletedChunk:
    id: str
    pack_id: str
    raw_len: int
    length: int


def delete_chunks(s: Session, user_id: int, ids: Sequence[str], cutoff: datetime) -> list[DeletedChunk]:
    """Delete these chunk rows if still untouched since `cutoff` (re-checked, rows locked or skipped)."""
    out: list[DeletedChunk] = []
    for piece in _pieces(list(ids)):
        locked = (
            select(_chunks.c.id)
            .where(_chunks.c.user_id == user_id, _chunks.c.id.in_(piece), _chunks.c.last_seen < cutoff)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            delete(_chunks)
            .where(_chunks.c.user_id == user_id, _chunks.c.last_seen < cutoff, _chunks.c.id.in_(locked))
            .returning(_chunks.c.id, _chunks.c.pack_id, _chunks.c.raw_len, _chunks.c.length)
        )
        out.extend(DeletedChunk(*row) for row in s.execute(stmt))
    return out


# --- packs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackUsage:
    id: str
    size: int
    live_chunks: int
    live_bytes: int  # blob bytes the catalog still points at


def pack_usage(s: Session, user_id: int) -> list[PackUsage]:
    """Every live pack of the user with how much of it the catalog still uses."""
    q = (
        select(_packs.c.id, _packs.c.size, func.count(_chunks.c.id), func.coalesce(func.sum(_chunks.c.length), 0))
        .select_from(_packs.outerjoin(_chunks, and_(_chunks.c.pack_id == _packs.c.id, _chunks.c.user_id == _packs.c.user_id)))
        .where(_packs.c.user_id == user_id, _packs.c.state == LIVE)
        .group_by(_packs.c.id, _packs.c.size)
        .order_by(_packs.c.id)
    )
    return [PackUsage(*row) for row in s.execute(q)]


def chunks_in_pack(s: Session, user_id: int, pack_id: str) -> list[ChunkLocation]:
    """The chunk rows pointing into a pack, in offset order."""
    cols = (_chunks.c.id, _chunks.c.pack_id, _chunks.c.offset, _chunks.c.length, _chunks.c.raw_len, _chunks.c.flags)
    q = select(*cols).where(_chunks.c.user_id == user_id, _chunks.c.pack_id == pack_id).order_by(_chunks.c.offset)
    return [ChunkLocation(*row) for row in s.execute(q)]


def repoint(s: Session, user_id: int, moves: Sequence[tuple[str, str, int, int]], new_pack_id: str) -> int:
    """Point chunks at their copies in `new_pack_id`: (chunk id, old pack id, offset, length) each.

    A row moves only if it still points at the old pack (another GC may have
    moved or deleted it); returns rows moved.
    """
    stmt = (
        update(_chunks)
        .where(_chunks.c.user_id == user_id, _chunks.c.id == bindparam("cid"), _chunks.c.pack_id == bindparam("old"))
        .values(pack_id=new_pack_id, offset=bindparam("new_offset"), length=bindparam("new_length"))
    )
    # In id order, like every other writer of chunk rows: two transactions never wait on each other in a cycle.
    params = [{"cid": c, "old": old, "new_offset": off, "new_length": ln} for c, old, off, ln in sorted(moves)]
    moved = 0
    for piece in _pieces(params, IN_PIECE):
        moved += s.execute(stmt.execution_options(synchronize_session=False), list(piece)).rowcount
    return moved


def _unreferenced_pack():
    return ~exists().where(_chunks.c.pack_id == _packs.c.id)


def add_pack(s: Session, user_id: int, pack_id: str, size: int, n_chunks: int, now: datetime) -> None:
    """Record a pack GC wrote; its chunk rows are then pointed at it with `repoint`."""
    s.execute(_packs.insert().values(id=pack_id, user_id=user_id, size=size, n_chunks=n_chunks, created_at=now, state=LIVE))


def retire_packs(s: Session, pack_ids: Sequence[str], delete_after: datetime) -> list[str]:
    """Mark live packs nothing points into as retired, to be deleted after `delete_after`; returns those marked."""
    out: list[str] = []
    for piece in _pieces(list(pack_ids)):
        stmt = (
            update(_packs)
            .where(_packs.c.id.in_(piece), _packs.c.state == LIVE, _unreferenced_pack())
            .values(state=RETIRED, delete_after=delete_after)
            .returning(_packs.c.id)
        )
        out.extend(s.scalars(stmt))
    return out


def due_packs(s: Session, now: datetime, user_id: int | None = None) -> list[tuple[int, str, int]]:
    """(user_id, pack_id, size) of retired packs whose delete_after has passed."""
    q = select(_packs.c.user_id, _packs.c.id, _packs.c.size).where(_packs.c.state == RETIRED, _packs.c.delete_after <= now)
    if user_id is not None:
        q = q.where(_packs.c.user_id == user_id)
    return [tuple(row) for row in s.execute(q.order_by(_packs.c.id))]  # type: ignore[misc]


def still_referenced(s: Session, pack_id: str) -> bool:
    return s.execute(select(exists().where(_chunks.c.pack_id == pack_id))).scalar() or False


def forget_pack(s: Session, pack_id: str) -> bool:
    """Delete a retired pack's row if still nothing points into it."""
    stmt = delete(_packs).where(_packs.c.id == pack_id, _packs.c.state == RETIRED, _unreferenced_pack())
    return s.execute(stmt).rowcount > 0


def revive_pack(s: Session, pack_id: str) -> None:
    """A retired pack that chunk rows point into again is live (should not happen; never delete it)."""
    s.execute(update(_packs).where(_packs.c.id == pack_id).values(state=LIVE, delete_after=None))

"""The catalog queries the server needs: chunks and packs, runs, reading trees (committing: `catalog.commits`).

Every function takes a `Session` first and leaves the transaction to the
caller (none of them commits). Writes are set-based: one commit batch of
2,000 entries (`catalog.commits`) is a handful of statements (IN lookups in pieces of
`IN_PIECE`, one executemany insert, one update, one delete), never a round
trip per entry. Bulk statements go through Core, so Version objects the
caller loaded earlier in the same session may be stale afterwards.

Version periods (DESIGN.md §2): a version is visible as of run R when
`valid_from <= R AND (valid_to IS NULL OR valid_to > R)`; the current one
has `valid_to IS NULL` (at most one per path, a partial unique index).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Row, Table, and_, func, null, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from bkup.catalog.models import Chunk, Client, Content, Log, Pack, Run, Version, id_from_db, id_to_db
from bkup.core import paths as core_paths
from bkup.errors import NotFound, UsageError

IN_PIECE = 500  # ids or paths per IN (...) list
SQLITE_ROWS_PER_INSERT = 500  # rows per INSERT statement of a bulk insert on SQLite
# Bound parameters per statement: SQLite's default limit (999 before 3.32).
SQLITE_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999

_chunks: Table = Chunk.__table__  # type: ignore[assignment]
_contents: Table = Content.__table__  # type: ignore[assignment]
_packs: Table = Pack.__table__  # type: ignore[assignment]
_runs: Table = Run.__table__  # type: ignore[assignment]
_versions: Table = Version.__table__  # type: ignore[assignment]

# Column order of the chunk rows' bulk insert (`_bulk_insert` takes rows as tuples).
_CHUNK_COLS = ("user_id", "id", "pack_id", "offset", "length", "raw_len", "flags", "created_at", "last_seen")


class PackEntryLike(Protocol):
    id: str
    offset: int
    length: int
    raw_len: int
    flags: int


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    id: str
    pack_id: str
    offset: int
    length: int
    raw_len: int
    flags: int


def _now() -> datetime:
    return datetime.now(UTC)


def _pieces(items: Sequence[Any], size: int = IN_PIECE) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _insert(s: Session, table: Table) -> Any:
    """An INSERT that knows ON CONFLICT for the session's dialect."""
    if s.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _bulk_insert(s: Session, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, skip_existing: bool = False) -> int:
    """INSERT many rows at driver level; returns how many were inserted.

    The bulk inserts of a backup (thousands of versions, contents and chunks
    per request) bypass SQLAlchemy's per-row parameter processing, which cost
    more than the statements themselves (~40 ms per commit batch of 2,000).
    So each value must already be what the driver takes: `_driver_value`
    converts the few that need it (timestamps) once per batch. With
    `skip_existing`, rows whose key exists are skipped (ON CONFLICT DO NOTHING).

    On SQLite, rows go many to a statement (`INSERT … VALUES (…), (…), …`):
    with `executemany`, every row was one `sqlite3_step`, which releases the
    GIL and must take it back from whichever server thread took it meanwhile
    — in a busy server that wait cost more than the row (docs/performance.md).
    PostgreSQL's driver sends an `executemany` in one pipeline.
    """
    if not rows:
        return 0
    conn = s.connection()
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    values = f"({', '.join([mark] * len(columns))})"
    head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) VALUES "
    tail = " ON CONFLICT DO NOTHING" if skip_existing else ""
    if dialect.name != "sqlite":
        result = conn.exec_driver_sql(head + values + tail, [tuple(r) for r in rows])
        return max(result.rowcount, 0)
    inserted = 0
    for piece in _pieces(rows, min(SQLITE_ROWS_PER_INSERT, SQLITE_MAX_VARIABLES // len(columns))):
        result = conn.exec_driver_sql(head + ", ".join([values] * len(piece)) + tail, tuple(v for r in piece for v in r))
        inserted += max(result.rowcount, 0)
    return inserted


def _rows_by_ids(s: Session, sql: str, ids: Sequence[Any], *params: Any, for_update: bool = False) -> Iterator[tuple[Any, ...]]:
    """The rows of `sql` for every piece of `ids`, as the driver's plain tuples, in the session's transaction.

    `sql` marks its parameters `{m}` (bound from `params`, driver values) and
    the id list `{ids}`. A commit and a missing-query look up thousands of
    ids: SQLAlchemy's expanding IN parameters and row objects cost more than
    SQLite's lookups (like `_bulk_insert`). `for_update` locks the rows on
    PostgreSQL (SQLite has one writer anyway).
    """
    conn = s.connection()
    cursor = conn.connection.cursor()
    try:
        for piece in _pieces(ids):
            cursor.execute(id_list_statement(conn.dialect, sql, len(piece), for_update=for_update), (*params, *piece))
            yield from cursor.fetchall()
    finally:
        cursor.close()


def id_list_statement(dialect: Any, sql: str, n: int, *, for_update: bool = False) -> str:
    """The statement `_rows_by_ids` runs for `n` ids (tests explain its plan)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    lock = " FOR UPDATE" if for_update and dialect.name == "postgresql" else ""
    return sql.format(m=mark, ids=", ".join([mark] * n)) + lock


def _driver_value(s: Session, table: Table, column: str, value: Any) -> Any:
    """`value` as the column's type hands it to the driver (e.g. a UTC datetime as SQLite text)."""
    dialect = s.get_bind().dialect
    process = table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process is not None else value


def _normalize(path: str) -> str:
    try:
        return core_paths.normalize(path)
    except core_paths.UnsafePath as e:
        raise UsageError(f"bad path {path!r:.200}: {e}") from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_chunk_ids(blob: bytes) -> list[str]:
    """The hex chunk ids of a `contents.chunk_ids` value (raw 32-byte ids, concatenated)."""
    h = blob.hex()
    return [h[i : i + 64] for i in range(0, len(h), 64)]


def as_of(run_seq: int) -> ColumnElement[bool]:
    """The versions visible as of run `run_seq`."""
    return and_(
        Version.valid_from <= run_seq,  # type: ignore[operator]
        or_(Version.valid_to.is_(None), Version.valid_to > run_seq),  # type: ignore[union-attr,operator]
    )


# --- chunks and packs ----------------------------------------------------------------


def _chunk_raw_lens(s: Session, user_id: int, ids: Sequence[str]) -> dict[str, int]:
    sql = "SELECT id, raw_len FROM chunks WHERE user_id = {m} AND id IN ({ids})"
    return {id_from_db(raw): n for raw, n in _rows_by_ids(s, sql, [id_to_db(i) for i in ids], user_id)}


def missing_chunks(s: Session, user_id: int, ids: Sequence[str]) -> list[str]:
    """The ids (in order, without duplicates) that `user_id` holds no chunk for."""
    unique = list(dict.fromkeys(ids))
    have = _chunk_raw_lens(s, user_id, unique)
    return [i for i in unique if i not in have]


def record_pack(s: Session, user_id: int, pack_id: str, size: int, entries: Sequence[PackEntryLike]) -> int:
    """Record a written pack and those of its chunks the user did not hold yet; returns chunk rows inserted.

    Idempotent and safe against concurrent uploads of the same chunk: the first
    pack recorded wins, a later copy is dead weight in its pack for GC.
    """
    now = _now()
    first: dict[str, PackEntryLike] = {}
    for e in entries:
        first.setdefault(e.id, e)
    s.execute(
        _insert(s, _packs)
        .values(id=pack_id, user_id=user_id, size=size, n_chunks=len(first), created_at=now)
        .on_conflict_do_nothing()
    )
    if not first:
        return 0
    # Sorted, so that two transactions inserting overlapping ids cannot deadlock on PostgreSQL.
    ts = _driver_value(s, _chunks, "created_at", now)
    rows = [
        (user_id, id_to_db(e.id), pack_id, e.offset, e.length, e.raw_len, e.flags, ts, ts)
        for e in sorted(first.values(), key=lambda e: e.id)
    ]
    return _bulk_insert(s, _chunks, _CHUNK_COLS, rows, skip_existing=True)


def chunk_locations(s: Session, user_id: int, ids: Sequence[str]) -> dict[str, ChunkLocation]:
    """Where each of `ids` lives; ids the user does not hold are absent from the answer."""
    sql = 'SELECT id, pack_id, "offset", length, raw_len, flags FROM chunks WHERE user_id = {m} AND id IN ({ids})'
    found = {}
    for raw, *rest in _rows_by_ids(s, sql, [id_to_db(i) for i in dict.fromkeys(ids)], user_id):
        cid = id_from_db(raw)
        found[cid] = ChunkLocation(cid, *rest)
    return found


# --- runs ---------------------------------------------------------------------------


def start_run(s: Session, client_id: int, trigger: str, now: datetime) -> Run:
    """A new running run with the next seq of the client (1, 2, 3 …).

    Concurrent starts get distinct seqs: on PostgreSQL the client row is locked
    first; on SQLite the single INSERT computing max(seq)+1 runs under the
    database write lock.
    """
    if s.execute(select(Client.id).where(Client.id == client_id).with_for_update()).first() is None:
        raise NotFound(f"no client {client_id}")
    next_seq = (
        select(func.coalesce(func.max(_runs.c.seq), 0) + 1).where(_runs.c.client_id == client_id).scalar_subquery()
    )
    values = Run(client_id=client_id, seq=0, trigger=trigger, status="running", started_at=now, last_activity=now)
    row = values.model_dump(exclude={"id"})
    row["seq"] = next_seq
    run_id = s.execute(_runs.insert().values(**row).returning(_runs.c.id)).scalar_one()
    run = s.get(Run, run_id, populate_existing=True)
    assert run is not None
    return run


def resolve_run(s: Session, client_id: int, *, run: int | None = None, at: datetime | None = None) -> int | None:
    """The run seq a read is "as of": `run` itself (checked), the last run started at or before `at`, or the latest.

    Returns None only when neither is given and the client has no runs yet.
    """
    if run is not None and at is not None:
        raise UsageError("give a run or a time, not both")
    if run is not None:
        found = s.execute(select(_runs.c.seq).where(_runs.c.client_id == client_id, _runs.c.seq == run)).scalar()
        if found is None:
            raise NotFound(f"client has no run {run}")
        return run
    q = select(func.max(_runs.c.seq)).where(_runs.c.client_id == client_id)
    if at is not None:
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        seq = s.execute(q.where(_runs.c.started_at <= at)).scalar()
        if seq is None:
            raise NotFound(f"no backup at or before {at.astimezone(UTC).isoformat(timespec='seconds')}")
        return seq
    return s.execute(q).scalar()


# --- reading versions ---------------------------------------------------------------


def list_children(s: Session, client_id: int, path: str, run_seq: int) -> list[Version]:
    """The direct children of directory `path` as of run `run_seq`, by name (byte order)."""
    path = _normalize(path)
    q = (
        select(Version)
        .where(Version.client_id == client_id, Version.parent == path, as_of(run_seq))
        .order_by(Version.name)
    )
    return list(s.scalars(q))


def get_version(s: Session, client_id: int, path: str, run_seq: int) -> Version | None:
    """The version of `path` as of run `run_seq`, if the path existed then."""
    path = _normalize(path)
    q = select(Version).where(Version.client_id == client_id, Version.path == path, as_of(run_seq))
    return s.scalars(q).first()


def list_under(
    s: Session,
    *,
    client_id: int,
    user_id: int,
    path: str,
    run_seq: int,
    after: str | None,
    limit: int,
    with_chunks: bool,
) -> list[tuple[Row, list[str] | None]]:
    """One page of the versions at or under `path` as of run `run_seq`, in path (byte) order, paths > `after`.

    With `with_chunks`, each file comes with its content's chunk ids (None for
    dirs and symlinks). Two index lookups: `path` itself (it sorts before
    everything below it), then a range scan of the subtree.
    """
    path = _normalize(path)
    if after is not None and ("\0" in after or not _encodable(after)):
        raise UsageError(f"bad 'after' {after!r:.200}: not a path")
    if limit <= 0:
        return []
    # Plain rows (the version's columns as attributes), not ORM objects: a restore lists
    # every version of a client, and building a Version object per row was most of the cost.
    if with_chunks:
        base = select(_versions, _contents.c.chunk_ids).outerjoin(
            _contents, and_(_contents.c.user_id == user_id, _contents.c.id == _versions.c.content_id)
        )
    else:
        base = select(_versions, null().label("chunk_ids"))
    base = base.where(_versions.c.client_id == client_id, as_of(run_seq))

    rows: list[Any] = []
    if after is None or after < path:
        rows += s.execute(base.where(_versions.c.path == path)).all()
    q = base.where(*_below(path, after)).order_by(_versions.c.path).limit(limit - len(rows))
    rows += s.execute(q).all()
    return [(r, split_chunk_ids(r.chunk_ids) if r.kind == "file" and r.chunk_ids is not None else None) for r in rows]


def _below(path: str, after: str | None = None) -> list[ColumnElement[bool]]:
    """The versions' paths strictly below `path` (and after `after`).

    Below "/P" means in ("/P/", "/P0"), "0" being the character after "/" (no
    stored path is "/P/" itself): a byte-order range rather than LIKE, so exact (no
    wildcards to escape; SQLite's LIKE ignores ASCII case) and an index range scan.
    """
    lower = path if path == core_paths.ROOT else path + "/"
    if after is not None and after > lower:
        lower = after
    conds = [_versions.c.path > lower]
    if path != core_paths.ROOT:
        conds.append(_versions.c.path < path + "0")
    return conds


def summarize_under(s: Session, *, client_id: int, path: str, run_seq: int) -> dict[str, tuple[int, int]]:
    """Per kind, how many versions are at or under `path` as of run `run_seq`, and their bytes.

    Aggregates in the database (`path` itself, then the subtree's range, like
    `list_under`): a restore's totals without listing every version.
    """
    path = _normalize(path)
    base = select(_versions.c.kind, func.count(), func.coalesce(func.sum(_versions.c.size), 0)).where(
        _versions.c.client_id == client_id, as_of(run_seq)
    )
    totals: dict[str, tuple[int, int]] = {}
    for where in ([_versions.c.path == path], _below(path)):
        for kind, n, size in s.execute(base.where(*where).group_by(_versions.c.kind)).all():
            had_n, had_size = totals.get(kind, (0, 0))
            totals[kind] = (had_n + int(n), had_size + int(size))
    return totals


def history(s: Session, client_id: int, path: str) -> list[Version]:
    """Every version the path has had, newest first."""
    path = _normalize(path)
    q = select(Version).where(Version.client_id == client_id, Version.path == path).order_by(Version.valid_from.desc())  # type: ignore[union-attr]
    return list(s.scalars(q))


# --- logs ---------------------------------------------------------------------------


def add_log(
    s: Session, client_id: int, level: str, message: str, run_id: int | None = None, ts: datetime | None = None
) -> Log:
    """Add one line to the client's log (flushed with the caller's transaction)."""
    log = Log(client_id=client_id, run_id=run_id, level=level, message=message, ts=ts or _now())
    s.add(log)
    return log

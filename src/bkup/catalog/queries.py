"""The catalog queries the server needs: chunks and packs, runs, committing and closing versions, reading trees.

Every function takes a `Session` first and leaves the transaction to the
caller (none of them commits). Writes are set-based: one commit batch of
2,000 entries is a handful of statements (IN lookups in pieces of
`IN_PIECE`, one executemany insert, one update, one delete), never a round
trip per entry. Bulk statements go through Core, so Version objects the
caller loaded earlier in the same session may be stale afterwards.

Version periods (DESIGN.md §2): a version is visible as of run R when
`valid_from <= R AND (valid_to IS NULL OR valid_to > R)`; the current one
has `valid_to IS NULL` (at most one per path, a partial unique index).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

from sqlalchemy import ColumnElement, Row, Table, and_, delete, func, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from bkup import protocol
from bkup.catalog.models import COMPARED_FIELDS, Chunk, Client, Content, Log, Pack, Run, Version, id_from_db, id_to_db
from bkup.core import hashing
from bkup.core import paths as core_paths
from bkup.errors import Conflict, NotFound, UsageError

IN_PIECE = 500  # ids or paths per IN (...) list

_chunks: Table = Chunk.__table__  # type: ignore[assignment]
_contents: Table = Content.__table__  # type: ignore[assignment]
_packs: Table = Pack.__table__  # type: ignore[assignment]
_runs: Table = Run.__table__  # type: ignore[assignment]
_versions: Table = Version.__table__  # type: ignore[assignment]

# Column orders of the bulk inserts (`_bulk_insert` takes rows as tuples).
_CHUNK_COLS = ("user_id", "id", "pack_id", "offset", "length", "raw_len", "flags", "created_at", "last_seen")
_CONTENT_COLS = ("user_id", "id", "size", "n_chunks", "chunk_ids", "created_at", "last_seen")
_ENTRY_COLS = ("path", "parent", "name", "kind", "size", "mtime_ns", "mode", "uid", "gid", "content_id", "link_target")  # `_Pending.row`
_VERSION_COLS = ("client_id", "valid_from", *_ENTRY_COLS)
_CONTENT_AT = _ENTRY_COLS.index("content_id")  # the one entry column that goes in as raw bytes
_ROW_HEAD = itemgetter(*_ENTRY_COLS[:_CONTENT_AT])  # a `_Pending.row`'s columns before it
assert _ENTRY_COLS[_CONTENT_AT + 1 :] == ("link_target",)


class MissingChunksError(Conflict):
    """A commit names chunks the server does not hold for the user (the API answers 409 with the list)."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(f"{len(missing)} chunk(s) missing; upload them first")


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
    """INSERT many rows in one driver-level executemany; returns how many were inserted.

    The bulk inserts of a backup (thousands of versions, contents and chunks
    per request) bypass SQLAlchemy's per-row parameter processing, which cost
    more than the statements themselves (~40 ms per commit batch of 2,000).
    So each value must already be what the driver takes: `_driver_value`
    converts the few that need it (timestamps) once per batch. With
    `skip_existing`, rows whose key exists are skipped (ON CONFLICT DO NOTHING).
    """
    if not rows:
        return 0
    conn = s.connection()
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    if skip_existing:
        sql += " ON CONFLICT DO NOTHING"
    result = conn.exec_driver_sql(sql, [tuple(r) for r in rows])
    return max(result.rowcount, 0)


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


# --- committing versions ------------------------------------------------------------

class _Current(NamedTuple):
    """A path's current version, as a commit compares it with an entry (`_current_versions`)."""

    id: int
    path: str
    valid_from: int
    kind: str
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    content_id: str | None
    link_target: str | None


assert _Current._fields[3:] == COMPARED_FIELDS


@dataclass(slots=True)
class _Pending:
    """One entry, checked, on its way into `versions`."""

    row: dict[str, Any]  # the versions row to insert, without valid_from/valid_to
    chunks: list[str] | None


def _check_entry(e: protocol.Entry) -> _Pending:
    path = _normalize(e.path)
    if e.kind == "file":
        if e.chunks is None or e.link_target is not None:
            raise UsageError(f"file {path!r:.200}: needs a chunk list and no link target")
        for c in e.chunks:
            if not hashing.is_chunk_id(c):
                raise UsageError(f"file {path!r:.200}: not a chunk id: {c!r:.80}")
        content_id: str | None = hashing.content_id_of_checked(e.chunks)
    elif e.kind == "symlink":
        if e.link_target is None or e.chunks is not None:
            raise UsageError(f"symlink {path!r:.200}: needs a link target and no chunks")
        try:
            core_paths.wire_to_fs(e.link_target)
        except core_paths.UnsafePath as exc:
            raise UsageError(f"symlink {path!r:.200}: bad link target: {exc}") from None
        content_id = None
    elif e.kind == "dir":
        if e.chunks is not None or e.link_target is not None:
            raise UsageError(f"directory {path!r:.200}: takes neither chunks nor a link target")
        content_id = None
    else:
        raise UsageError(f"{path!r:.200}: unknown kind {e.kind!r}")
    if e.size < 0:
        raise UsageError(f"{path!r:.200}: negative size {e.size}")
    row = {
        "path": path,
        "parent": core_paths.parent_of(path),
        "name": core_paths.name_of(path),
        "kind": e.kind,
        "size": e.size,
        "mtime_ns": e.mtime_ns,
        "mode": e.mode,
        "uid": e.uid,
        "gid": e.gid,
        "content_id": content_id,
        "link_target": e.link_target,
    }
    return _Pending(row, list(e.chunks) if e.chunks is not None else None)


def _current_versions(s: Session, client_id: int, path_list: Sequence[str]) -> dict[str, _Current]:
    """The current versions of these paths (served by the partial unique index), at driver level.

    SQLite's planner, given a long IN list and no statistics, preferred the
    (client_id, valid_to) index: a scan of every current version of the
    client, per piece of 500 paths (a first backup got slower with every
    batch), hence the hint. Through SQLAlchemy (expanding IN parameters, row
    objects) this lookup cost ~5 µs per path, most of a first backup's
    commit outside its inserts, though it finds nothing then.
    """
    found: dict[str, _Current] = {}
    for row in _rows_by_ids(s, current_versions_sql(s.get_bind().dialect), path_list, client_id):
        cur = _Current(*row)
        if cur.content_id is not None:
            cur = cur._replace(content_id=id_from_db(cur.content_id))
        found[cur.path] = cur
    return found


def current_versions_sql(dialect: Any) -> str:
    """`_current_versions`' query, for `_rows_by_ids` (its parameters: the client id, then the paths)."""
    hint = " INDEXED BY uq_versions_client_id_path_current" if dialect.name == "sqlite" else ""
    return (
        f"SELECT {', '.join(_Current._fields)} FROM versions{hint}"
        " WHERE client_id = {m} AND valid_to IS NULL AND path IN ({ids})"
    )


def _later_run(path: str, valid_from: int, run_seq: int) -> Conflict:
    return Conflict(f"{path!r:.200} was last changed by run {valid_from}, after run {run_seq}: only the newest run may change it")


@dataclass(frozen=True, slots=True)
class CheckedEntries:
    """A commit batch, checked (`check_entries`): its rows by path (the last entry per path wins), and
    every chunk id and content id it names, once each, in first-use order."""

    pending: dict[str, _Pending]
    chunk_ids: list[str]
    content_ids: list[str]


def check_entries(entries: Sequence[protocol.Entry]) -> CheckedEntries:
    """Check a commit batch's paths and entry shapes (UsageError), and name each file's content, once.

    The server touches the batch's chunks and contents (GC's protocol) and
    commits it from this one result, so no id is validated or hashed twice.
    """
    pending: dict[str, _Pending] = {}
    for e in entries:
        p = _check_entry(e)
        pending.pop(p.row["path"], None)  # re-insert: last wins, in last position
        pending[p.row["path"]] = p
    chunk_ids = list(dict.fromkeys(c for p in pending.values() if p.chunks for c in p.chunks))
    content_ids = list(dict.fromkeys(p.row["content_id"] for p in pending.values() if p.row["content_id"] is not None))
    return CheckedEntries(pending, chunk_ids, content_ids)


def commit_entries(
    s: Session,
    *,
    client_id: int,
    user_id: int,
    run_seq: int,
    entries: Sequence[protocol.Entry] | CheckedEntries,
    raw_lens: Mapping[str, int] | None = None,
) -> tuple[int, int]:
    """Open new versions for the entries of run `run_seq`; returns (committed, unchanged).

    Checked before anything is written: paths and entry shapes (UsageError,
    unless `entries` come from `check_entries` already), that the user holds
    every chunk (MissingChunksError listing them), that a file's size is the
    sum of its chunks' lengths (UsageError). Then, per path (the last entry
    wins when a batch names a path twice): identical to the current version
    → unchanged; current version opened by this same run → replaced;
    otherwise the current version is closed at `run_seq` and the new one
    opened there.

    `raw_lens` are the chunks' lengths as the caller's touch found them
    (`garbage.touch`, which answers for the chunks it found: GC's protocol
    keeps them); without it, the chunks are looked up here.
    """
    checked = entries if isinstance(entries, CheckedEntries) else check_entries(entries)
    pending = checked.pending
    all_chunks = checked.chunk_ids
    if raw_lens is None:
        raw_lens = _chunk_raw_lens(s, user_id, all_chunks)
    missing = [c for c in all_chunks if c not in raw_lens]
    if missing:
        raise MissingChunksError(missing)
    for p in pending.values():
        if p.chunks is not None:
            total = sum(raw_lens[c] for c in p.chunks)
            if total != p.row["size"]:
                raise UsageError(f"file {p.row['path']!r:.200}: size {p.row['size']} but its chunks hold {total} bytes")

    current = _current_versions(s, client_id, list(pending))
    to_delete: list[int] = []
    to_close: list[int] = []
    new_rows: list[tuple[Any, ...]] = []
    new_contents: dict[str, _Pending] = {}
    unchanged = 0
    for path, p in pending.items():
        cur = current.get(path)
        if cur is not None:
            if all(getattr(cur, f) == p.row[f] for f in COMPARED_FIELDS):
                unchanged += 1
                continue
            if cur.valid_from == run_seq:
                to_delete.append(cur.id)  # no zero-length periods: the run's own version is replaced
            elif cur.valid_from < run_seq:
                to_close.append(cur.id)
            else:
                raise _later_run(path, cur.valid_from, run_seq)
        content = p.row["content_id"]
        raw_content = None if content is None else id_to_db(content)
        new_rows.append((client_id, run_seq, *_ROW_HEAD(p.row), raw_content, p.row["link_target"]))
        if content is not None:
            new_contents.setdefault(content, p)

    if new_contents:
        ts = _driver_value(s, _contents, "created_at", _now())
        rows = [
            (user_id, id_to_db(cid), p.row["size"], len(p.chunks or ()), bytes.fromhex("".join(p.chunks or ())), ts, ts)
            for cid, p in sorted(new_contents.items())
        ]
        _bulk_insert(s, _contents, _CONTENT_COLS, rows, skip_existing=True)
    for piece in _pieces(to_delete):
        s.execute(delete(_versions).where(_versions.c.id.in_(piece)))
    for piece in _pieces(to_close):
        s.execute(update(_versions).where(_versions.c.id.in_(piece)).values(valid_to=run_seq))
    _bulk_insert(s, _versions, _VERSION_COLS, new_rows)
    return len(new_rows), unchanged


def close_paths(s: Session, *, client_id: int, run_seq: int, paths: Iterable[str]) -> int:
    """Record that these paths are gone as of run `run_seq`; returns how many had a current version.

    A version the same run opened is deleted rather than closed (no zero-length
    periods). Only the named paths are closed: the agent reports the contents
    of a deleted directory itself.
    """
    wanted = list(dict.fromkeys(_normalize(p) for p in paths))
    current = _current_versions(s, client_id, wanted)
    to_delete: list[int] = []
    to_close: list[int] = []
    for path, cur in current.items():
        if cur.valid_from == run_seq:
            to_delete.append(cur.id)
        elif cur.valid_from < run_seq:
            to_close.append(cur.id)
        else:
            raise _later_run(path, cur.valid_from, run_seq)
    for piece in _pieces(to_delete):
        s.execute(delete(_versions).where(_versions.c.id.in_(piece)))
    for piece in _pieces(to_close):
        s.execute(update(_versions).where(_versions.c.id.in_(piece)).values(valid_to=run_seq))
    return len(to_delete) + len(to_close)


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

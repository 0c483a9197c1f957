"""Committing a run's entries: a batch checked once, then versions opened, closed or left as they are.

The server's commit path (`server.runs`): `check_entries` validates a batch
of up to 2,000 entries and names each file's content; GC's touch confirms
the chunks they use (`catalog.garbage.touch`); `commit_entries` opens the
new versions in a handful of statements. `close_paths` records deletions.
Like `catalog.queries`, nothing here commits: the caller owns the
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Table, delete, update
from sqlmodel import Session

from bkup import protocol
from bkup.catalog.models import COMPARED_FIELDS, Content, Version, id_from_db, id_to_db
from bkup.catalog.queries import _bulk_insert, _chunk_raw_lens, _driver_value, _normalize, _now, _pieces, _rows_by_ids
from bkup.core import hashing
from bkup.core import paths as core_paths
from bkup.errors import Conflict, UsageError

_contents: Table = Content.__table__  # type: ignore[assignment]
_versions: Table = Version.__table__  # type: ignore[assignment]

# Column orders of the bulk inserts (`_bulk_insert` takes rows as tuples).
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


class _Retiring:
    """The current versions a run replaces or ends: deleted if the run itself opened them (no
    zero-length periods), else closed at the run; a version a later run opened is a Conflict."""

    def __init__(self, run_seq: int) -> None:
        self.run_seq = run_seq
        self.to_delete: list[int] = []
        self.to_close: list[int] = []

    def add(self, cur: _Current) -> None:
        if cur.valid_from == self.run_seq:
            self.to_delete.append(cur.id)
        elif cur.valid_from < self.run_seq:
            self.to_close.append(cur.id)
        else:
            raise Conflict(
                f"{cur.path!r:.200} was last changed by run {cur.valid_from}, after run {self.run_seq}: "
                "only the newest run may change it"
            )

    def apply(self, s: Session) -> int:
        """Delete and close them; returns how many."""
        for piece in _pieces(self.to_delete):
            s.execute(delete(_versions).where(_versions.c.id.in_(piece)))
        for piece in _pieces(self.to_close):
            s.execute(update(_versions).where(_versions.c.id.in_(piece)).values(valid_to=self.run_seq))
        return len(self.to_delete) + len(self.to_close)


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
    retiring = _Retiring(run_seq)
    new_rows: list[tuple[Any, ...]] = []
    new_contents: dict[str, _Pending] = {}
    unchanged = 0
    for path, p in pending.items():
        cur = current.get(path)
        if cur is not None:
            if all(getattr(cur, f) == p.row[f] for f in COMPARED_FIELDS):
                unchanged += 1
                continue
            retiring.add(cur)
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
    retiring.apply(s)
    _bulk_insert(s, _versions, _VERSION_COLS, new_rows)
    return len(new_rows), unchanged


def close_paths(s: Session, *, client_id: int, run_seq: int, paths: Iterable[str]) -> int:
    """Record that these paths are gone as of run `run_seq`; returns how many had a current version.

    A version the same run opened is deleted rather than closed (no zero-length
    periods). Only the named paths are closed: the agent reports the contents
    of a deleted directory itself.
    """
    wanted = list(dict.fromkeys(_normalize(p) for p in paths))
    retiring = _Retiring(run_seq)
    for cur in _current_versions(s, client_id, wanted).values():
        retiring.add(cur)
    return retiring.apply(s)

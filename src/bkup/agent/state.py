"""The agent's local state: the cache of what the server holds for each path, and the agent's identity.

`StateCache` (SQLite, `state.db` in the state dir) maps each path (wire form)
to the lstat facts and content marker last *committed* for it, so an
unchanged entry costs one stat and sends nothing. It is bound to one server
and client: opened for another, it starts empty. It is updated only after the
server confirmed a commit, so a crash at worst makes the next run re-send.

`agent.json` (mode 0600: it holds the secret agent token) says which server
and client this state dir belongs to.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from bkup.errors import ConfigError

IDENTITY_FILE = "agent.json"
STATE_DB = "state.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    content TEXT NOT NULL
) WITHOUT ROWID;
"""
_COLUMNS = ("kind", "size", "mtime_ns", "ctime_ns", "inode", "mode", "uid", "gid", "content")


def _i64(n: int) -> int:
    """SQLite integers are signed 64-bit; some file systems hand out inode numbers above 2**63."""
    return n - (1 << 64) if n >= 1 << 63 else n


class CachedEntry(NamedTuple):
    """What was committed for one path. `content`: content id (file), target (symlink, wire), "" (dir).

    A named tuple, like `scanner.ScanEntry`: one is made per cached path a walk looks up.
    """

    kind: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int
    uid: int
    gid: int
    content: str

    def _row(self) -> tuple:
        return (self.kind, self.size, self.mtime_ns, self.ctime_ns, _i64(self.inode), self.mode, self.uid, self.gid, self.content)


class StateCache:
    """path → CachedEntry, in SQLite (WAL). One writer: the agent process."""

    def __init__(self, db_path: str | os.PathLike[str], *, server: str, client_id: int) -> None:
        self.db_path = str(db_path)
        self._db = sqlite3.connect(self.db_path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._walk_from_empty = False
        owner = f"{server} #{client_id}"
        row = self._db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        if row is None or row[0] != owner:
            # Another server or client: nothing cached is known to be there.
            with self._tx():
                self._db.execute("DELETE FROM entries")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('owner', ?)", (owner,))

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, server: str, client_id: int) -> StateCache:
        return cls(ensure_state_dir(state_dir) / STATE_DB, server=server, client_id=client_id)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def get(self, path: str) -> CachedEntry | None:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        entry = CachedEntry(*row)
        return entry if entry.inode >= 0 else _with_inode(entry, entry.inode + (1 << 64))

    def get_many(self, paths: list[str]) -> dict[str, CachedEntry]:
        """The cached entries of those of `paths` that have one: one query per 500 paths, not one per path."""
        out: dict[str, CachedEntry] = {}
        cols = ", ".join(_COLUMNS)
        for i in range(0, len(paths), 500):
            piece = paths[i : i + 500]
            sql = f"SELECT path, {cols} FROM entries WHERE path IN ({', '.join('?' * len(piece))})"
            for path, *row in self._db.execute(sql, piece):
                entry = CachedEntry(*row)
                out[path] = entry if entry.inode >= 0 else _with_inode(entry, entry.inode + (1 << 64))
        return out

    def put_many(self, items: Iterable[tuple[str, CachedEntry]]) -> None:
        with self._tx():
            self._db.executemany(
                f"INSERT OR REPLACE INTO entries (path, {', '.join(_COLUMNS)}) VALUES (?{', ?' * len(_COLUMNS)})",
                ((path, *entry._row()) for path, entry in items),
            )

    def delete_many(self, paths: Iterable[str]) -> None:
        with self._tx():
            self._db.executemany("DELETE FROM entries WHERE path = ?", ((p,) for p in paths))

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def paths(self) -> Iterator[str]:
        return (row[0] for row in self._db.execute("SELECT path FROM entries ORDER BY path"))

    # Deletion detection without holding every seen path in memory: a temp table. A walk that
    # starts from an empty cache (a first backup, or after the cache was reset) has no deletions
    # to find, since only paths cached before it began can be missing from it: it marks nothing
    # (marking 50,000 new paths was ~4 % of the agent's CPU).

    def begin_walk(self) -> None:
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (path TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("DELETE FROM temp.seen")
        self._walk_from_empty = self._db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is None

    def mark_seen(self, paths: Iterable[str]) -> None:
        if self._walk_from_empty:
            return
        with self._tx():
            self._db.executemany("INSERT OR IGNORE INTO temp.seen VALUES (?)", ((p,) for p in paths))

    def unseen_under(self, prefixes: Iterable[str]) -> list[tuple[str, str]]:
        """(path, kind) of cached paths at or under any of `prefixes` not marked seen since begin_walk.

        Paths cached during the walk (its commits) were seen by it: when the walk began from an
        empty cache, there are no others.
        """
        if self._walk_from_empty:
            return []
        out: dict[str, str] = {}
        for prefix in prefixes:
            if prefix == "/":
                rows = self._db.execute("SELECT path, kind FROM entries WHERE path NOT IN (SELECT path FROM temp.seen)")
            else:
                # Children of P are P + '/' + …; '/' + 1 is '0', so the range [P/, P0) holds them all.
                rows = self._db.execute(
                    "SELECT path, kind FROM entries WHERE (path = ? OR (path >= ? AND path < ?))"
                    " AND path NOT IN (SELECT path FROM temp.seen)",
                    (prefix, prefix + "/", prefix + "0"),
                )
            out.update(rows)
        return sorted(out.items())


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _with_inode(entry: CachedEntry, inode: int) -> CachedEntry:
    return entry._replace(inode=inode)


# --- identity ------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentIdentity:
    """Which server and client this machine's agent speaks for, and its (secret) agent token."""

    server: str
    client_id: int
    client_name: str
    token: str

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return f"AgentIdentity(server={self.server!r}, client_id={self.client_id}, client_name={self.client_name!r})"


def ensure_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def load_identity(state_dir: str | os.PathLike[str]) -> AgentIdentity | None:
    path = Path(state_dir) / IDENTITY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return AgentIdentity(
            server=str(data["server"]),
            client_id=int(data["client_id"]),
            client_name=str(data["client_name"]),
            token=str(data["token"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable agent identity ({exc}); remove it to register again") from None


def save_identity(state_dir: str | os.PathLike[str], identity: AgentIdentity) -> Path:
    path = ensure_state_dir(state_dir) / IDENTITY_FILE
    write_secret_json(path, asdict(identity))
    return path


def write_secret_json(path: Path, data: object) -> None:
    """Write JSON readable by the owner only (0600), atomically: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file was left over with wider bits
        os.write(fd, json.dumps(data, indent=2).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

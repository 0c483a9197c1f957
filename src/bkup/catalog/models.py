"""The catalog's tables: users, tokens, clients, runs, versions, contents, chunks, packs, logs.

Conventions, the same on SQLite and PostgreSQL:

- Every byte count, offset, mtime_ns and uid/gid is a BIGINT (PostgreSQL's
  INTEGER is 32-bit).
- Timestamps are timezone-aware UTC datetimes going in and coming out
  (`UTCDateTime` is the one place that normalises them; SQLite stores them
  as naive UTC text, except the two of every chunk and content row, which
  `CompactUTCDateTime` stores there as integer microseconds).
- Paths are wire-form `str` (`bkup.core.paths`). Path-like columns sort
  byte-wise: `COLLATE "C"` on PostgreSQL, SQLite's default BINARY collation
  elsewhere, so SQL ordering equals Python's `str` ordering and `after`
  paging agrees with both.
- Chunk and content ids are 64 lowercase hex characters in Python and 32
  raw bytes in the database (`HexId`: BLOB / bytea, half the size in rows
  and keys; byte order is hex order); pack ids 32 hex characters.
- Rows owned by a user or a client go with it (ON DELETE CASCADE); a pack
  cannot be deleted while a chunk row still points into it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The catalog's own registry/metadata, so that other SQLModel users in the process
# (and their tables) never end up in our migrations.
catalog_registry = registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))
metadata = catalog_registry.metadata


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Naive datetimes are refused on the way in (they are always a bug here);
    SQLite hands back naive values, which are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the catalog stores aware UTC datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class HexId(TypeDecorator[str]):
    """A 32-byte id (chunk, content) stored as raw bytes, handled as 64 lowercase hex characters.

    The driver-level bulk paths (`catalog.queries`) bypass this conversion
    and use `id_to_db` / `id_from_db` themselves.
    """

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> bytes | None:
        return None if value is None else id_to_db(value)

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else id_from_db(value)


def id_to_db(hex_id: str) -> bytes:
    """A hex id as the catalog stores it; a malformed one is a ValueError, never stored."""
    raw = bytes.fromhex(hex_id)
    if len(raw) != 32:
        raise ValueError(f"not a 32-byte id: {hex_id!r:.80}")
    return raw


def id_from_db(raw: bytes | memoryview) -> str:
    return bytes(raw).hex()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class CompactUTCDateTime(UTCDateTime):
    """`UTCDateTime` for the timestamps of rows that come by the million (chunks, contents).

    On SQLite an integer of microseconds since the epoch (at most 8 bytes, where
    `UTCDateTime` stores 26 characters of text); on PostgreSQL the same
    timestamptz. Exact to the microsecond, like a Python datetime; ordered and
    compared like the time it stands for.
    """

    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return super().load_dialect_impl(dialect)

    def process_bind_param(self, value: datetime | None, dialect: Any) -> Any:
        value = super().process_bind_param(value, dialect)
        if value is None or dialect.name != "sqlite":
            return value
        return (value.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None or dialect.name != "sqlite":
            return super().process_result_value(value, dialect)
        return _EPOCH + timedelta(microseconds=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def PathText() -> Text:  # noqa: N802 - a type factory, read like a type
    """Unbounded text that sorts byte-wise on both backends."""
    return Text().with_variant(Text(collation="C"), "postgresql")


def IdBig() -> BigInteger:  # noqa: N802
    """A BIGINT surrogate key that is still SQLite's auto-incrementing rowid."""
    return BigInteger().with_variant(Integer(), "sqlite")


def _big(default: Any = ..., *, nullable: bool = False) -> Any:
    return Field(default=default, sa_column=Column(BigInteger, nullable=nullable))


def _ts(default_factory: Any = utcnow, *, nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    return Field(default_factory=default_factory, sa_column=Column(UTCDateTime(), nullable=False))


def _created_compact() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(CompactUTCDateTime(), nullable=False))


def _touched() -> Any:
    """A NOT NULL timestamp that Core inserts fill with now (queries insert rows as plain dicts)."""
    return Field(default_factory=utcnow, sa_column=Column(CompactUTCDateTime(), nullable=False, default=utcnow))


def _json() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


def _fk(target: str, *, nullable: bool = False, index: bool = False, ondelete: str | None = "CASCADE") -> Any:
    default = None if nullable else ...
    return Field(
        default=default,
        sa_column=Column(Integer, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=index),
    )


class CatalogModel(SQLModel, registry=catalog_registry):
    """Base of every catalog table."""


class User(CatalogModel, table=True):
    __tablename__ = "users"
    # Ids name objects in storage (keys/<user>, manifests/<client>): never reuse one.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    password_hash: str = Field(sa_column=Column(String(500), nullable=False))
    is_admin: bool = False
    created_at: datetime = _ts()
    policy: dict | None = _json()  # retention policy (core.retention); None: server default
    alert_webhook: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))  # server.alerts


class Token(CatalogModel, table=True):
    __tablename__ = "tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = _fk("users.id", index=True)
    client_id: int | None = _fk("clients.id", nullable=True, index=True)
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # "api" | "agent"
    token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))  # sha256 hex
    created_at: datetime = _ts()
    last_used_at: datetime | None = _ts(nullable=True)


class Client(CatalogModel, table=True):
    __tablename__ = "clients"
    # Ids name objects in storage (keys/<user>, manifests/<client>): never reuse one.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = _fk("users.id", index=True)
    name: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    created_at: datetime = _ts()
    last_seen: datetime | None = _ts(nullable=True)
    hostname: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    os: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    agent_version: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    state: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    config: dict | None = _json()
    policy: dict | None = _json()
    backup_requested_at: datetime | None = _ts(nullable=True)  # "backup now" pending since
    missed_alert_at: datetime | None = _ts(nullable=True)  # last schedule_missed alert (server.alerts)


class Run(CatalogModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("client_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = _fk("clients.id")
    seq: int
    trigger: str = Field(sa_column=Column(String(16), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))  # running | ok | partial | failed
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)
    last_activity: datetime = _ts()
    files_seen: int = _big(0)
    files_changed: int = _big(0)
    files_deleted: int = _big(0)
    dirs_seen: int = _big(0)
    bytes_scanned: int = _big(0)
    bytes_new: int = _big(0)
    bytes_uploaded: int = _big(0)
    errors: int = _big(0)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    manifest_at: datetime | None = _ts(nullable=True)  # when its manifest reached storage (server.manifests)


class Version(CatalogModel, table=True):
    """One period of one path of one client: open from run `valid_from` until `valid_to` (exclusive)."""

    __tablename__ = "versions"
    __table_args__ = (
        Index("ix_versions_client_id_parent_valid_from", "client_id", "parent", "valid_from"),
        Index("ix_versions_client_id_path_valid_from", "client_id", "path", "valid_from"),
        # What a run opened and closed (manifests, prune after a run), and who uses a content (GC).
        Index("ix_versions_client_id_valid_from", "client_id", "valid_from"),
        Index("ix_versions_client_id_valid_to", "client_id", "valid_to"),
        Index("ix_versions_content_id", "content_id"),
        # One current version per path.
        Index(
            "uq_versions_client_id_path_current",
            "client_id",
            "path",
            unique=True,
            sqlite_where=text("valid_to IS NULL"),
            postgresql_where=text("valid_to IS NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(IdBig(), primary_key=True, autoincrement=True))
    client_id: int = _fk("clients.id")
    path: str = Field(sa_column=Column(PathText(), nullable=False))
    parent: str = Field(sa_column=Column(PathText(), nullable=False))
    name: str = Field(sa_column=Column(PathText(), nullable=False))
    kind: str = Field(sa_column=Column(String(8), nullable=False))  # file | dir | symlink
    size: int = _big(0)
    mtime_ns: int = _big(0)
    mode: int = 0
    uid: int = _big(0)
    gid: int = _big(0)
    content_id: str | None = Field(default=None, sa_column=Column(HexId(), nullable=True))
    link_target: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    valid_from: int  # run seq that opened this version
    valid_to: int | None = None  # run seq that closed it; None: current


# What makes two versions of a path different (commit_entries opens a new version).
COMPARED_FIELDS = ("kind", "size", "mtime_ns", "mode", "uid", "gid", "content_id", "link_target")


class Content(CatalogModel, table=True):
    """A file body: its ordered chunk ids, concatenated raw (32 bytes each)."""

    __tablename__ = "contents"

    user_id: int = Field(sa_column=Column(Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True))
    id: str = Field(sa_column=Column(HexId(), primary_key=True))
    size: int = _big()
    n_chunks: int
    chunk_ids: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = _created_compact()
    last_seen: datetime = _touched()  # GC never collects what was touched within its grace period


class Pack(CatalogModel, table=True):
    __tablename__ = "packs"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    user_id: int = _fk("users.id", index=True)
    size: int = _big()
    n_chunks: int
    created_at: datetime = _ts()
    # live → retired (GC: nothing points into it any more) → deleted from storage after delete_after.
    state: str = Field(default="live", sa_column=Column(String(16), nullable=False, default="live", server_default="live"))
    delete_after: datetime | None = _ts(nullable=True)


class Chunk(CatalogModel, table=True):
    """Where one chunk of one user lives: a blob inside a pack."""

    __tablename__ = "chunks"

    user_id: int = Field(sa_column=Column(Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True))
    id: str = Field(sa_column=Column(HexId(), primary_key=True))
    pack_id: str = Field(sa_column=Column(String(32), ForeignKey("packs.id"), nullable=False, index=True))
    offset: int = _big()
    length: int
    raw_len: int
    flags: int
    created_at: datetime = _created_compact()
    last_seen: datetime = _touched()  # uploaded, asked for or committed (see docs/retention.md)


class Log(CatalogModel, table=True):
    __tablename__ = "logs"
    __table_args__ = (Index("ix_logs_client_id_ts", "client_id", "ts"),)

    id: int | None = Field(default=None, sa_column=Column(IdBig(), primary_key=True, autoincrement=True))
    client_id: int = _fk("clients.id")
    run_id: int | None = _fk("runs.id", nullable=True, index=True)
    ts: datetime = _ts()
    level: str = Field(sa_column=Column(String(16), nullable=False))
    message: str = Field(sa_column=Column(Text, nullable=False))


class MaintenanceRun(CatalogModel, table=True):
    """One prune, GC, check or run sweep: who started it, how it ended (the server page shows the last ones)."""

    __tablename__ = "maintenance_runs"
    __table_args__ = (Index("ix_maintenance_runs_action_started_at", "action", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    action: str = Field(sa_column=Column(String(32), nullable=False))  # "prune" | "gc" | "check" | "runs_sweep"
    trigger: str = Field(sa_column=Column(String(200), nullable=False))  # "schedule", "cli", "web:<user>"
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)
    ok: bool | None = Field(default=None, sa_column=Column(Boolean, nullable=True))
    summary: str = Field(default="", sa_column=Column(Text, nullable=False))

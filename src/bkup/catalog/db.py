"""The catalog database handle: engine, sessions and schema migrations, for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import ExceptionContext
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from bkup.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Serialises `upgrade()` across server replicas sharing one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x626B7570  # "bkup"

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
    # A WAL file keeps its largest size after a checkpoint unless told otherwise:
    # a first backup left 17-25 MB of it behind, next to a 70 MB catalog.
    "PRAGMA journal_size_limit=4194304",
    # 8 MiB of page cache per connection instead of 2: inserts into the random-keyed indexes (chunk and
    # content ids) of a first backup re-read fewer pages (server CPU -6 % on 50,000 small files, RSS +30 MB).
    "PRAGMA cache_size=-8192",
)


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain `postgresql://` (and `postgres://`) means psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"invalid database URL {url!r}: {e}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {parsed.render_as_string(hide_password=True)}: use sqlite or postgresql")
    return parsed


class Catalog:
    """One catalog database: `session()` for work, `upgrade()` once at start."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.kind: Literal["sqlite", "postgresql"] = self.url.get_backend_name()  # type: ignore[assignment]
        self.engine: Engine = self._create_engine()

    def __repr__(self) -> str:
        return f"Catalog({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for messages and logs."""
        return self.url.render_as_string(hide_password=True)

    def _create_engine(self) -> Engine:
        kwargs: dict[str, Any] = {}
        if self.kind == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            database = self.url.database
            if not database or database == ":memory:":
                # One shared connection, or every session would see its own empty database.
                kwargs["poolclass"] = StaticPool
            elif not database.startswith("file:"):
                folder = Path(database).expanduser().parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise ConfigError(f"cannot create the folder of the database {self.safe_url}: {e}") from None
        else:
            kwargs["pool_pre_ping"] = True
            # No server-side prepared statements: a generic plan of `path IN (500 params)`
            # cannot hash the list and scans linearly (60x slower on first backups);
            # it also keeps bkup usable behind pgbouncer in transaction mode.
            kwargs["connect_args"] = {"prepare_threshold": None}
        engine = create_engine(self.url, **kwargs)
        if self.kind == "sqlite":
            event.listen(engine, "connect", _sqlite_on_connect)
            engine.dialect.statement_compiler = _SQLiteHintingCompiler
        event.listen(engine, "handle_error", self._on_error)
        return engine

    def _on_error(self, context: ExceptionContext) -> BaseException | None:
        # Only failures to *open* a connection are configuration problems; errors of
        # statements on a working connection stay SQLAlchemy errors, and a failed
        # pre-ping must stay a disconnect so that the pool reconnects.
        if context.is_pre_ping or context.connection is not None:
            return None
        if isinstance(context.sqlalchemy_exception, OperationalError):
            cause = str(context.original_exception).strip().splitlines()
            reason = cause[0] if cause else type(context.original_exception).__name__
            return ConfigError(f"cannot open the database at {self.safe_url}: {reason}")
        return None

    def session(self) -> Session:
        """A new session; attributes stay loaded after commit (`expire_on_commit=False`)."""
        return Session(self.engine, expire_on_commit=False)

    def alembic_config(self) -> Any:
        """An alembic Config for this database, built in code (no alembic.ini)."""
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        # '%' is interpolation syntax in alembic's ConfigParser.
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%"))
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to `revision` (default: the newest). Safe to call on every start."""
        from alembic import command

        cfg = self.alembic_config()
        before = self.current_revision() if self.kind == "sqlite" else None
        with self.engine.begin() as conn:
            if self.kind == "postgresql":
                # Replicas starting together migrate one after the other.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        if self.kind == "sqlite" and before is not None and self.current_revision() != before:
            # A migration that rebuilds tables (0005) leaves the old pages free inside the file: the
            # catalog of a first backup of 50,000 files went from 54 to 105 MB. Give them back once.
            # At start-up, before anything else uses the catalog; VACUUM went through the WAL.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def current_revision(self) -> str | None:
        """The schema revision the database is at (None: not initialised)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def dispose(self) -> None:
        self.engine.dispose()


class _SQLiteHintingCompiler(SQLiteCompiler):
    """SQLite's compiler, rendering table hints: `.with_hint(table, "INDEXED BY ix_name", "sqlite")`.

    SQLAlchemy drops table hints on SQLite. The catalog needs a few: with no
    statistics, SQLite's planner picks a poor index for some queries (see
    `history.opened_by`; `commits._current_versions` names its index in its own SQL).
    """

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()

"""A more compact catalog: raw ids, and integer times on SQLite for the rows that come by the million.

- `chunks.id`, `contents.id` and `versions.content_id` become 32 raw bytes
  (BLOB / bytea, `models.HexId`) instead of 64 hex characters: half the
  bytes in those rows and in the keys and index built on them. Byte order
  equals hex order, so every ordering by id stays the same.
- On SQLite, `created_at` and `last_seen` of chunks and contents become
  integer microseconds since the epoch (`models.CompactUTCDateTime`), not 26
  characters of text. PostgreSQL's timestamptz is 8 bytes already.

Together a quarter of the catalog after a first backup of many small files
(docs/performance.md).

SQLite has no unhex() before 3.41: the values are converted by functions
registered on the migrating connection, then the tables are rebuilt with the
new column types (batch mode). PostgreSQL converts in ALTER COLUMN.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

"""
from datetime import datetime, timedelta
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

IDS = (("chunks", "id"), ("contents", "id"), ("versions", "content_id"))
TIMES = (("chunks", "created_at"), ("chunks", "last_seen"), ("contents", "created_at"), ("contents", "last_seen"))
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)


def _unhex(value):
    return bytes.fromhex(value) if isinstance(value, str) else value


def _hex(value):
    return bytes(value).hex() if isinstance(value, (bytes, memoryview)) else value


def _micros(value):
    # SQLite's text of a naive UTC datetime ("2026-01-01 00:00:00[.ffffff]").
    return (datetime.fromisoformat(value).replace(tzinfo=None) - EPOCH) // MICROSECOND if isinstance(value, str) else value


def _text(value):
    # As SQLAlchemy writes a DATETIME on SQLite, so that text comparisons order it right.
    return (EPOCH + timedelta(microseconds=value)).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, int) else value


def _convert_sqlite(columns, function) -> None:
    name = "bkup_" + function.__name__.strip("_")
    op.get_bind().connection.driver_connection.create_function(name, 1, function, deterministic=True)
    for table, column in columns:
        op.execute(f"UPDATE {table} SET {column} = {name}({column}) WHERE {column} IS NOT NULL")


def _retype_sqlite(id_type, old_id_type, time_type, old_time_type) -> None:
    for table in ("chunks", "contents", "versions"):
        with op.batch_alter_table(table) as batch:
            for t, column in IDS:
                if t == table:
                    batch.alter_column(column, type_=id_type, existing_type=old_id_type)
            for t, column in TIMES:
                if t == table:
                    batch.alter_column(column, type_=time_type, existing_type=old_time_type, existing_nullable=False)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in IDS:
            op.alter_column(table, column, type_=sa.LargeBinary(), existing_type=sa.String(length=64),
                            postgresql_using=f"decode({column}, 'hex')")
        return
    _convert_sqlite(IDS, _unhex)
    _convert_sqlite(TIMES, _micros)
    _retype_sqlite(sa.LargeBinary(), sa.String(length=64), sa.BigInteger(), sa.DateTime(timezone=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in IDS:
            op.alter_column(table, column, type_=sa.String(length=64), existing_type=sa.LargeBinary(),
                            postgresql_using=f"encode({column}, 'hex')")
        return
    # The rebuild CASTs to the new type: ids go back to text before it (a CAST of a blob to text would
    # take its bytes as UTF-8), times after it (a CAST of "2026-01-01 ..." to BIGINT would keep 2026).
    _convert_sqlite(IDS, _hex)
    _retype_sqlite(sa.String(length=64), sa.LargeBinary(), sa.DateTime(timezone=True), sa.BigInteger())
    _convert_sqlite(TIMES, _text)

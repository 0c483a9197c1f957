"""Retention and garbage collection: touch times, pack states, manifest bookkeeping, history indexes.

- `chunks.last_seen`, `contents.last_seen`: when a chunk or content was last
  uploaded, asked for or committed; GC never deletes one touched within its
  grace period (docs/retention.md). Existing rows start at `created_at`.
- `packs.state` (live | retired) and `packs.delete_after`: a retired pack is
  deleted from storage once no chunk row points into it and the time passed.
- `runs.manifest_at`: when the run's manifest reached storage.
- versions by (client_id, valid_from), (client_id, valid_to) and content_id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    for table in ("chunks", "contents"):
        op.add_column(table, sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True))
        op.execute(f"UPDATE {table} SET last_seen = created_at")
        with op.batch_alter_table(table) as batch:
            batch.alter_column('last_seen', existing_type=sa.DateTime(timezone=True), nullable=False)
    op.add_column('packs', sa.Column('state', sa.String(length=16), nullable=False, server_default='live'))
    op.add_column('packs', sa.Column('delete_after', sa.DateTime(timezone=True), nullable=True))
    op.add_column('runs', sa.Column('manifest_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_versions_client_id_valid_from', 'versions', ['client_id', 'valid_from'], unique=False)
    op.create_index('ix_versions_client_id_valid_to', 'versions', ['client_id', 'valid_to'], unique=False)
    op.create_index('ix_versions_content_id', 'versions', ['content_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_versions_content_id', table_name='versions')
    op.drop_index('ix_versions_client_id_valid_to', table_name='versions')
    op.drop_index('ix_versions_client_id_valid_from', table_name='versions')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('manifest_at')
    with op.batch_alter_table('packs') as batch:
        batch.drop_column('delete_after')
        batch.drop_column('state')
    for table in ("contents", "chunks"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('last_seen')

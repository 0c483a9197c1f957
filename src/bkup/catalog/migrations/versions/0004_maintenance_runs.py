"""Maintenance runs: the outcome of every prune, GC, check and run sweep, whichever replica ran it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'maintenance_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('trigger', sa.String(length=200), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ok', sa.Boolean(), nullable=True),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_maintenance_runs')),
    )
    op.create_index('ix_maintenance_runs_action_started_at', 'maintenance_runs', ['action', 'started_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_maintenance_runs_action_started_at', table_name='maintenance_runs')
    op.drop_table('maintenance_runs')

"""Alerts: a webhook per user, and when a client's missed schedule was last alerted.

- `users.alert_webhook`: the user's own webhook URL (server.alerts), besides
  the global `alert_webhooks` setting.
- `clients.missed_alert_at`: set by the missed-schedule check with a
  conditional UPDATE, so each missed slot is alerted once across replicas.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('users', sa.Column('alert_webhook', sa.String(length=2000), nullable=True))
    op.add_column('clients', sa.Column('missed_alert_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('clients') as batch:
        batch.drop_column('missed_alert_at')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('alert_webhook')

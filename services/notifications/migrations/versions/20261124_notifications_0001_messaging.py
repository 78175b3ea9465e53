"""outbox and inbox

Revision ID: notifications_0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op
from dropslot_kit.migrations import create_messaging_tables

revision = "notifications_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "notifications")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS notifications.inbox")
    op.execute("DROP TABLE IF EXISTS notifications.outbox")
    op.execute("DROP FUNCTION IF EXISTS notifications.outbox_notify() CASCADE")

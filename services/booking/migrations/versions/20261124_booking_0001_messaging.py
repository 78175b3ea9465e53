"""outbox and inbox

Revision ID: booking_0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op
from dropslot_kit.migrations import create_messaging_tables

revision = "booking_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "booking")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS booking.inbox")
    op.execute("DROP TABLE IF EXISTS booking.outbox")
    op.execute("DROP FUNCTION IF EXISTS booking.outbox_notify() CASCADE")

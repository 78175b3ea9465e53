"""outbox and inbox

Revision ID: identity_0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op
from dropslot_kit.migrations import create_messaging_tables

revision = "identity_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "identity")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS identity.inbox")
    op.execute("DROP TABLE IF EXISTS identity.outbox")
    op.execute("DROP FUNCTION IF EXISTS identity.outbox_notify() CASCADE")

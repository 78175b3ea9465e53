"""outbox and inbox

Revision ID: audit_0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op
from dropslot_kit.migrations import create_messaging_tables

revision = "audit_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "audit")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS audit.inbox")
    op.execute("DROP TABLE IF EXISTS audit.outbox")
    op.execute("DROP FUNCTION IF EXISTS audit.outbox_notify() CASCADE")

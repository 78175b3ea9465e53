"""outbox and inbox

Revision ID: catalog_0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op
from dropslot_kit.migrations import create_messaging_tables

revision = "catalog_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "catalog")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS catalog.inbox")
    op.execute("DROP TABLE IF EXISTS catalog.outbox")
    op.execute("DROP FUNCTION IF EXISTS catalog.outbox_notify() CASCADE")

"""provider operations remember who caused them

Revision ID: payments_0003
Revises: payments_0002
Create Date: 2026-11-25

An op is run later by the background worker, outside the request or consumed event that
queued it. Keeping that call's context on the row - `{"actor": {user_id, ip, user_agent},
"correlation_id": ...}`, NULL when nobody in particular asked (reconciliation) - lets the
worker emit the op's events in the name of the person who caused them, as a consumer does.
"""

from alembic import op

revision = "payments_0003"
down_revision = "payments_0002"
branch_labels = None
depends_on = None

S = "payments"


def upgrade() -> None:
    op.execute(f"ALTER TABLE {S}.payment_ops ADD COLUMN origin jsonb")


def downgrade() -> None:
    op.execute(f"ALTER TABLE {S}.payment_ops DROP COLUMN IF EXISTS origin")

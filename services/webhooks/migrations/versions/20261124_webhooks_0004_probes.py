"""probes of failing endpoints

Revision ID: webhooks_0004
Revises: webhooks_0003
Create Date: 2026-11-24

While an endpoint fails, its deliveries wait on their own retry schedules (hours, late in
the schedule). So that a receiver that comes back is noticed within minutes, a failing
endpoint is probed at `next_probe_at` with its oldest pending delivery; a success delivers
everything that waits.
"""

from alembic import op

revision = "webhooks_0004"
down_revision = "webhooks_0003"
branch_labels = None
depends_on = None

S = "webhooks"


def upgrade() -> None:
    op.execute(f"ALTER TABLE {S}.webhook_endpoints ADD COLUMN next_probe_at timestamptz")
    op.execute(f"CREATE INDEX ix_webhook_endpoints_next_probe_at ON {S}.webhook_endpoints (next_probe_at)"
               " WHERE active AND failing_since IS NOT NULL")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {S}.ix_webhook_endpoints_next_probe_at")
    op.execute(f"ALTER TABLE {S}.webhook_endpoints DROP COLUMN IF EXISTS next_probe_at")

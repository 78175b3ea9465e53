"""store members and webhook endpoints: local copies for the "endpoint disabled" mail

Revision ID: notifications_0003
Revises: notifications_0002
Create Date: 2026-11-24
"""

from alembic import op
from dropslot_kit.memberships import create_membership_table

revision = "notifications_0003"
down_revision = "notifications_0002"
branch_labels = None
depends_on = None

S = "notifications"


def upgrade() -> None:
    # Who owns a store: the kit's store_members, kept by `consume_memberships` as in every
    # service that needs store roles.
    create_membership_table(op, S)
    # Webhook endpoints as webhooks' events describe them: the disabled event carries no
    # description, so it is kept from endpoint.created.
    op.execute(f"""
        CREATE TABLE {S}.webhook_endpoints (
            endpoint_id uuid PRIMARY KEY,
            store_id uuid NOT NULL,
            url text NOT NULL,
            description text,
            source_at timestamptz NOT NULL
        )""")


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {S}.webhook_endpoints")
    op.execute(f"DROP TABLE IF EXISTS {S}.store_members")

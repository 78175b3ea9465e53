"""store owners and webhook endpoints: local copies for the "endpoint disabled" mail

Revision ID: notifications_0003
Revises: notifications_0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "notifications_0003"
down_revision = "notifications_0002"
branch_labels = None
depends_on = None

S = "notifications"


def upgrade() -> None:
    # Who owns a store: catalog.store.created names the creator, identity.role.granted / revoked
    # (code store_owner) add and remove owners later. A revoked owner keeps its row with
    # is_owner = false, and source_at (the occurred_at of the event that last set it) keeps a
    # late store.created from bringing back an owner whose role was revoked since.
    op.execute(f"""
        CREATE TABLE {S}.store_owners (
            store_id uuid NOT NULL,
            user_id uuid NOT NULL,
            is_owner boolean NOT NULL,
            source_at timestamptz NOT NULL,
            PRIMARY KEY (store_id, user_id)
        )""")
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
    op.execute(f"DROP TABLE IF EXISTS {S}.store_owners")

"""fan-out in one statement: endpoint filters as a regular expression, and `fan_out()`

Revision ID: webhooks_0003
Revises: webhooks_0002
Create Date: 2026-11-24

The consumer sees every store event of the platform (a drop storm is thousands a second), so
turning one into its deliveries is a single call: `fan_out()` scopes the transaction to the
event's store (row-level security) and inserts one delivery per active endpoint whose filter
matches, the filter being kept beside `event_types` as the regular expression
`filters.to_regex` derives from it.
"""

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0003"
down_revision = "webhooks_0002"
branch_labels = None
depends_on = None

S = "webhooks"


def upgrade() -> None:
    from dropslot_webhooks.domain.filters import to_regex

    op.execute(f"ALTER TABLE {S}.webhook_endpoints ADD COLUMN event_type_regex text")
    conn = op.get_bind()
    conn.execute(sa.text("SELECT set_config('dropslot.scope', 'system', true)"))
    rows = conn.execute(sa.text(
        f"SELECT id, event_types FROM {S}.webhook_endpoints WHERE cardinality(event_types) > 0")).fetchall()
    for endpoint_id, event_types in rows:
        conn.execute(sa.text(f"UPDATE {S}.webhook_endpoints SET event_type_regex = :r WHERE id = :i"),
                     {"r": to_regex(event_types), "i": endpoint_id})
    op.execute(f"""
        CREATE FUNCTION {S}.fan_out(p_store uuid, p_event uuid, p_type text, p_payload json, p_occurred timestamptz)
        RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE n integer;
        BEGIN
            PERFORM set_config('dropslot.store', p_store::text, true);
            PERFORM set_config('dropslot.scope', '', true);
            INSERT INTO {S}.webhook_events (id, endpoint_id, store_id, event_id, type, payload, occurred_at)
            SELECT gen_random_uuid(), e.id, p_store, p_event, p_type, p_payload, p_occurred
            FROM {S}.webhook_endpoints e
            WHERE e.store_id = p_store AND e.active
              AND (e.event_type_regex IS NULL OR ('.' || p_type) ~ e.event_type_regex)
            ON CONFLICT (endpoint_id, event_id) DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            RETURN n;
        END $$""")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {S}.fan_out(uuid, uuid, text, json, timestamptz)")
    op.execute(f"ALTER TABLE {S}.webhook_endpoints DROP COLUMN IF EXISTS event_type_regex")

"""deliveries remember the trace of the event that caused them

Revision ID: webhooks_0005
Revises: webhooks_0004
Create Date: 2026-11-24

A delivery is sent later by a background worker; keeping the consumer's `traceparent` on the
row lets that send continue the reservation's trace (gateway → booking → broker → webhooks →
the receiver), as the outbox does for events.
"""

from alembic import op

revision = "webhooks_0005"
down_revision = "webhooks_0004"
branch_labels = None
depends_on = None

S = "webhooks"


def upgrade() -> None:
    op.execute(f"ALTER TABLE {S}.webhook_events ADD COLUMN traceparent text")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.fan_out(uuid, uuid, text, json, timestamptz)")
    op.execute(f"""
        CREATE FUNCTION {S}.fan_out(p_store uuid, p_event uuid, p_type text, p_payload json, p_occurred timestamptz,
                                    p_traceparent text DEFAULT NULL)
        RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE n integer;
        BEGIN
            PERFORM set_config('dropslot.store', p_store::text, true);
            PERFORM set_config('dropslot.scope', '', true);
            INSERT INTO {S}.webhook_events (id, endpoint_id, store_id, event_id, type, payload, occurred_at,
                                            traceparent)
            SELECT gen_random_uuid(), e.id, p_store, p_event, p_type, p_payload, p_occurred, p_traceparent
            FROM {S}.webhook_endpoints e
            WHERE e.store_id = p_store AND e.active
              AND (e.event_type_regex IS NULL OR ('.' || p_type) ~ e.event_type_regex)
            ON CONFLICT (endpoint_id, event_id) DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            RETURN n;
        END $$""")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {S}.fan_out(uuid, uuid, text, json, timestamptz, text)")
    op.execute(f"ALTER TABLE {S}.webhook_events DROP COLUMN IF EXISTS traceparent")
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

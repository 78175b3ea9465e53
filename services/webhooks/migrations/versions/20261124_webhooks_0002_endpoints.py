"""webhook endpoints, deliveries and attempts; store members

Revision ID: webhooks_0002
Revises: webhooks_0001
Create Date: 2026-11-24

Every table holding a store's data is guarded by row-level security on `store_id`: a
transaction sees a store's rows only after `set_config('dropslot.store', <store id>, true)`
(the API does this after authorizing the caller for that store), or every store's rows with
`dropslot.scope = 'system'` (the delivery workers, which serve all stores). A query that
forgets both sees nothing. FORCE makes the policy apply to the owning role too, which is the
role the service connects as.
"""

from alembic import op
from dropslot_kit.memberships import create_membership_table

revision = "webhooks_0002"
down_revision = "webhooks_0001"
branch_labels = None
depends_on = None

S = "webhooks"
POLICY = (
    "current_setting('dropslot.scope', true) = 'system'"
    " OR store_id::text = current_setting('dropslot.store', true)"
)


def upgrade() -> None:
    create_membership_table(op, S)
    op.execute(f"""
        CREATE TABLE {S}.webhook_endpoints (
            id uuid PRIMARY KEY,
            store_id uuid NOT NULL,
            url text NOT NULL,
            description text,
            event_types text[] NOT NULL DEFAULT '{{}}',
            active boolean NOT NULL DEFAULT true,
            secret text NOT NULL,
            secret_hint text NOT NULL,
            previous_secret text,
            previous_secret_expires_at timestamptz,
            failing_since timestamptz,
            disabled_reason text,
            disabled_at timestamptz,
            created_by uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_webhook_endpoints_disabled_reason
                CHECK (disabled_reason IS NULL OR disabled_reason IN ('gone', 'failing'))
        )""")
    op.execute(f"CREATE INDEX ix_webhook_endpoints_store_id ON {S}.webhook_endpoints (store_id, created_at, id)")

    op.execute(f"""
        CREATE TABLE {S}.webhook_events (
            id uuid PRIMARY KEY,
            seq bigserial NOT NULL,
            endpoint_id uuid NOT NULL
                CONSTRAINT fk_webhook_events_endpoint_id_webhook_endpoints
                REFERENCES {S}.webhook_endpoints (id) ON DELETE CASCADE,
            store_id uuid NOT NULL,
            event_id uuid NOT NULL,
            type text NOT NULL,
            payload json NOT NULL,
            occurred_at timestamptz NOT NULL,
            delivery_status text NOT NULL DEFAULT 'pending',
            retry_count integer NOT NULL DEFAULT 0,
            attempt_count integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            locked_until timestamptz,
            lock_token uuid,
            last_attempt_at timestamptz,
            last_status_code integer,
            last_error text,
            delivered_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_webhook_events_endpoint_id_event_id UNIQUE (endpoint_id, event_id),
            CONSTRAINT ck_webhook_events_delivery_status
                CHECK (delivery_status IN ('pending', 'delivered', 'failed'))
        )""")
    # The workers' claim: due deliveries, per endpoint in order, and what is in flight now.
    op.execute(f"CREATE INDEX ix_webhook_events_due ON {S}.webhook_events (next_attempt_at)"
               " WHERE delivery_status = 'pending'")
    op.execute(f"CREATE INDEX ix_webhook_events_endpoint_due ON {S}.webhook_events"
               " (endpoint_id, next_attempt_at, seq) WHERE delivery_status = 'pending'")
    op.execute(f"CREATE INDEX ix_webhook_events_inflight ON {S}.webhook_events (endpoint_id)"
               " WHERE delivery_status = 'pending' AND locked_until IS NOT NULL")
    # The delivery log (newest first) and retention.
    op.execute(f"CREATE INDEX ix_webhook_events_endpoint_seq ON {S}.webhook_events (endpoint_id, seq)")
    op.execute(f"CREATE INDEX ix_webhook_events_finished ON {S}.webhook_events (updated_at)"
               " WHERE delivery_status <> 'pending'")

    op.execute(f"""
        CREATE TABLE {S}.webhook_attempts (
            id bigserial PRIMARY KEY,
            webhook_event_id uuid NOT NULL
                CONSTRAINT fk_webhook_attempts_webhook_event_id_webhook_events
                REFERENCES {S}.webhook_events (id) ON DELETE CASCADE,
            endpoint_id uuid NOT NULL,
            store_id uuid NOT NULL,
            attempt_number integer NOT NULL,
            url text NOT NULL,
            started_at timestamptz NOT NULL,
            duration_ms integer NOT NULL,
            status_code integer,
            success boolean NOT NULL,
            response_body text,
            error text,
            worker text
        )""")
    op.execute(f"CREATE INDEX ix_webhook_attempts_webhook_event_id ON {S}.webhook_attempts (webhook_event_id, id)")

    # New deliveries wake the workers at once (LISTEN/NOTIFY); polling is only the fallback.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {S}.deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('webhooks_deliveries', ''); RETURN NULL; END $$""")
    op.execute(f"""
        CREATE TRIGGER webhook_events_notify AFTER INSERT ON {S}.webhook_events
        FOR EACH STATEMENT EXECUTE FUNCTION {S}.deliveries_notify()""")

    for table in ("webhook_endpoints", "webhook_events", "webhook_attempts"):
        op.execute(f"ALTER TABLE {S}.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {S}.{table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY store_isolation ON {S}.{table} USING ({POLICY}) WITH CHECK ({POLICY})")


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {S}.webhook_attempts")
    op.execute(f"DROP TABLE IF EXISTS {S}.webhook_events")
    op.execute(f"DROP TABLE IF EXISTS {S}.webhook_endpoints")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.deliveries_notify() CASCADE")
    op.execute(f"DROP TABLE IF EXISTS {S}.store_members")

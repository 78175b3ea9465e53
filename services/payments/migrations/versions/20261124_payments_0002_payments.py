"""payments, refunds, provider operations and callbacks, the sandbox processor's own tables,
store memberships

Revision ID: payments_0002
Revises: payments_0001
Create Date: 2026-11-24
"""

from alembic import op
from dropslot_kit.memberships import create_membership_table

revision = "payments_0002"
down_revision = "payments_0001"
branch_labels = None
depends_on = None

S = "payments"
TENANT_POLICY = (
    "current_setting('dropslot.tenant', true) = '*' OR tenant_key = current_setting('dropslot.tenant', true)"
)


def upgrade() -> None:
    # One payment per reservation (seed: payments.reservation_id unique). Amounts in minor units.
    op.execute(f"""
        CREATE TABLE {S}.payments (
            id uuid PRIMARY KEY,
            reservation_id uuid NOT NULL,
            user_id uuid NOT NULL,
            store_id uuid NOT NULL,
            tenant_key text,
            provider text NOT NULL,
            provider_intent_id text,
            client_secret text,
            amount_cents integer NOT NULL,
            currency text NOT NULL,
            status text NOT NULL,
            intent_status text,
            captured_cents integer NOT NULL DEFAULT 0,
            refunded_cents integer NOT NULL DEFAULT 0,
            failure_reason text,
            next_action jsonb,
            -- booking's reservation as last reported (events may arrive out of order: occurred_at decides)
            reservation_state text NOT NULL,
            reservation_event_at timestamptz,
            reservation_confirmed boolean NOT NULL DEFAULT false,
            refund_on_cancel boolean NOT NULL DEFAULT false,
            refund_requested boolean NOT NULL DEFAULT false,
            cancel_requested boolean NOT NULL DEFAULT false,
            -- when the fetch of the last applied provider snapshot began (older snapshots are ignored)
            snapshot_at timestamptz,
            next_reconcile_at timestamptz,
            reconcile_attempts integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_payments_reservation_id UNIQUE (reservation_id),
            CONSTRAINT ck_payments_amount_positive CHECK (amount_cents > 0),
            CONSTRAINT ck_payments_currency_iso CHECK (currency ~ '^[A-Z]{{3}}$'),
            CONSTRAINT ck_payments_money CHECK (
                captured_cents >= 0 AND captured_cents <= amount_cents
                AND refunded_cents >= 0 AND refunded_cents <= captured_cents),
            CONSTRAINT ck_payments_status CHECK (status IN (
                'creating', 'requires_payment_method', 'requires_action', 'processing', 'requires_capture',
                'succeeded', 'partially_refunded', 'refunded', 'canceled', 'failed'))
        )""")
    op.execute(f"CREATE UNIQUE INDEX uq_payments_provider_intent ON {S}.payments (provider, provider_intent_id)"
               " WHERE provider_intent_id IS NOT NULL")
    op.execute(f"CREATE INDEX ix_payments_user_created ON {S}.payments (user_id, created_at DESC, id DESC)")
    op.execute(f"CREATE INDEX ix_payments_store ON {S}.payments (store_id)")
    op.execute(f"""CREATE INDEX ix_payments_open ON {S}.payments (next_reconcile_at, updated_at)
                   WHERE status IN ('creating', 'requires_payment_method', 'requires_action', 'processing',
                                    'requires_capture')""")

    op.execute(f"""
        CREATE TABLE {S}.payment_refunds (
            id uuid PRIMARY KEY,
            payment_id uuid NOT NULL REFERENCES {S}.payments (id),
            tenant_key text,
            amount_cents integer NOT NULL CHECK (amount_cents > 0),
            status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
            reason text NOT NULL,
            requested_by uuid,
            provider_refund_id text,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"CREATE INDEX ix_payment_refunds_payment ON {S}.payment_refunds (payment_id)")

    for table in ("payments", "payment_refunds"):
        op.execute(f"ALTER TABLE {S}.{table} ENABLE ROW LEVEL SECURITY")
        # The service role owns its tables; FORCE makes the policy apply to the owner too.
        op.execute(f"ALTER TABLE {S}.{table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {S}.{table} USING ({TENANT_POLICY})"
                   f" WITH CHECK ({TENANT_POLICY})")

    # Calls to the provider still to make (create/capture/cancel/refund/sync): a durable queue,
    # so slow provider I/O never runs inside a consumer's or a request's transaction.
    op.execute(f"""
        CREATE TABLE {S}.payment_ops (
            id bigserial PRIMARY KEY,
            payment_id uuid NOT NULL REFERENCES {S}.payments (id),
            kind text NOT NULL CHECK (kind IN ('create', 'capture', 'cancel', 'refund', 'sync')),
            dedup_key text NOT NULL,
            refund_id uuid,
            cause text,
            status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
            due_at timestamptz NOT NULL DEFAULT now(),
            locked_until timestamptz,
            again boolean NOT NULL DEFAULT false,
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"CREATE UNIQUE INDEX uq_payment_ops_pending ON {S}.payment_ops (payment_id, dedup_key)"
               " WHERE status = 'pending'")
    op.execute(f"CREATE INDEX ix_payment_ops_due ON {S}.payment_ops (due_at, id) WHERE status = 'pending'")
    op.execute(f"CREATE INDEX ix_payment_ops_payment ON {S}.payment_ops (payment_id)")
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {S}.payment_ops_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('payments_ops', ''); RETURN NULL; END $$""")
    op.execute(f"""
        CREATE OR REPLACE TRIGGER payment_ops_notify AFTER INSERT ON {S}.payment_ops
        FOR EACH STATEMENT EXECUTE FUNCTION {S}.payment_ops_notify()""")

    # Inbound provider callbacks, stored before they act: the unique id makes a replay a no-op.
    op.execute(f"""
        CREATE TABLE {S}.provider_events (
            provider text NOT NULL,
            event_id text NOT NULL,
            type text NOT NULL,
            intent_id text,
            payload jsonb NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider, event_id)
        )""")
    op.execute(f"CREATE INDEX ix_provider_events_intent ON {S}.provider_events (provider, intent_id)")

    op.execute(f"""
        CREATE TABLE {S}.payment_transitions (
            id bigserial PRIMARY KEY,
            payment_id uuid NOT NULL REFERENCES {S}.payments (id),
            from_status text,
            to_status text NOT NULL,
            cause text NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"CREATE INDEX ix_payment_transitions_payment ON {S}.payment_transitions (payment_id, id)")

    # --- the sandbox card processor's own state (it shares nothing with the tables above) ------
    op.execute(f"""
        CREATE TABLE {S}.sandbox_intents (
            id text PRIMARY KEY,
            amount integer NOT NULL CHECK (amount > 0),
            currency text NOT NULL,
            status text NOT NULL,
            client_secret text NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{{}}',
            amount_capturable integer NOT NULL DEFAULT 0,
            amount_received integer NOT NULL DEFAULT 0,
            amount_refunded integer NOT NULL DEFAULT 0 CHECK (amount_refunded <= amount_received),
            last_payment_error jsonb,
            next_action jsonb,
            cancellation_reason text,
            behavior text,
            settle_at timestamptz,
            callbacks_lost boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"CREATE INDEX ix_sandbox_intents_settle ON {S}.sandbox_intents (settle_at)"
               " WHERE status = 'processing'")
    op.execute(f"""
        CREATE TABLE {S}.sandbox_idempotency (
            key text PRIMARY KEY,
            operation text NOT NULL,
            request jsonb NOT NULL,
            response jsonb,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"""
        CREATE TABLE {S}.sandbox_refunds (
            id text PRIMARY KEY,
            intent_id text NOT NULL REFERENCES {S}.sandbox_intents (id),
            amount integer NOT NULL CHECK (amount > 0),
            status text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"""
        CREATE TABLE {S}.sandbox_events (
            id text PRIMARY KEY,
            type text NOT NULL,
            intent_id text NOT NULL,
            payload jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"CREATE INDEX ix_sandbox_events_intent ON {S}.sandbox_events (intent_id, created_at)")
    op.execute(f"""
        CREATE TABLE {S}.sandbox_callbacks (
            id bigserial PRIMARY KEY,
            event_id text NOT NULL REFERENCES {S}.sandbox_events (id),
            due_at timestamptz NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            delivered_at timestamptz,
            last_status integer,
            last_error text,
            lost boolean NOT NULL DEFAULT false
        )""")
    op.execute(f"CREATE INDEX ix_sandbox_callbacks_due ON {S}.sandbox_callbacks (due_at)"
               " WHERE delivered_at IS NULL AND NOT lost")
    op.execute(f"CREATE INDEX ix_sandbox_callbacks_event ON {S}.sandbox_callbacks (event_id)")

    create_membership_table(op, S)


def downgrade() -> None:
    for table in ("sandbox_callbacks", "sandbox_events", "sandbox_refunds", "sandbox_idempotency",
                  "sandbox_intents", "payment_transitions", "provider_events", "payment_ops", "payment_refunds",
                  "payments", "store_members"):
        op.execute(f"DROP TABLE IF EXISTS {S}.{table}")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.payment_ops_notify() CASCADE")

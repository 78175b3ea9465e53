"""notifications, contacts, preferences, drop subscriptions and the local read copies

Revision ID: notifications_0002
Revises: notifications_0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "notifications_0002"
down_revision = "notifications_0001"
branch_labels = None
depends_on = None

S = "notifications"


def upgrade() -> None:
    # Users' contact details, copied from identity events so sending never calls identity.
    # profile_at/status_at: the occurred_at of the event that last set those fields, so a late,
    # older event cannot overwrite a newer one (identity events may arrive out of order).
    op.execute(f"""
        CREATE TABLE {S}.contacts (
            user_id uuid PRIMARY KEY,
            email text,
            name text,
            status text NOT NULL DEFAULT 'active',
            email_verified boolean NOT NULL DEFAULT false,
            profile_at timestamptz,
            status_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"""
        CREATE TABLE {S}.preferences (
            user_id uuid PRIMARY KEY,
            email boolean NOT NULL DEFAULT true,
            sms boolean NOT NULL DEFAULT false,
            push boolean NOT NULL DEFAULT false,
            phone text,
            push_token text,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute(f"""
        CREATE TABLE {S}.notifications (
            id uuid PRIMARY KEY,
            user_id uuid NOT NULL,
            channel text NOT NULL CONSTRAINT ck_notifications_channel CHECK (channel IN ('email', 'sms', 'push')),
            template text NOT NULL,
            payload jsonb NOT NULL,
            status text NOT NULL DEFAULT 'PENDING'
                CONSTRAINT ck_notifications_status CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
            recipient text,
            subject text,
            priority smallint NOT NULL DEFAULT 0,
            event_id uuid NOT NULL,
            event_type text NOT NULL,
            dedupe_key text,
            attempts int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error text,
            sent_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    # One event never makes a second message for the same user, template and channel ...
    op.execute(f"CREATE UNIQUE INDEX uq_notifications_event ON {S}.notifications "
               "(event_id, user_id, template, channel)")
    # ... nor does a second event about the same thing (e.g. a reservation confirmed twice).
    op.execute(f"CREATE UNIQUE INDEX uq_notifications_dedupe ON {S}.notifications "
               "(user_id, template, channel, dedupe_key) WHERE dedupe_key IS NOT NULL")
    # The sender's work queue: only PENDING rows are in it, most urgent first.
    op.execute(f"CREATE INDEX ix_notifications_due ON {S}.notifications (priority DESC, next_attempt_at) "
               "WHERE status = 'PENDING'")
    op.execute(f"CREATE INDEX ix_notifications_user ON {S}.notifications (user_id, created_at DESC, id DESC)")
    # Wake the sender loops as soon as a handler commits new rows (polling is the fallback).
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {S}.notifications_wake() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('notifications_pending', ''); RETURN NULL; END $$""")
    op.execute(f"""
        CREATE TRIGGER notifications_wake AFTER INSERT ON {S}.notifications
        FOR EACH STATEMENT EXECUTE FUNCTION {S}.notifications_wake()""")

    # Local read copies of catalog and booking data the messages show.
    op.execute(f"""
        CREATE TABLE {S}.stores (
            store_id uuid PRIMARY KEY,
            name text NOT NULL,
            source_at timestamptz NOT NULL
        )""")
    op.execute(f"""
        CREATE TABLE {S}.drops (
            drop_id uuid PRIMARY KEY,
            store_id uuid NOT NULL,
            name text,
            product_name text,
            store_name text,
            status text NOT NULL,
            starts_at timestamptz,
            ends_at timestamptz,
            branches jsonb NOT NULL DEFAULT '[]',
            source_at timestamptz NOT NULL
        )""")
    op.execute(f"""
        CREATE TABLE {S}.reservations (
            reservation_id uuid PRIMARY KEY,
            user_id uuid NOT NULL,
            snapshot jsonb NOT NULL,
            source_at timestamptz NOT NULL
        )""")

    # "Notify me when this drop goes live".
    op.execute(f"""
        CREATE TABLE {S}.drop_subscriptions (
            drop_id uuid NOT NULL,
            user_id uuid NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            notified_at timestamptz,
            PRIMARY KEY (drop_id, user_id)
        )""")
    op.execute(f"CREATE INDEX ix_drop_subscriptions_user ON {S}.drop_subscriptions (user_id)")


def downgrade() -> None:
    for table in ("drop_subscriptions", "reservations", "drops", "stores", "notifications", "preferences",
                  "contacts"):
        op.execute(f"DROP TABLE IF EXISTS {S}.{table}")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notifications_wake() CASCADE")

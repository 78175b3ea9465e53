"""audit_logs: append-only, partitioned by month; store memberships for the owner view

Revision ID: audit_0002
Revises: audit_0001
Create Date: 2026-11-24

The parent table only: monthly partitions are created by the service ahead of time (and on
demand for an event whose month has none), and retention drops whole partitions. Rows are
never updated or deleted: a trigger refuses UPDATE, DELETE and TRUNCATE for every role, the
owner included, and those privileges are revoked from the owner as well.

Indexes: the seed's three (actor, entity + id, created_at), each extended with created_at so
a filtered page is read in order, plus one per store for the store owner's view.
"""

from alembic import op
from dropslot_kit.memberships import create_membership_table

revision = "audit_0002"
down_revision = "audit_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE audit.audit_logs (
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            event_id uuid NOT NULL,
            actor_user_id uuid,
            action text NOT NULL,
            entity text NOT NULL,
            entity_id text,
            store_id uuid,
            tenant_key text,
            before jsonb,
            after jsonb,
            data jsonb,
            ip text,
            ua text,
            producer text NOT NULL,
            correlation_id text,
            created_at timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_audit_logs PRIMARY KEY (id, created_at),
            CONSTRAINT uq_audit_logs_event_id_created_at UNIQUE (event_id, created_at)
        ) PARTITION BY RANGE (created_at)
    """)
    op.execute("CREATE INDEX ix_audit_logs_actor_user_id ON audit.audit_logs (actor_user_id, created_at, id)")
    op.execute("CREATE INDEX ix_audit_logs_entity_entity_id ON audit.audit_logs (entity, entity_id, created_at, id)")
    op.execute("CREATE INDEX ix_audit_logs_created_at ON audit.audit_logs (created_at, id)")
    op.execute("CREATE INDEX ix_audit_logs_store_id ON audit.audit_logs (store_id, created_at, id)")
    op.execute("""
        CREATE FUNCTION audit.audit_logs_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_logs is append-only: % refused (retention drops whole partitions)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
    """)
    # Row triggers on a partitioned table are cloned onto every partition, present and future.
    op.execute("""
        CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON audit.audit_logs
        FOR EACH ROW EXECUTE FUNCTION audit.audit_logs_immutable()
    """)
    # Statement triggers are not cloned: the service adds this one to each partition it creates.
    op.execute("""
        CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit.audit_logs
        FOR EACH STATEMENT EXECUTE FUNCTION audit.audit_logs_immutable()
    """)
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit.audit_logs FROM PUBLIC, CURRENT_USER")
    create_membership_table(op, "audit")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS audit.audit_logs CASCADE")
    op.execute("DROP FUNCTION IF EXISTS audit.audit_logs_immutable()")
    op.execute("DROP TABLE IF EXISTS audit.store_members")

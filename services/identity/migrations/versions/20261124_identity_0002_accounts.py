"""users, roles, user_roles, sessions, refresh tokens, one-time tokens, signing keys, known stores

Revision ID: identity_0002
Revises: identity_0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "identity_0002"
down_revision = "identity_0001"
branch_labels = None
depends_on = None

S = "identity"


def upgrade() -> None:
    op.execute(f"""
        CREATE TABLE {S}.users (
            id uuid PRIMARY KEY,
            email text NOT NULL,
            password_hash text NOT NULL,
            name text NOT NULL,
            status text NOT NULL DEFAULT 'active',
            email_verified_at timestamptz,
            password_changed_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_users_status CHECK (status IN ('active', 'suspended', 'deleted'))
        )""")
    # Case-insensitive uniqueness among live accounts; a deleted account frees its address.
    op.execute(f"CREATE UNIQUE INDEX uq_users_email ON {S}.users (lower(email)) WHERE status <> 'deleted'")
    op.execute(f"CREATE INDEX ix_users_created_at_id ON {S}.users (created_at, id)")

    op.execute(f"""
        CREATE TABLE {S}.roles (
            id uuid PRIMARY KEY,
            code text NOT NULL,
            name text NOT NULL,
            CONSTRAINT uq_roles_code UNIQUE (code)
        )""")
    op.execute(f"""
        INSERT INTO {S}.roles (id, code, name) VALUES
            (gen_random_uuid(), 'customer', 'Customer'),
            (gen_random_uuid(), 'store_staff', 'Store staff'),
            (gen_random_uuid(), 'store_owner', 'Store owner'),
            (gen_random_uuid(), 'platform_admin', 'Platform admin')
        ON CONFLICT (code) DO NOTHING""")

    # The seed's user_roles, with the store scope that store_owner / store_staff need.
    op.execute(f"""
        CREATE TABLE {S}.user_roles (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id uuid NOT NULL REFERENCES {S}.users (id) ON DELETE CASCADE,
            role_id uuid NOT NULL REFERENCES {S}.roles (id),
            store_id uuid,
            granted_by uuid,
            granted_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_user_roles_user_id_role_id_store_id UNIQUE NULLS NOT DISTINCT (user_id, role_id, store_id)
        )""")
    op.execute(f"CREATE INDEX ix_user_roles_store_id ON {S}.user_roles (store_id) WHERE store_id IS NOT NULL")

    # A session is one refresh-token family: rotation adds tokens to it, reuse or logout revokes it.
    op.execute(f"""
        CREATE TABLE {S}.sessions (
            id uuid PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES {S}.users (id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            revoked_reason text,
            ip text,
            user_agent text
        )""")
    op.execute(f"CREATE INDEX ix_sessions_user_id ON {S}.sessions (user_id) WHERE revoked_at IS NULL")
    op.execute(f"""
        CREATE TABLE {S}.refresh_tokens (
            id uuid PRIMARY KEY,
            session_id uuid NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
            token_hash bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz,
            CONSTRAINT uq_refresh_tokens_token_hash UNIQUE (token_hash)
        )""")
    op.execute(f"CREATE INDEX ix_refresh_tokens_session_id ON {S}.refresh_tokens (session_id)")

    # Email verification and password reset tokens: hashed, single-use, expiring.
    op.execute(f"""
        CREATE TABLE {S}.one_time_tokens (
            id uuid PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES {S}.users (id) ON DELETE CASCADE,
            purpose text NOT NULL,
            token_hash bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz,
            CONSTRAINT uq_one_time_tokens_token_hash UNIQUE (token_hash),
            CONSTRAINT ck_one_time_tokens_purpose CHECK (purpose IN ('verify_email', 'password_reset'))
        )""")
    op.execute(f"CREATE INDEX ix_one_time_tokens_user_id_purpose ON {S}.one_time_tokens (user_id, purpose)")

    # Access-token signing keys, shared by every identity replica.
    op.execute(f"""
        CREATE TABLE {S}.signing_keys (
            kid text PRIMARY KEY,
            algorithm text NOT NULL,
            private_key text NOT NULL,
            public_jwk jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            retired_at timestamptz
        )""")

    # Stores identity has heard of (catalog.store.created), for the tenant key on role events.
    op.execute(f"""
        CREATE TABLE {S}.known_stores (
            store_id uuid PRIMARY KEY,
            tenant_key text NOT NULL,
            owner_user_id uuid NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")


def downgrade() -> None:
    for table in ("known_stores", "signing_keys", "one_time_tokens", "refresh_tokens", "sessions", "user_roles",
                  "roles", "users"):
        op.execute(f"DROP TABLE IF EXISTS {S}.{table}")

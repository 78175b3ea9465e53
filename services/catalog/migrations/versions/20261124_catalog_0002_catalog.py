"""stores, branches, products, drops; row-level security; store members

Revision ID: catalog_0002
Revises: catalog_0001
Create Date: 2026-11-24

Tenancy: `stores` is the directory of tenants (public fields only: name, slug, logo), so it
has no row-level security: every request must be able to turn a store id into its
tenant key. `branches`, `products` and `drops` carry `tenant_key` (kept equal to their
store's by a composite foreign key) and are guarded by two permissive policies:

- `tenant_isolation` (all commands): rows of the tenant set for the transaction
  (`dropslot.tenant`, set by `UnitOfWork.set_tenant`). Without a tenant nothing matches.
- `public_read` (SELECT only): what the public may see anyway. A drop that is not a DRAFT;
  a product featured in such a drop; a branch of a store that has such a drop. Writes
  never pass through it, so a published row of another store is readable but not writable.

FORCE ROW LEVEL SECURITY makes the policies bind the table owner too: the service role
owns these tables (it runs the migrations), and an owner is otherwise exempt.

Indexes: the seed's, with its mistake fixed (`idx_drops_product_id` is on drops), the
seed's `idx_products_sku` made the unique (store_id, sku) constraint, and the store_id
indexes extended with (created_at, id) so they also serve the admin lists' pagination.
Added for the public queries: partial indexes over published, not-over drops ordered as
the listing is (with and without a store filter), the scheduler's due-time indexes, and
(lat, lng) on branches for the "near" bounding box.
"""

from alembic import op
from dropslot_kit.memberships import create_membership_table

revision = "catalog_0002"
down_revision = "catalog_0001"
branch_labels = None
depends_on = None

S = "catalog"
TENANT = "current_setting('dropslot.tenant', true)"

DDL = [
    f"""
    CREATE TABLE {S}.stores (
        id uuid PRIMARY KEY,
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        slug text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{{1,61}}[a-z0-9]$'),
        tenant_key text NOT NULL CHECK (tenant_key <> ''),
        logo_url text,
        created_by uuid NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT uq_stores_id_tenant_key UNIQUE (id, tenant_key)
    )""",
    f"CREATE UNIQUE INDEX idx_stores_slug ON {S}.stores (slug)",
    f"CREATE UNIQUE INDEX idx_stores_tenant_key ON {S}.stores (tenant_key)",
    f"CREATE INDEX ix_stores_created_at_id ON {S}.stores (created_at, id)",
    f"""
    CREATE TABLE {S}.branches (
        id uuid PRIMARY KEY,
        store_id uuid NOT NULL,
        tenant_key text NOT NULL,
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        address text NOT NULL,
        lat numeric(9, 6) NOT NULL CHECK (lat BETWEEN -90 AND 90),
        lng numeric(9, 6) NOT NULL CHECK (lng BETWEEN -180 AND 180),
        phone text,
        opening_hours jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT fk_branches_store_id_stores FOREIGN KEY (store_id, tenant_key)
            REFERENCES {S}.stores (id, tenant_key)
    )""",
    f"CREATE INDEX idx_branches_store_id ON {S}.branches (store_id, created_at, id)",
    f"CREATE INDEX ix_branches_lat_lng ON {S}.branches (lat, lng)",
    f"""
    CREATE TABLE {S}.products (
        id uuid PRIMARY KEY,
        store_id uuid NOT NULL,
        tenant_key text NOT NULL,
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        sku text NOT NULL CHECK (length(sku) BETWEEN 1 AND 64),
        description text,
        images jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(images) = 'array'),
        price_cents integer NOT NULL CHECK (price_cents >= 0),
        currency text NOT NULL CHECK (currency ~ '^[A-Z]{{3}}$'),
        is_active boolean NOT NULL DEFAULT true,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT fk_products_store_id_stores FOREIGN KEY (store_id, tenant_key)
            REFERENCES {S}.stores (id, tenant_key),
        -- so a drop can reference (product, store): a drop's product is of the drop's store
        CONSTRAINT uq_products_id_store_id UNIQUE (id, store_id)
    )""",
    f"CREATE UNIQUE INDEX idx_products_sku ON {S}.products (store_id, sku)",
    f"CREATE INDEX idx_products_store_id ON {S}.products (store_id, created_at, id)",
    f"""
    CREATE TABLE {S}.drops (
        id uuid PRIMARY KEY,
        store_id uuid NOT NULL,
        tenant_key text NOT NULL,
        product_id uuid NOT NULL,
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        starts_at timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        -- when reservations open (the rule's opens_at, else the publish time); set on publish
        opens_at timestamptz,
        reservation_rule jsonb NOT NULL,
        status text NOT NULL DEFAULT 'DRAFT'
            CHECK (status IN ('DRAFT', 'SCHEDULED', 'LIVE', 'ENDED', 'CANCELLED')),
        published_at timestamptz,
        live_at timestamptz,
        ended_at timestamptz,
        cancelled_at timestamptz,
        cancel_reason text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT ck_drops_window CHECK (starts_at < ends_at),
        CONSTRAINT ck_drops_published_has_opens_at
            CHECK (status IN ('DRAFT', 'CANCELLED') OR (opens_at IS NOT NULL AND published_at IS NOT NULL)),
        CONSTRAINT fk_drops_store_id_stores FOREIGN KEY (store_id, tenant_key)
            REFERENCES {S}.stores (id, tenant_key),
        CONSTRAINT fk_drops_product_id_products FOREIGN KEY (product_id, store_id)
            REFERENCES {S}.products (id, store_id)
    )""",
    f"CREATE INDEX idx_drops_store_id ON {S}.drops (store_id, created_at, id)",
    f"CREATE INDEX idx_drops_product_id ON {S}.drops (product_id)",
    f"CREATE INDEX idx_drops_status ON {S}.drops (status)",
    f"CREATE INDEX idx_drops_time_window ON {S}.drops (starts_at, ends_at)",
    # Public listing: published and not over, in listing order (starts_at, id).
    f"CREATE INDEX ix_drops_public_starts_at ON {S}.drops (starts_at, id) WHERE status IN ('SCHEDULED', 'LIVE')",
    f"CREATE INDEX ix_drops_public_store ON {S}.drops (store_id, starts_at, id) "
    "WHERE status IN ('SCHEDULED', 'LIVE')",
    # The scheduler: what is due to open, what is due to end.
    f"CREATE INDEX ix_drops_due_open ON {S}.drops (opens_at) WHERE status = 'SCHEDULED'",
    f"CREATE INDEX ix_drops_due_end ON {S}.drops (ends_at) WHERE status = 'LIVE'",
]

RLS = {
    "drops": "status <> 'DRAFT'",
    "products": f"EXISTS (SELECT 1 FROM {S}.drops d WHERE d.product_id = products.id AND d.status <> 'DRAFT')",
    "branches": f"EXISTS (SELECT 1 FROM {S}.drops d WHERE d.store_id = branches.store_id AND d.status <> 'DRAFT')",
}


def upgrade() -> None:
    for stmt in DDL:
        op.execute(stmt)
    for table, public in RLS.items():
        op.execute(f"ALTER TABLE {S}.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {S}.{table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {S}.{table} "
            f"USING (tenant_key = {TENANT}) WITH CHECK (tenant_key = {TENANT})"
        )
        op.execute(f"CREATE POLICY public_read ON {S}.{table} FOR SELECT USING ({public})")
    create_membership_table(op, S)


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {S}.store_members")
    for table in ("drops", "products", "branches", "stores"):
        op.execute(f"DROP TABLE IF EXISTS {S}.{table}")

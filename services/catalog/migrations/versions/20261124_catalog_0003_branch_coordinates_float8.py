"""branch coordinates as double precision

Revision ID: catalog_0003
Revises: catalog_0002
Create Date: 2026-11-24

Why: under row-level security PostgreSQL evaluates a query's own conditions after the
policy's unless their operators are LEAKPROOF. `numeric` comparisons are not; `float8`
ones are. With numeric coordinates the "near" search ran the branches' public-read policy
(a subquery) on every branch before the bounding box narrowed anything; with float8 the
box is an index condition on ix_branches_lat_lng and the policy runs only on the branches
inside it. double precision keeps ~1e-15 relative precision: far below a metre.
"""

from alembic import op

revision = "catalog_0003"
down_revision = "catalog_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE catalog.branches ALTER COLUMN lat TYPE double precision USING lat::double precision, "
               "ALTER COLUMN lng TYPE double precision USING lng::double precision")


def downgrade() -> None:
    op.execute("ALTER TABLE catalog.branches ALTER COLUMN lat TYPE numeric(9, 6) USING round(lat::numeric, 6), "
               "ALTER COLUMN lng TYPE numeric(9, 6) USING round(lng::numeric, 6)")

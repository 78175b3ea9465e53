"""refresh-token generations: a grace window for concurrent refreshes

Revision ID: identity_0003
Revises: identity_0002
Create Date: 2026-11-25

A session (token family) counts its rotations in `generation`; each refresh token records the
generation it was issued in. Rotating a token of the current generation moves the session on
(and stamps `rotated_at`); a token of the generation just left, presented within the grace window
of that move, gets a sibling of the current generation instead of revoking the family.
Existing rows start at generation 0: their spent tokens are never graced, their unspent ones
stay valid.
"""

from alembic import op

revision = "identity_0003"
down_revision = "identity_0002"
branch_labels = None
depends_on = None

S = "identity"


def upgrade() -> None:
    op.execute(f"ALTER TABLE {S}.sessions ADD COLUMN generation integer NOT NULL DEFAULT 0, "
               "ADD COLUMN rotated_at timestamptz")
    op.execute(f"ALTER TABLE {S}.refresh_tokens ADD COLUMN generation integer NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute(f"ALTER TABLE {S}.refresh_tokens DROP COLUMN IF EXISTS generation")
    op.execute(f"ALTER TABLE {S}.sessions DROP COLUMN IF EXISTS rotated_at, DROP COLUMN IF EXISTS generation")

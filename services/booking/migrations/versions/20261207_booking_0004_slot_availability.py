"""a slot's public availability in one statement, for the direct GET /slots/{id}

Revision ID: booking_0004
Revises: booking_0003
Create Date: 2026-12-07

`GET /api/v1/slots/{slot_id}` is what a drop's crowd reloads. Through FastAPI and SQLAlchemy it
was a transaction of four statements (BEGIN, the row-level-security scope, the read, COMMIT):
~1.5 ms of a booking replica's CPU and ~0.35 ms of PostgreSQL's per read on this 2-core VM. This
function is the same read as one statement on the hot path's own asyncpg pool. The waiting-list
count needs every waitlist row of the slot, which row-level security hides from a query that
set no scope: the function sets `dropslot.scope` to 'all' for its read and puts back what was
there before (a SET clause on the function would say it more simply, but PostgreSQL 15 lets only
a superuser attach a custom setting to a function), so its caller keeps no wider view afterwards.
"""

from alembic import op

revision = "booking_0004"
down_revision = "booking_0003"
branch_labels = None
depends_on = None

SLOT_AVAILABILITY = """
CREATE OR REPLACE FUNCTION booking.slot_availability(p_slot uuid)
RETURNS TABLE (id uuid, drop_id uuid, store_id uuid, start_time timestamptz, end_time timestamptz,
               capacity_total int, capacity_reserved int, capacity_waitlist int, sellable boolean,
               waitlist_length bigint)
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_scope text := current_setting('dropslot.scope', true);
BEGIN
    PERFORM set_config('dropslot.scope', 'all', true);
    RETURN QUERY
    SELECT s.id, s.drop_id, s.store_id, s.start_time, s.end_time, s.capacity_total, s.capacity_reserved,
           s.capacity_waitlist, s.sellable,
           (SELECT count(*) FROM booking.waitlist w WHERE w.slot_id = s.id AND w.state = 'WAITING')
      FROM booking.slots s
     WHERE s.id = p_slot;
    PERFORM set_config('dropslot.scope', coalesce(v_scope, ''), true);
END
$fn$
"""


def upgrade() -> None:
    op.execute(SLOT_AVAILABILITY)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS booking.slot_availability(uuid)")

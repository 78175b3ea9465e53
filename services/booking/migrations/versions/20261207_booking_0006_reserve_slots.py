"""reserve_slots: the reserve transaction of several slots as one call (one round trip)

Revision ID: booking_0006
Revises: booking_0005
Create Date: 2026-12-07

Group commit takes the waiting requests of up to 32 slots into one transaction. It ran one call of
`reserve_seats` (or `reserve_batch`) per slot, each its own round trip, then the outbox rows in
another: in a drop of 20 slots ~10 round trips per transaction. The replica's event loop, busy
with hundreds of requests in a storm, took its time to send each next call, and every slot row
already updated stayed locked meanwhile: the bench's 20-slot phase measured 67-72 ms per such
transaction, and a replica runs one at a time.

`booking.reserve_slots` is that whole transaction as one statement. Its arrays are the
per-request arrays of `reserve_seats`, the slots' requests one after another; `p_slots` and
`p_counts` say which slot each run belongs to. The caller orders the slots by id, as before, so
two replicas lock slot rows in the same order. Each slot is one call of `reserve_batch` if it has
`p_set_from` requests or more, else of `reserve_seats`, with no outbox rows; then the events of
the granted seats are written in one statement, seat by seat in the arrays' order (a refused
seat's events are never written, so nothing has to be undone in the outbox). Returns one row per
request: its position in the arrays and its outcome.

Measured in storms of 2,000 people at 20 slots of 100 seats, the old way and this one alternating
in one system (5 pairs): 1,923 against 1,427 accepted/s on average, faster in every pair; p99 of
accepted requests 162-242 ms against 228-397.
"""

from alembic import op

revision = "booking_0006"
down_revision = "booking_0005"
branch_labels = None
depends_on = None

RESERVE_SLOTS_FUNCTION = """
CREATE OR REPLACE FUNCTION booking.reserve_slots(
    p_now timestamptz,
    p_slots uuid[],
    p_counts int[],
    p_set_from int,
    p_ids uuid[],
    p_users uuid[],
    p_keys text[],
    p_fps text[],
    p_responses text[],
    p_states text[],
    p_expires timestamptz[],
    p_confirmed timestamptz[],
    p_notes text[],
    p_tokens text[],
    p_qrs text[],
    p_amounts int[],
    p_currencies text[],
    p_paid boolean[],
    p_ob_owner int[],
    p_ob_ids uuid[],
    p_ob_rks text[],
    p_ob_envs text[],
    p_ob_tps text[]
) RETURNS TABLE (r_idx int, r_outcome text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v record;
    o text[] := array_fill(NULL::text, ARRAY[coalesce(array_length(p_ids, 1), 0)]);
    g int;
    lo int := 1;
    hi int;
BEGIN
    IF coalesce(array_length(p_slots, 1), 0) <> coalesce(array_length(p_counts, 1), 0)
       OR (SELECT coalesce(sum(c), 0) FROM unnest(p_counts) AS c) <> coalesce(array_length(p_ids, 1), 0) THEN
        RAISE EXCEPTION 'reserve_slots: p_counts must split p_ids into one run per slot';
    END IF;
    FOR g IN 1..coalesce(array_length(p_slots, 1), 0) LOOP
        hi := lo + p_counts[g] - 1;
        IF p_counts[g] >= p_set_from THEN
            FOR v IN SELECT * FROM booking.reserve_batch(
                    p_slots[g], p_now, p_ids[lo:hi], p_users[lo:hi], p_keys[lo:hi], p_fps[lo:hi],
                    p_responses[lo:hi], p_states[lo:hi], p_expires[lo:hi], p_confirmed[lo:hi],
                    p_notes[lo:hi], p_tokens[lo:hi], p_qrs[lo:hi], p_amounts[lo:hi], p_currencies[lo:hi],
                    p_paid[lo:hi], '{}'::int[], '{}'::uuid[], '{}'::text[], '{}'::text[], '{}'::text[]) LOOP
                o[lo + v.r_idx - 1] := v.r_outcome;
            END LOOP;
        ELSE
            FOR v IN SELECT * FROM booking.reserve_seats(
                    p_slots[g], p_now, p_ids[lo:hi], p_users[lo:hi], p_keys[lo:hi], p_fps[lo:hi],
                    p_responses[lo:hi], p_states[lo:hi], p_expires[lo:hi], p_confirmed[lo:hi],
                    p_notes[lo:hi], p_tokens[lo:hi], p_qrs[lo:hi], p_amounts[lo:hi], p_currencies[lo:hi],
                    p_paid[lo:hi], '{}'::int[], '{}'::uuid[], '{}'::text[], '{}'::text[], '{}'::text[]) LOOP
                o[lo + v.r_idx - 1] := v.r_outcome;
            END LOOP;
        END IF;
        lo := hi + 1;
    END LOOP;

    -- The granted seats' events. A slot's call that granted a seat has set dropslot.outbox_quiet
    -- for this transaction, so this insert does not NOTIFY either (booking_0003); with nothing
    -- granted there is no insert at all (its statement trigger would NOTIFY).
    IF 'ok' = ANY (o) THEN
        INSERT INTO booking.outbox (id, routing_key, envelope, traceparent)
        SELECT p_ob_ids[j], p_ob_rks[j], p_ob_envs[j]::json, p_ob_tps[j]
          FROM generate_subscripts(p_ob_ids, 1) AS j
         WHERE o[p_ob_owner[j]] = 'ok'
         ORDER BY j;
    END IF;

    RETURN QUERY SELECT j, o[j] FROM generate_subscripts(p_ids, 1) AS j;
END
$fn$
"""


def upgrade() -> None:
    op.execute(RESERVE_SLOTS_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS booking.reserve_slots")

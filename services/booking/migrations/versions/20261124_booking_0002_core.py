"""booking core: local drops, slots, reservations, waitlist, per-user counters, idempotency,
check-in signing keys, store memberships, and the reserve function of the hot path.

Revision ID: booking_0002
Revises: booking_0001
Create Date: 2026-11-24

Design notes (why the tables look like this):
- No foreign key from reservations/waitlist to slots: an FK check takes a KEY SHARE lock on
  the referenced row, and the slot row is THE hot row of a drop (multixacts on every insert).
  Slots are never deleted, so the reference cannot dangle.
- `slots.sellable` mirrors "the drop is LIVE" on the slot row itself, so the conditional
  update re-checks it on the row it locks (a subquery on `drops` would be evaluated against
  the statement's old snapshot after a lock wait).
- `slots` has fillfactor 50 so the thousands of updates of a hot slot stay HOT updates.
- `drop_user_counts` is the serialisation point of `max_per_user`: a conditional upsert on
  (drop, user); the partial unique index on reservations enforces one active reservation per
  user per slot.
- Row-level security on reservations and waitlist (personal data, tenant-scoped): a query
  sees a row when `dropslot.tenant` is its tenant, when `dropslot.user` is its user, or when
  the code explicitly said `dropslot.scope = 'all'` (sweepers, consumers). A query that sets
  none of these sees nothing. Drops and slots are public availability data: no RLS.
"""

from alembic import op
from dropslot_kit.memberships import create_membership_table

revision = "booking_0002"
down_revision = "booking_0001"
branch_labels = None
depends_on = None

ACTIVE = "('PENDING', 'CONFIRMED', 'CHECKED_IN')"

DDL = [
    """
    CREATE TABLE booking.stores (
        store_id uuid PRIMARY KEY,
        tenant_key text NOT NULL,
        name text,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    """
    CREATE TABLE booking.drops (
        drop_id uuid PRIMARY KEY,
        store_id uuid NOT NULL,
        tenant_key text NOT NULL,
        store_name text,
        product_id uuid,
        product_name text,
        name text NOT NULL,
        status text NOT NULL,
        starts_at timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        opens_at timestamptz,
        rule jsonb NOT NULL,
        max_per_user int NOT NULL,
        hold_minutes int NOT NULL,
        waitlist_enabled boolean NOT NULL,
        waitlist_offer_minutes int NOT NULL,
        cancel_until_minutes_before int NOT NULL,
        refund_on_cancel boolean NOT NULL,
        require_verified_email boolean NOT NULL,
        price_cents int NOT NULL,
        currency text NOT NULL,
        event_at timestamptz NOT NULL,
        cancelled_at timestamptz,
        cleanup_done boolean NOT NULL DEFAULT false,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX ix_drops_store_id ON booking.drops (store_id)",
    "CREATE INDEX ix_drops_cleanup ON booking.drops (drop_id) WHERE status = 'CANCELLED' AND NOT cleanup_done",
    """
    CREATE TABLE booking.slots (
        id uuid PRIMARY KEY,
        drop_id uuid NOT NULL REFERENCES booking.drops (drop_id),
        store_id uuid NOT NULL,
        tenant_key text NOT NULL,
        start_time timestamptz NOT NULL,
        end_time timestamptz NOT NULL,
        capacity_total int NOT NULL,
        capacity_reserved int NOT NULL DEFAULT 0,
        capacity_waitlist int NOT NULL DEFAULT 0,
        sellable boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT ck_slots_capacity CHECK (
            capacity_total >= 0 AND capacity_reserved >= 0 AND capacity_waitlist >= 0
            AND capacity_reserved + capacity_waitlist <= capacity_total),
        CONSTRAINT ck_slots_times CHECK (end_time > start_time)
    ) WITH (fillfactor = 50)""",
    "CREATE UNIQUE INDEX uq_slots_drop_id_start_time_end_time ON booking.slots (drop_id, start_time, end_time)",
    """
    CREATE TABLE booking.reservations (
        id uuid PRIMARY KEY,
        slot_id uuid NOT NULL,
        drop_id uuid NOT NULL,
        store_id uuid NOT NULL,
        tenant_key text NOT NULL,
        user_id uuid NOT NULL,
        state text NOT NULL,
        customer_note text,
        qr_code_url text,
        checkin_token text,
        amount_cents int NOT NULL,
        currency text NOT NULL,
        requires_payment boolean NOT NULL,
        expires_at timestamptz,
        hold_deferred boolean NOT NULL DEFAULT false,
        reminded boolean NOT NULL DEFAULT false,
        payment_id uuid,
        payment_status text,
        payment_provider text,
        payment_event_at timestamptz,
        refund_requested boolean NOT NULL DEFAULT false,
        waitlist_entry_id uuid,
        cancel_reason text,
        checked_in_by uuid,
        created_at timestamptz NOT NULL,
        confirmed_at timestamptz,
        cancelled_at timestamptz,
        expired_at timestamptz,
        checked_in_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT ck_reservations_state CHECK (
            state IN ('PENDING', 'CONFIRMED', 'CHECKED_IN', 'CANCELLED', 'EXPIRED'))
    )""",
    f"""CREATE UNIQUE INDEX uq_reservations_slot_id_user_id_active ON booking.reservations (slot_id, user_id)
        WHERE state IN {ACTIVE}""",
    "CREATE INDEX ix_reservations_user_id ON booking.reservations (user_id, created_at DESC, id DESC)",
    "CREATE INDEX ix_reservations_store_id ON booking.reservations (store_id, created_at DESC, id DESC)",
    "CREATE INDEX ix_reservations_slot_id ON booking.reservations (slot_id)",
    "CREATE INDEX ix_reservations_pending ON booking.reservations (expires_at) WHERE state = 'PENDING'",
    f"CREATE INDEX ix_reservations_drop_active ON booking.reservations (drop_id) WHERE state IN {ACTIVE}",
    """
    CREATE TABLE booking.drop_user_counts (
        drop_id uuid NOT NULL,
        user_id uuid NOT NULL,
        active int NOT NULL,
        PRIMARY KEY (drop_id, user_id),
        CONSTRAINT ck_drop_user_counts_active CHECK (active >= 0)
    )""",
    """
    CREATE TABLE booking.waitlist (
        id uuid PRIMARY KEY,
        seq bigserial NOT NULL,
        slot_id uuid NOT NULL,
        drop_id uuid NOT NULL,
        store_id uuid NOT NULL,
        tenant_key text NOT NULL,
        user_id uuid NOT NULL,
        state text NOT NULL,
        position int NOT NULL,
        offered_at timestamptz,
        offer_expires_at timestamptz,
        reservation_id uuid,
        close_reason text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT ck_waitlist_state CHECK (state IN ('WAITING', 'OFFERED', 'ACCEPTED', 'LAPSED', 'LEFT'))
    )""",
    """CREATE UNIQUE INDEX uq_waitlist_slot_id_user_id_active ON booking.waitlist (slot_id, user_id)
        WHERE state IN ('WAITING', 'OFFERED')""",
    "CREATE INDEX ix_waitlist_waiting ON booking.waitlist (slot_id, seq) WHERE state = 'WAITING'",
    "CREATE INDEX ix_waitlist_offered ON booking.waitlist (offer_expires_at) WHERE state = 'OFFERED'",
    "CREATE INDEX ix_waitlist_user_id ON booking.waitlist (user_id, created_at DESC, id DESC)",
    "CREATE INDEX ix_waitlist_drop_active ON booking.waitlist (drop_id) WHERE state IN ('WAITING', 'OFFERED')",
    """
    CREATE TABLE booking.idempotency_keys (
        user_id uuid NOT NULL,
        key text NOT NULL,
        fingerprint text NOT NULL,
        reservation_id uuid,
        status int NOT NULL,
        response json NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (user_id, key)
    )""",
    "CREATE INDEX ix_idempotency_keys_created_at ON booking.idempotency_keys (created_at)",
    """
    CREATE TABLE booking.signing_keys (
        kid text PRIMARY KEY,
        private_pem text NOT NULL,
        public_pem text NOT NULL,
        active boolean NOT NULL DEFAULT true,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE UNIQUE INDEX uq_signing_keys_active ON booking.signing_keys (active) WHERE active",
]

POLICY = """(
    tenant_key = current_setting('dropslot.tenant', true)
    OR user_id::text = current_setting('dropslot.user', true)
    OR current_setting('dropslot.scope', true) = 'all'
)"""

RLS = [
    stmt
    for table in ("reservations", "waitlist")
    for stmt in (
        f"ALTER TABLE booking.{table} ENABLE ROW LEVEL SECURITY",
        # The service role owns its tables; FORCE makes the policy apply to it too.
        f"ALTER TABLE booking.{table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY tenant_isolation ON booking.{table} USING {POLICY} WITH CHECK {POLICY}",
    )
]

# The reserve transaction of the hot path, as one statement (one round trip, autocommit).
#
# Takes up to N requests for ONE slot (group commit: a batch, or a single request). Order of
# work, chosen so the hot slot row is locked as late and as briefly as possible, and so every
# path in booking takes locks in the same order (rows -> per-user counters -> slots):
#   1. unlocked read of the slot and its drop: sold out / not live / started -> refuse all
#      without touching the slot's lock (a read that says "full" is final enough: seats only
#      free through cancellations, which go to the waitlist first);
#   2. per request: idempotency key (ON CONFLICT DO NOTHING: a concurrent twin waits here and
#      then sees the key), the reservation row (the partial unique index refuses a second
#      active one for the same user and slot), the per-user counter (conditional upsert);
#   3. the outbox rows of the candidates;
#   4. the slot row: lock, take min(candidates, free) seats in one update;
#   5. candidates beyond the seats granted (only at the very moment of selling out) are
#      undone within the same transaction.
# Returns one row per request index: ok | sold_out | not_live | closed | not_found |
# limit | already_reserved | idempotent.
RESERVE_FUNCTION = """
CREATE OR REPLACE FUNCTION booking.reserve_seats(
    p_slot uuid,
    p_now timestamptz,
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
    n int := coalesce(array_length(p_ids, 1), 0);
    i int;
    k int;
    cand int[] := '{}';
    v_free int;
    v_sellable boolean;
    v_start timestamptz;
    v_granted int;
    v_why text;
BEGIN
    SELECT s.drop_id, s.store_id, s.tenant_key, s.start_time, s.sellable,
           s.capacity_total - s.capacity_reserved - s.capacity_waitlist AS free,
           d.max_per_user
      INTO v
      FROM booking.slots s JOIN booking.drops d ON d.drop_id = s.drop_id
     WHERE s.id = p_slot;
    IF NOT FOUND THEN
        RETURN QUERY SELECT g, 'not_found'::text FROM generate_series(1, n) g; RETURN;
    ELSIF NOT v.sellable THEN
        RETURN QUERY SELECT g, 'not_live'::text FROM generate_series(1, n) g; RETURN;
    ELSIF v.start_time <= p_now THEN
        RETURN QUERY SELECT g, 'closed'::text FROM generate_series(1, n) g; RETURN;
    ELSIF v.free <= 0 THEN
        RETURN QUERY SELECT g, 'sold_out'::text FROM generate_series(1, n) g; RETURN;
    END IF;

    PERFORM set_config('dropslot.tenant', v.tenant_key, true);

    FOR i IN 1..n LOOP
        IF p_keys[i] IS NOT NULL THEN
            INSERT INTO booking.idempotency_keys
                (user_id, key, fingerprint, reservation_id, status, response, created_at)
            VALUES (p_users[i], p_keys[i], p_fps[i], p_ids[i], 201, p_responses[i]::json, p_now)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                r_idx := i; r_outcome := 'idempotent'; RETURN NEXT; CONTINUE;
            END IF;
        END IF;

        INSERT INTO booking.reservations (
            id, slot_id, drop_id, store_id, tenant_key, user_id, state, customer_note, qr_code_url,
            checkin_token, amount_cents, currency, requires_payment, expires_at, created_at,
            confirmed_at, updated_at)
        VALUES (
            p_ids[i], p_slot, v.drop_id, v.store_id, v.tenant_key, p_users[i], p_states[i], p_notes[i], p_qrs[i],
            p_tokens[i], p_amounts[i], p_currencies[i], p_paid[i], p_expires[i], p_now,
            p_confirmed[i], p_now)
        ON CONFLICT (slot_id, user_id) WHERE state IN ('PENDING', 'CONFIRMED', 'CHECKED_IN') DO NOTHING;
        IF NOT FOUND THEN
            IF p_keys[i] IS NOT NULL THEN
                DELETE FROM booking.idempotency_keys WHERE user_id = p_users[i] AND key = p_keys[i];
            END IF;
            r_idx := i; r_outcome := 'already_reserved'; RETURN NEXT; CONTINUE;
        END IF;

        INSERT INTO booking.drop_user_counts AS c (drop_id, user_id, active)
        VALUES (v.drop_id, p_users[i], 1)
        ON CONFLICT (drop_id, user_id) DO UPDATE SET active = c.active + 1
            WHERE c.active < v.max_per_user;
        IF NOT FOUND THEN
            DELETE FROM booking.reservations WHERE id = p_ids[i];
            IF p_keys[i] IS NOT NULL THEN
                DELETE FROM booking.idempotency_keys WHERE user_id = p_users[i] AND key = p_keys[i];
            END IF;
            r_idx := i; r_outcome := 'limit'; RETURN NEXT; CONTINUE;
        END IF;

        cand := cand || i;
    END LOOP;

    IF cardinality(cand) = 0 THEN
        RETURN;
    END IF;

    INSERT INTO booking.outbox (id, routing_key, envelope, traceparent)
    SELECT p_ob_ids[j], p_ob_rks[j], p_ob_envs[j]::json, p_ob_tps[j]
      FROM generate_subscripts(p_ob_ids, 1) AS j
     WHERE p_ob_owner[j] = ANY (cand);

    -- The hot row: from here to the commit is the only time the slot is locked.
    SELECT capacity_total - capacity_reserved - capacity_waitlist, sellable, start_time
      INTO v_free, v_sellable, v_start
      FROM booking.slots WHERE id = p_slot FOR UPDATE;
    IF NOT v_sellable THEN
        v_granted := 0; v_why := 'not_live';
    ELSIF v_start <= p_now THEN
        v_granted := 0; v_why := 'closed';
    ELSE
        v_granted := GREATEST(0, LEAST(cardinality(cand), v_free)); v_why := 'sold_out';
    END IF;
    IF v_granted > 0 THEN
        UPDATE booking.slots SET capacity_reserved = capacity_reserved + v_granted, updated_at = p_now
         WHERE id = p_slot;
    END IF;

    FOR k IN 1..cardinality(cand) LOOP
        i := cand[k];
        IF k <= v_granted THEN
            r_idx := i; r_outcome := 'ok'; RETURN NEXT;
        ELSE
            DELETE FROM booking.outbox WHERE id = ANY (
                SELECT p_ob_ids[j] FROM generate_subscripts(p_ob_ids, 1) AS j WHERE p_ob_owner[j] = i);
            DELETE FROM booking.reservations WHERE id = p_ids[i];
            UPDATE booking.drop_user_counts SET active = active - 1
             WHERE drop_id = v.drop_id AND user_id = p_users[i];
            IF p_keys[i] IS NOT NULL THEN
                DELETE FROM booking.idempotency_keys WHERE user_id = p_users[i] AND key = p_keys[i];
            END IF;
            r_idx := i; r_outcome := v_why; RETURN NEXT;
        END IF;
    END LOOP;
END
$fn$
"""


def upgrade() -> None:
    for stmt in DDL:
        op.execute(stmt)
    for stmt in RLS:
        op.execute(stmt)
    create_membership_table(op, "booking")
    op.execute(RESERVE_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS booking.reserve_seats")
    for table in (
        "store_members", "signing_keys", "idempotency_keys", "waitlist", "drop_user_counts",
        "reservations", "slots", "drops", "stores",
    ):
        op.execute(f"DROP TABLE IF EXISTS booking.{table}")

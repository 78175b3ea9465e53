"""the reserve transaction writes its outbox rows without NOTIFY

Revision ID: booking_0003
Revises: booking_0002
Create Date: 2026-11-24

PostgreSQL serialises the commits of all transactions that NOTIFY, cluster-wide (a lock held
until after the commit record is flushed), and the hot slot stays locked until the reserve
transaction has committed. So `reserve_seats` sets `dropslot.outbox_quiet` and the outbox trigger
stays silent for it; the replica that ran the transaction wakes its own outbox relay in-process
after the commit (any replica's relay would do; they claim rows with SKIP LOCKED), and every
relay still polls as a fallback. Every other booking transaction notifies as before.
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "booking_0003"
down_revision = "booking_0002"
branch_labels = None
depends_on = None


def _reserve_function(quiet: bool) -> str:
    """booking_0002's reserve_seats, with (quiet) or without the line that silences the trigger."""
    path = Path(__file__).with_name("20261124_booking_0002_core.py")
    spec = importlib.util.spec_from_file_location("booking_0002_core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sql: str = module.RESERVE_FUNCTION
    anchor = "    INSERT INTO booking.outbox (id, routing_key, envelope, traceparent)"
    assert anchor in sql
    if quiet:
        sql = sql.replace(anchor, "    PERFORM set_config('dropslot.outbox_quiet', 'on', true);\n" + anchor)
    return sql


def upgrade() -> None:
    op.execute(_reserve_function(quiet=True))
    op.execute("""
        CREATE OR REPLACE FUNCTION booking.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('dropslot.outbox_quiet', true) = 'on' THEN
                RETURN NULL;
            END IF;
            PERFORM pg_notify('booking_outbox', '');
            RETURN NULL;
        END $$""")


def downgrade() -> None:
    op.execute(_reserve_function(quiet=False))
    op.execute("""
        CREATE OR REPLACE FUNCTION booking.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('booking_outbox', ''); RETURN NULL; END $$""")
